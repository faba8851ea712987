"""Language-model throughput: prefill tokens/s for a 512-token prompt and decode tokens/s for 128
tokens, on random bf16 weights with the real layer widths of Phi-3.5-mini and Qwen2.5-7B and fewer
layers (the per-layer figures do not depend on the layer count; memory and time do).

Decode is bound by memory bandwidth: each token reads every weight once (and the lm_head), so the
bound is (copy bandwidth) / (bytes of weights per token). Each decode figure is printed with its
fraction of that bound, the copy bandwidth measured on the same machine: a host memcpy for a CPU
device (lavapipe's device memory is host memory), the core's copy op on the device otherwise.
Prefill is bound by arithmetic: it is printed in GFLOP/s (2 x weights x tokens, plus attention).

Weights in int8 / int4 (blocks of 32 with f16 scales, eyecare/quantize.py) are read packed: the bytes per
token shrink to ~53 % / ~28 % of bf16's for the quantized layers, and the bound moves with them.

    python benchmarks/llm.py                      # both models, bf16
    python benchmarks/llm.py --model phi3 --layers 8 --profile
    python benchmarks/llm.py --variants bf16,int8,int4
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import eyecare._core as core
from eyecare import quantize as Q
from eyecare.config import DecoderConfig
from eyecare.core import device_info, empty, tensor
from eyecare.language import LanguageModel

CONFIGS = {
    # Phi-3.5-mini-instruct's config.json (factors shortened to the right length: values do not matter here).
    "phi3": {"model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5,
             "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
             "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.5] * 48},
             "sliding_window": 262144, "tie_word_embeddings": False},
    # Qwen2.5-7B-Instruct's config.json.
    "qwen2": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
              "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 32768, "rope_theta": 1000000.0, "use_sliding_window": False,
              "tie_word_embeddings": False},
}
NAMES = {"phi3": "Phi-3.5-mini", "qwen2": "Qwen2.5-7B"}


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


def build(kind: str, layers: int, max_context: int, rng, variant: str = "bf16") -> LanguageModel:
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
    return LanguageModel(cfg, w, max_context=max_context)


def copy_bandwidth() -> tuple[float, str]:
    """Bytes read + written per second by a large copy (as STREAM counts it), in GB/s."""
    info = device_info()
    n = 256 << 20  # bytes
    if info["type"] == "cpu":
        src = np.ones(n, np.uint8)
        dst = np.empty_like(src)
        best = 0.0
        for _ in range(5):
            t = time.perf_counter()
            np.copyto(dst, src)
            best = max(best, 2 * n / (time.perf_counter() - t) / 1e9)
        return best, "host memcpy"
    rows = n // 4 // 4096
    a, b = empty((rows, 4096)), empty((rows, 4096))
    core.op_zero(a)
    best = 0.0
    for _ in range(5):
        core.op_copy(a, 0, 4096, b, 0, 4096, rows, 4096)
        best = max(best, 2 * n / (core.last_batch_ms() / 1e3) / 1e9)
    return best, "device copy op"


def flops_per_token(cfg: DecoderConfig, context: int) -> float:
    """Multiply-adds x 2 of one token's pass through the layers (the lm_head is computed once per prompt)."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = D * (q + 2 * kv) + q * D + D * 2 * F + F * D + 2 * q * context  # projections + QK^T and PV
    return 2.0 * cfg.num_hidden_layers * per_layer


def profile(lm: LanguageModel, rng):
    """Device time of one decode step's kinds of work, each alone in a batch of a layer's worth of copies."""
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
    for name, out, inp in (("qkv_proj", "qkv", x), ("gate_up_proj", "gate_up", x)):
        wt = w[p + f"{'self_attn' if name == 'qkv_proj' else 'mlp'}.{name}.weight"]
        timed(f"mat-vec {name} {list(wt.shape)}", wt.nbytes, lambda wt=wt, out=out, inp=inp: core.op_matmul(inp, wt, None, outs[out]))
    wt = w[p + "mlp.down_proj.weight"]
    timed(f"mat-vec down_proj {list(wt.shape)}", wt.nbytes, lambda: core.op_matmul(outs["down_in"], wt, None, h, True))
    wt = w["lm_head.weight"]
    logits = empty((1, cfg.vocab_size))
    timed(f"mat-vec lm_head {list(wt.shape)}", wt.nbytes, lambda: core.op_matmul(x, wt, None, logits), reps=3)
    gu = outs["gate_up"]
    act = empty((1, F))
    timed("silu_mul", 0, lambda: core.op_silu_mul(gu, None, act))


def run(kind: str, layers: int, prompt: int, new: int, bandwidth: float, do_profile: bool, variant: str = "bf16"):
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    lm = build(kind, layers, prompt + new, rng, variant)
    cfg = lm.config
    load_s = time.perf_counter() - t
    ids = rng.integers(0, cfg.vocab_size, prompt)
    per_token = lm._decoder.weight_bytes
    print(f"{NAMES[kind]} widths, {layers} of {CONFIGS[kind]['num_hidden_layers']} layers, {variant} linear layers "
          f"(hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, "
          f"vocab {cfg.vocab_size}); {per_token / 1e9:.2f} GB of weights read per decode token; built in {load_s:.1f} s")

    lm.forward(input_ids=ids[:16], logits_to_keep=1)  # pipelines built, caches warm
    out = lm.generate(input_ids=ids, max_new_tokens=new + 1, do_sample=False)
    flops = sum(flops_per_token(cfg, c) for c in range(1, prompt + 1)) + 2.0 * cfg.hidden_size * cfg.vocab_size
    print(f"  prefill {prompt} tokens: {out.prefill_ms / 1e3:6.2f} s  {out.prefill_tokens_per_s:8.1f} tokens/s  "
          f"{flops / (out.prefill_ms / 1e3) / 1e9:6.1f} GFLOP/s")
    steps = len(out.token_ids) - 1
    tps = out.decode_tokens_per_s
    step_device_ms = core.last_batch_ms()
    bandwidth = max(bandwidth, copy_bandwidth()[0])  # the machine may be shared: the best copy seen
    bound = bandwidth * 1e9 / per_token
    print(f"  decode {steps} tokens: {out.decode_ms / 1e3:6.2f} s  {tps:8.2f} tokens/s  {per_token * tps / 1e9:6.2f} GB/s of "
          f"weights = {100 * tps / bound:5.1f} % of the bandwidth bound ({bound:.1f} tokens/s at {bandwidth:.1f} GB/s)")
    print(f"    per step: {out.decode_ms / steps:.1f} ms wall, {step_device_ms:.1f} ms device (last step), "
          f"{lm._decoder.dispatches} dispatches")
    if do_profile:
        profile(lm, rng)
    lm.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["phi3", "qwen2", "both"], default="both")
    ap.add_argument("--layers", type=int, default=None, help="layers (default: 4 for Phi-3.5, 2 for Qwen2.5)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--profile", action="store_true", help="also time the decode step's ops one by one")
    ap.add_argument("--variants", default="bf16", help="comma-separated weight variants: bf16, int8, int4")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("bf16", "int8", "int4"):
            ap.error(f"unknown variant {v!r}: bf16, int8 or int4")
    info = device_info()
    bw, how = copy_bandwidth()
    print(f"device: {info['name']} ({info['type']}); copy bandwidth {bw:.1f} GB/s ({how}, read + write)")
    for kind in (["phi3", "qwen2"] if args.model == "both" else [args.model]):
        layers = args.layers or (4 if kind == "phi3" else 2)
        for variant in variants:
            run(kind, layers, args.prompt, args.new, bw, args.profile, variant)


if __name__ == "__main__":
    main()
