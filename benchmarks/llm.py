"""Language-model throughput on random bf16 weights: prefill GFLOP/s, decode tokens/s from an empty cache,
and (--long) decode after a 512- and a 4096-token prompt, each beside its bound measured in the same run.

Shapes: 'small' (1024 wide, 8 layers, 168 M parameters: where per-dispatch costs show), 'phi3'
(Phi-3.5-mini's widths, 4 of its 32 layers) and 'qwen2' (Qwen2.5-7B's widths, 2 of 28 layers: 7 query
heads per KV head). The per-layer figures do not depend on the layer count.

Bounds. Decode reads every weight once per token, so its bound is the read bandwidth (benchmarks/peaks.py:
a STREAM-style read by as many threads as lavapipe runs) over the bytes of weights per token. Decode after
a long prompt is compared with decode from an empty cache of the same model (the cache's reads are the
difference). Prefill is arithmetic: GFLOP/s (2 x weights x tokens, plus attention) beside the FMA peak.
Each figure is the best of --repeats runs (default 2): this machine kind's speed varies between runs by up
to 2x (other tenants), and the best run is the one that says what the code can do.

    python benchmarks/llm.py                  # small and phi3 shapes
    python benchmarks/llm.py --model qwen2 --layers 4 --profile
    python benchmarks/llm.py --long           # also decode after 512 and 4096 tokens (small shape)

Structured output (eyecare.structured) adds host work per token: the grammar's token mask, applied to
the logits, and the grammar's step. It is timed on a Phi-3.5-mini-sized vocabulary (a byte-level BPE
trained here on Python's standard library, as benchmarks/structured_libs.py does, padded to the model's
32,064 rows) with a judge-style JSON schema, and printed as a fraction of the decode step measured in
the same run (with the Phi-3.5-mini widths).

Weights in int8 / int4 (blocks of 32 with f16 scales, eyecare/quantize.py) are read packed: the bytes per
token shrink to ~53 % / ~28 % of bf16's for the quantized layers, and the bound moves with them.

    python benchmarks/llm.py --model phi3 --variants bf16,int8,int4
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import eyecare._core as core
from eyecare import quantize as Q
from eyecare.config import DecoderConfig
from eyecare.core import device_info, empty, tensor
from eyecare.language import LanguageModel
from peaks import measure_peaks

PHI3 = {"model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
        "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.5] * 48},
        "sliding_window": 262144, "tie_word_embeddings": False}
CONFIGS = {
    # Phi-3's layout at 1024 wide (head dim 64): 8 layers + embeddings and lm_head = 168 M parameters.
    "small": dict(PHI3, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=16, rope_scaling=None),
    # Phi-3.5-mini-instruct's config.json (factors shortened to the right length: values do not matter here).
    "phi3": PHI3,
    # Qwen2.5-7B-Instruct's config.json.
    "qwen2": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
              "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 32768, "rope_theta": 1000000.0, "use_sliding_window": False,
              "tie_word_embeddings": False},
}
NAMES = {"small": "1024-wide", "phi3": "Phi-3.5-mini widths", "qwen2": "Qwen2.5-7B widths"}
DEFAULT_LAYERS = {"small": 8, "phi3": 4, "qwen2": 2}

_BLOCK = None


def random_bf16(shape, rng):
    """bf16 bits of values of magnitude 2^-7..2^-6 with random signs and mantissas: a 16M-value random
    block, tiled (the values do not matter for speed; generating gigabytes of randomness would take long)."""
    global _BLOCK
    if _BLOCK is None:
        _BLOCK = (rng.integers(0, 1 << 16, 1 << 24, dtype=np.uint16) & 0x807F) | 0x3C00
    return np.resize(_BLOCK, int(np.prod(shape))).reshape(shape)


def random_quantized(shape, method: str, rng):
    """A quantized weight with random integers and scales of the bf16 values' magnitude (the values do not
    matter for speed; quantizing gigabytes of random floats would take long)."""
    n, k = shape
    packed = rng.integers(0, 256, Q.packed_shape(method, n, k), dtype=np.uint8)
    scales = np.full(Q.scales_shape(n, k), 2.0 ** -13 if method == "int8" else 2.0 ** -9, np.float16)
    return Q.to_device(packed, scales, method, k)


def build(kind: str, layers: int, max_context: int, rng, prefill_chunk: int = 256, variant: str = "bf16") -> LanguageModel:
    raw = dict(CONFIGS[kind], num_hidden_layers=layers)
    cfg = DecoderConfig.from_dict(raw)
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    one = np.full(D, 0x3F80, np.uint16)  # 1.0: norm weights
    w = {"model.embed_tokens.weight": tensor(random_bf16((V, D), rng), "bfloat16"),
         "model.norm.weight": tensor(one, "bfloat16"),
         "lm_head.weight": tensor(random_bf16((V, D), rng), "bfloat16")}

    def linear(shape):
        return tensor(random_bf16(shape, rng), "bfloat16") if variant == "bf16" else random_quantized(shape, variant, rng)

    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = tensor(one, "bfloat16")
        w[p + "post_attention_layernorm.weight"] = tensor(one, "bfloat16")
        w[p + "self_attn.qkv_proj.weight"] = linear((qkv, D))
        if cfg.qkv_bias:
            w[p + "self_attn.qkv_proj.bias"] = tensor(random_bf16((qkv,), rng), "bfloat16")
        w[p + "self_attn.o_proj.weight"] = linear((D, cfg.num_attention_heads * cfg.head_dim))
        w[p + "mlp.gate_up_proj.weight"] = linear((2 * F, D))
        w[p + "mlp.down_proj.weight"] = linear((D, F))
    return LanguageModel(cfg, w, max_context=max_context, prefill_chunk=prefill_chunk)


def flops_per_token(cfg: DecoderConfig, context: int) -> float:
    """Multiply-adds x 2 of one token's pass through the layers (the lm_head is computed once per prompt)."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = D * (q + 2 * kv) + q * D + D * 2 * F + F * D + 2 * q * context  # projections + QK^T and PV
    return 2.0 * cfg.num_hidden_layers * per_layer


def kv_bytes_per_position(lm: LanguageModel) -> int:
    cfg = lm.config
    return 2 * cfg.num_key_value_heads * cfg.head_dim * cfg.num_hidden_layers * (2 if lm.kv_cache_dtype == "float16" else 4)


def decode(lm: LanguageModel, prompt: int, new: int, rng):
    """(tokens/s, wall ms per step, device ms of the last step) of `new` greedy steps after a `prompt`-token prompt."""
    ids = rng.integers(0, lm.config.vocab_size, max(prompt, 1))
    out = lm.generate(input_ids=ids, max_new_tokens=new + 1, do_sample=False)
    steps = len(out.token_ids) - 1
    return out.decode_tokens_per_s, out.decode_ms / steps, core.last_batch_ms()


def profile(lm: LanguageModel, rng):
    """Device time of one decode step's kinds of work, each alone in a batch of ten."""
    cfg = lm.config
    w = lm._weights
    D, F = cfg.hidden_size, cfg.intermediate_size
    p = "model.layers.0."
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    x, h = tensor(rng.standard_normal((1, D)).astype(np.float32)), empty((1, D))
    outs = {"qkv": empty((1, qkv)), "gate_up": empty((1, 2 * F)), "down_in": tensor(rng.standard_normal((1, F)).astype(np.float32))}

    def timed(label, nbytes, fn, reps=10):
        core.begin()
        for _ in range(reps):
            fn()
        core.submit()
        ms = core.last_batch_ms() / reps
        rate = f"{nbytes / ms / 1e6:6.1f} GB/s" if nbytes else ""
        print(f"    {label:34s} {ms * 1e3:8.0f} us  {rate}")

    print("  one decode step's ops (device time, each op run 10 times in one batch):")
    timed("rmsnorm", 0, lambda: core.op_rmsnorm(x, w[p + "input_layernorm.weight"], 1e-5, h))
    for name, out in (("qkv_proj", "qkv"), ("gate_up_proj", "gate_up")):
        wt = w[p + f"{'self_attn' if name == 'qkv_proj' else 'mlp'}.{name}.weight"]
        timed(f"mat-vec {name} {list(wt.shape)}", wt.nbytes, lambda wt=wt, out=out: core.op_matmul(x, wt, None, outs[out]))
    wt = w[p + "mlp.down_proj.weight"]
    timed(f"mat-vec down_proj {list(wt.shape)}", wt.nbytes, lambda: core.op_matmul(outs["down_in"], wt, None, h, True))
    wt = w["lm_head.weight"]
    logits = empty((1, cfg.vocab_size))
    timed(f"mat-vec lm_head {list(wt.shape)}", wt.nbytes, lambda: core.op_matmul(x, wt, None, logits), reps=3)
    act = empty((1, F))
    timed("silu_mul", 0, lambda: core.op_silu_mul(outs["gate_up"], None, act))


def run(kind: str, layers: int, prompt: int, new: int, peaks: dict, do_profile: bool = False, structured: bool = False,
        variant: str = "bf16", repeats: int = 2) -> list[dict]:
    """Prefill and empty-cache decode of one shape with its linear layers in `variant`, each the best of `repeats`
    runs (a shared machine's speed varies from one run to the next); returns the table rows."""
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    lm = build(kind, layers, prompt + new + 2, rng, variant=variant)
    cfg = lm.config
    per_token = lm._decoder.weight_bytes
    print(f"{NAMES[kind]}, {layers} layers, {variant} linear layers (hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, heads "
          f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}, vocab {cfg.vocab_size}); {per_token / 1e9:.3f} GB of "
          f"weights per decode token; built in {time.perf_counter() - t:.1f} s")
    lm.forward(input_ids=rng.integers(0, cfg.vocab_size, 16), logits_to_keep=1)  # pipelines built, caches warm

    ids = rng.integers(0, cfg.vocab_size, prompt)
    out = min((lm.generate(input_ids=ids, max_new_tokens=1, do_sample=False) for _ in range(repeats)),
              key=lambda o: o.prefill_ms)
    flops = sum(flops_per_token(cfg, c) for c in range(1, prompt + 1)) + 2.0 * cfg.hidden_size * cfg.vocab_size
    gflops = flops / (out.prefill_ms / 1e3) / 1e9
    print(f"  prefill {prompt} tokens (best of {repeats}): {out.prefill_ms / 1e3:6.2f} s  {out.prefill_tokens_per_s:8.1f} tokens/s  "
          f"{gflops:6.1f} GFLOP/s = {gflops / peaks['fma_gflops']:5.1%} of the FMA peak {peaks['fma_gflops']:.1f}")

    tps, step_ms, device_ms = max((decode(lm, 1, new, rng) for _ in range(repeats)), key=lambda r: r[0])
    gbs = per_token * tps / 1e9
    frac = gbs / peaks["read_gbs"]
    print(f"  decode {new} tokens from an empty cache (best of {repeats}): {tps:7.2f} tokens/s, {gbs:6.2f} GB/s of weights = {frac:5.1%} of "
          f"the read bandwidth {peaks['read_gbs']:.1f} GB/s ({peaks['read_how']}); per step {step_ms:.1f} ms wall, "
          f"{device_ms:.1f} ms device, {lm._decoder.dispatches} dispatches")
    if do_profile:
        profile(lm, rng)
    if structured:
        us = structured_overhead_us(cfg.vocab_size, rng)
        full_ms = step_ms * CONFIGS[kind]["num_hidden_layers"] / layers
        print(f"  structured output (JSON schema): {us:.0f} us/token of host work = {us / 10 / step_ms:.2f} % of this "
              f"{step_ms:.1f} ms decode step ({us / 10 / full_ms:.3f} % of the ~{full_ms:.0f} ms step of all "
              f"{CONFIGS[kind]['num_hidden_layers']} layers); target < 10 %")
    lm.close()
    name = NAMES[kind] if variant == "bf16" else f"{NAMES[kind]} {variant}"
    return [
        {"what": f"prefill {prompt} tok, {name}", "value": gflops, "unit": "GFLOP/s",
         "bound": peaks["fma_gflops"], "bound_what": "FMA peak", "target": 25.0 if variant == "bf16" else None,
         "target_is": "GFLOP/s"},
        {"what": f"decode, {name}", "value": gbs, "unit": "GB/s", "tokens_per_s": tps,
         "bound": peaks["read_gbs"], "bound_what": "read bw", "target": {"small": 0.25, "phi3": 0.30}.get(kind) if variant == "bf16" else None,
         "target_is": "fraction"},
    ]


JUDGE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["accuracy", "completeness", "rationale"],
                "properties": {"accuracy": {"type": "integer", "minimum": 1, "maximum": 5},
                               "completeness": {"type": "integer", "minimum": 1, "maximum": 5},
                               "rationale": {"type": "string", "maxLength": 400}}}


def structured_overhead_us(vocab_size: int, rng, tokens: int = 1000) -> float:
    """Mean host time per token of eyecare.structured (mask into the logits, then the grammar step),
    decoding random logits under JUDGE_SCHEMA (a fresh answer whenever one completes)."""
    import tempfile

    from structured_libs import train_tokenizer  # beside this script

    from eyecare.structured import Constraint
    from eyecare.tokenizer import Tokenizer

    bpe = train_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        bpe.save(os.path.join(d, "tokenizer.json"))
        tokenizer = Tokenizer(d)
    eos = [tokenizer.token_to_id("<|end|>")]
    constraint = Constraint(tokenizer, vocab_size, eos, json_schema=JUDGE_SCHEMA)
    rows = rng.standard_normal((64, vocab_size)).astype(np.float32)
    state, spent = constraint.start(), 0.0
    for i in range(tokens):
        row = rows[i % len(rows)].copy()
        t = time.perf_counter()
        state.mask(row)
        token = int(np.argmax(row))
        done = state.advance(token)
        spent += time.perf_counter() - t
        if done:
            state = constraint.start()
    return spent / tokens * 1e6


def run_long(kind: str, layers: int, contexts: list[int], new: int, peaks: dict, repeats: int = 2) -> list[dict]:
    """Decode after prompts of each length in `contexts`, against decode from an empty cache (each the best of
    `repeats` runs)."""
    rng = np.random.default_rng(1)
    lm = build(kind, layers, max(contexts) + new + 2, rng, prefill_chunk=512)
    per_token = lm._decoder.weight_bytes
    lm.forward(input_ids=rng.integers(0, lm.config.vocab_size, 16), logits_to_keep=1)
    base = max(decode(lm, 1, new, rng)[0] for _ in range(repeats))
    print(f"{NAMES[kind]}, {layers} layers, {lm.kv_cache_dtype} KV cache: decode from an empty cache {base:.2f} tokens/s "
          f"(each figure the best of {repeats})")
    rows = []
    targets = {512: 0.85, 4096: 0.60}
    for ctx in contexts:
        t = time.perf_counter()
        tps, step_ms, device_ms = max((decode(lm, ctx, new, rng) for _ in range(repeats)), key=lambda r: r[0])
        kv = kv_bytes_per_position(lm) * ctx
        print(f"  decode after {ctx} tokens: {tps:7.2f} tokens/s = {tps / base:5.1%} of empty-cache decode; cache read "
              f"per step {kv / 1e6:.1f} MB beside {per_token / 1e6:.0f} MB of weights (read-bound ratio "
              f"{per_token / (per_token + kv):5.1%}); {step_ms:.1f} ms/step ({time.perf_counter() - t:.0f} s with the prefill)")
        rows.append({"what": f"decode after {ctx} tok, {NAMES[kind]}", "value": tps, "unit": "tokens/s",
                     "bound": base, "bound_what": "empty-cache decode", "target": targets.get(ctx), "target_is": "fraction"})
    lm.close()
    return rows


def main(argv=None, peaks=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["small", "phi3", "qwen2", "both"], default="both", help="both: small and phi3")
    ap.add_argument("--layers", type=int, default=None, help="layers (default: 8 small, 4 phi3, 2 qwen2)")
    ap.add_argument("--prompt", type=int, default=512, help="prefill prompt length")
    ap.add_argument("--new", type=int, default=128, help="decode steps")
    ap.add_argument("--long", action="store_true", help="also decode after 512 and 4096 tokens (small shape)")
    ap.add_argument("--quick", action="store_true", help="a 128-token prefill and 32 decode steps")
    ap.add_argument("--repeats", type=int, default=2, help="prefill and decode figures: the best of this many runs (default 2)")
    ap.add_argument("--profile", action="store_true", help="also time the decode step's ops one by one")
    ap.add_argument("--no-structured", action="store_true",
                    help="skip timing structured output's per-token work (with the Phi-3.5-mini widths)")
    ap.add_argument("--variants", default="bf16", help="comma-separated weight variants of the linear layers: bf16, int8, int4")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("bf16", "int8", "int4"):
            ap.error(f"unknown variant {v!r}: bf16, int8 or int4")
    if args.quick:
        args.prompt, args.new = 128, 32
    info = device_info()
    peaks = peaks or measure_peaks()
    print(f"device: {info['name']} ({info['type']}); read bandwidth {peaks['read_gbs']:.1f} GB/s ({peaks['read_how']}); "
          f"FMA peak {peaks['fma_gflops']:.1f} GFLOP/s")
    rows = []
    for kind in (["small", "phi3"] if args.model == "both" else [args.model]):
        for variant in variants:
            rows += run(kind, args.layers or DEFAULT_LAYERS[kind], args.prompt, args.new, peaks, args.profile,
                        structured=kind == "phi3" and variant == "bf16" and not args.no_structured, variant=variant,
                        repeats=max(1, args.repeats))
    if args.long:
        rows += run_long("small", DEFAULT_LAYERS["small"], [512, 4096], args.new, peaks, max(1, args.repeats))
    return rows


if __name__ == "__main__":
    main()
