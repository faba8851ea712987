"""The `eyecare` command line. Each sub-command is a small function; errors a user can fix (a bad
path, a file that is not an image, a directory that is not a checkpoint, no Vulkan device) print one
line and exit 1, never a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def cmd_devices(args) -> int:
    from .core import devices

    for d in devices():
        mem = d["memory_bytes"] / 2**30
        print(f"[{d['index']}] {d['name']}  ({d['type']}, Vulkan {d['api_version']}, {mem:.1f} GiB, "
              f"subgroup {d['subgroup_size']}, max storage binding {d['max_storage_buffer_range'] // 2**20} MiB)")
        # The identity other APIs name a GPU by (nvidia-smi, Ray, ROCm): see eyecare/bench/device_map.py.
        print(f"    uuid {d['uuid']}  pci {d['pci_bus_id'] or 'not reported'}")
    return 0


def cmd_info(args) -> int:
    from .checkpoint import read_config
    from .safetensors import open_safetensors

    config = read_config(args.model)
    v, t = config["vision_config"], config["text_config"]
    parts = {"vision_tower.": [0, 0], "connector.": [0, 0], "language_model.": [0, 0]}
    dtypes = {}
    itemsize = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1}
    with open_safetensors(args.model) as ckpt:
        for name in ckpt.names():
            dtype, shape = ckpt.info(name)
            count = 1
            for s in shape:
                count *= s
            nbytes = count * itemsize.get(dtype, 4)
            if name.endswith(".scales") and (config.get("quantization") or {}).get("method"):
                count = 0  # a quantized weight's parameters are counted with its packed integers
            elif name.endswith(".qweight") and (config.get("quantization") or {}).get("method") == "int4":
                count *= 2
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
            for prefix, acc in parts.items():
                if name.startswith(prefix):
                    acc[0] += count
                    acc[1] += nbytes
    from .memory import device_memory

    # eyecare.memory reads float checkpoints; a quantized one gets the per-variant weight sizes below instead.
    need = None if config.get("quantization") else device_memory(args.model, max_context=args.max_context,
                                                                  max_batch=args.max_batch, max_views=args.max_views)
    print(f"EyecareGPT checkpoint: {args.model}")
    print(f"  vision   SigLIP {v['num_hidden_layers']} layers x {v['hidden_size']} ({v['num_attention_heads']} heads), "
          f"{v['image_size']} px views, patch {v['patch_size']}")
    print(f"  LLM      {t['model_type']} {t['num_hidden_layers']} layers x {t['hidden_size']}, "
          f"{t['num_attention_heads']} heads / {t.get('num_key_value_heads', t['num_attention_heads'])} KV heads, "
          f"vocab {t['vocab_size']}")
    print(f"  connector {json.dumps(config.get('connector', {}))}")
    print(f"  adaptive resolution {json.dumps(config.get('adaptive_resolution', {}))}")
    for prefix, (count, nbytes) in parts.items():
        print(f"  {prefix:<16} {count / 1e6:10.1f} M parameters {nbytes / 2**20:10.1f} MiB")
    print(f"  dtypes   {', '.join(f'{k} x{n}' for k, n in sorted(dtypes.items()))}")
    mib = 2**20
    if need is not None:
        print(f"  device memory with max_context {args.max_context}, max_batch {args.max_batch}, max_views {args.max_views}: "
              f"{need.total / mib:.1f} MiB = weights {need.weights / mib:.1f} + KV cache {need.kv_cache / mib:.1f} + "
              f"activations {need.activations / mib:.1f} + vision scratch {need.vision_scratch / mib:.1f} MiB "
              f"(what max_device_memory= must allow; eyecare.memory says what each part counts)")
    from .quantize import VARIANTS, Quantization, model_weight_bytes

    stored = Quantization.from_config(config)
    if stored is not None:
        print(f"  quantized {stored.method} (blocks of 32, f16 scales): LLM linear layers"
              f"{', lm_head' if stored.lm_head else ''}{', vision linear layers' if stored.vision else ''}")
    print("  weights on the device by variant (what from_pretrained(quantize=...) loads; + KV cache and activations):")
    for label, quant in VARIANTS.items():
        if stored is not None and (quant is None or quant.method != stored.method or (stored.vision and not quant.vision)
                                   or (stored.lm_head and not quant.lm_head)):
            continue  # not loadable from this checkpoint
        parts = model_weight_bytes(config, quant)
        print(f"    {label:<20} {_size(sum(parts.values()))}  (vision {_size(parts['vision'])}, "
              f"connector {_size(parts['connector'])}, LLM {_size(parts['language'])})")
    return 0


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.2f} MiB"


def _default_model() -> Path:
    """A tiny random model, created once under the user cache directory."""
    from .tiny import make_tiny

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eyecare" / "tiny-phi3"
    if not (cache / "config.json").is_file():
        print(f"eyecare: creating a tiny random model in {cache}", file=sys.stderr)
        make_tiny(cache, "phi3")
    return cache


def cmd_chat(args) -> int:
    from .model import EyecareGPT

    path = args.model
    if path is None:
        path = _default_model()
        print("eyecare: no --model given: using a tiny RANDOM model, so the answer is meaningless. Convert the "
              "published weights (eyecare convert) and pass --model DIR for real answers.", file=sys.stderr)
    for image in args.image:
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{image}: no such image file")
    model = EyecareGPT.from_pretrained(path, max_context=args.max_context, progress=sys.stderr.isatty())
    start = time.perf_counter()
    for piece in model.chat(args.question, images=args.image, system=args.system, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed, stream=True):
        print(piece, end="", flush=True)
    print()
    t = model.timings
    total = (time.perf_counter() - start) * 1e3
    print(f"[{len(args.image)} image(s), {t.get('tokens', 0)} tokens | vision {t.get('vision_ms', 0):.0f} ms, "
          f"prefill {t.get('prefill_ms', 0):.0f} ms ({t.get('prefill_tokens_per_s', 0):.1f} tok/s), "
          f"decode {t.get('decode_ms', 0):.0f} ms ({t.get('decode_tokens_per_s', 0):.1f} tok/s), total {total:.0f} ms]",
          file=sys.stderr)
    return 0


def _groups(text: str) -> list[list[int]]:
    """'0:13,13:26' -> [[0, 13], [13, 26]]"""
    try:
        return [[int(a), int(b)] for a, b in (part.split(":") for part in text.split(","))]
    except ValueError:
        raise ValueError(f"--groups {text!r}: expected ranges like 0:13,13:26") from None


def cmd_convert(args) -> int:
    from .convert import convert_checkpoint, convert_llava, convert_parts

    connector = {}
    if args.feature_layer is not None:
        connector["feature_layer"] = args.feature_layer
    if args.groups:
        connector["groups"] = _groups(args.groups)
    adaptive = {"tile_pool": args.tile_pool} if args.tile_pool else None
    quant = dict(quantize=args.quantize, quantize_vision=args.quantize_vision, quantize_lm_head=args.quantize_lm_head)
    if args.checkpoint:
        if args.llava or args.vision or args.llm or args.connector or connector or adaptive:
            raise ValueError("--checkpoint DIR re-writes an EyecareGPT checkpoint as it is: give no other source or "
                             "connector option")
        written = convert_checkpoint(args.checkpoint, args.out, dtype=args.dtype, **quant)
    elif args.llava:
        if args.vision or args.llm or args.connector:
            raise ValueError("give either --llava DIR, or --vision, --llm and --connector")
        written = convert_llava(args.llava, args.out, vision_config=args.vision_config, text_model_type=args.text_model_type,
                                dtype=args.dtype, connector=connector, adaptive_resolution=adaptive,
                                ignore_unexpected=args.ignore_unexpected, **quant)
    else:
        if not (args.vision and args.llm and args.connector):
            raise ValueError("give --vision DIR --llm DIR --connector FILE (or --llava DIR, or --checkpoint DIR)")
        written = convert_parts(args.vision, args.llm, args.connector, args.out, dtype=args.dtype, connector=connector,
                                adaptive_resolution=adaptive, ignore_unexpected=args.ignore_unexpected, **quant)
    print(f"wrote {args.out}: {', '.join(p.name for p in written)}")
    return 0


def cmd_make_tiny(args) -> int:
    from .tiny import make_tiny

    out = make_tiny(args.out, args.family, dtype=args.dtype, seed=args.seed)
    print(f"wrote a tiny random {args.family} EyecareGPT to {out} (its answers are meaningless)")
    return 0


def cmd_serve(args) -> int:
    from .serve import serve

    api_key = args.api_key or os.environ.get("EYECARE_API_KEY") or None
    return serve(args.model, host=args.host, port=args.port, api_key=api_key,
                 allow_local_images=args.allow_local_images, max_body_mb=args.max_body_mb,
                 max_pixels=args.max_pixels, max_context=args.max_context, model_name=args.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eyecare", description="EyecareGPT on Vulkan: any GPU, or the CPU via lavapipe.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("devices", help="list the Vulkan devices (EYECARE_DEVICE picks one by index or name)")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("info", help="describe a checkpoint: config, parameters, dtypes, device memory needed")
    p.add_argument("model", metavar="DIR")
    p.add_argument("--max-context", type=int, default=4096, help="tokens per conversation (default 4096)")
    p.add_argument("--max-batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--max-views", type=int, default=16, help="views per vision pass (default 16, the most the "
                   "loader picks on its own)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("chat", help="ask a question about images (streams the answer)")
    p.add_argument("question")
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: a tiny random model)")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image (repeat for several)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("convert", help="build a checkpoint directory from HF parts or a LLaVA-style checkpoint")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--vision", metavar="DIR", help="Hugging Face SigLIP checkpoint")
    p.add_argument("--llm", metavar="DIR", help="Hugging Face Phi-3 or Qwen2 checkpoint (with its tokenizer)")
    p.add_argument("--connector", metavar="FILE", help="safetensors of the projector (0.weight, 2.weight ...)")
    p.add_argument("--llava", metavar="DIR", help="a LLaVA-style merged checkpoint instead of the three parts")
    p.add_argument("--checkpoint", metavar="DIR", help="an EyecareGPT checkpoint to re-write (e.g. with --quantize)")
    p.add_argument("--vision-config", metavar="FILE", help="SigLIP config.json, when the LLaVA config lacks one")
    p.add_argument("--text-model-type", choices=["phi3", "qwen2"], help="the LLM family, when the LLaVA config hides it")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="cast the weights (default: as stored)")
    p.add_argument("--feature-layer", type=int, help="the LDC's F_last hidden state (default -2)")
    p.add_argument("--groups", help="the LDC's averaged ranges of hidden states (default 0:13,13:26)")
    p.add_argument("--tile-pool", type=int, help="tile token pooling factor (default 2)")
    p.add_argument("--quantize", choices=["int8", "int4"],
                   help="store the LLM's linear layers as int8 or int4 blocks of 32 with float16 scales")
    p.add_argument("--quantize-vision", action="store_true", help="with --quantize: the vision tower's linear layers too")
    p.add_argument("--quantize-lm-head", action="store_true", help="with --quantize: the lm_head too")
    p.add_argument("--ignore-unexpected", action="store_true",
                   help="leave out tensors EyecareGPT has no place for (e.g. image_newline) instead of stopping")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("make-tiny", help="write a tiny random-weight checkpoint (tests, demos, benchmarks)")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--family", choices=["phi3", "qwen2"], default="phi3")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server for a checkpoint (needs eyecare[serve])",
                       description="Serves /v1/chat/completions, /v1/models and /health. Listens on loopback "
                                   "unless --host says otherwise; requests take turns on the model.")
    p.add_argument("--model", metavar="DIR", required=True, help="checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' (default: $EYECARE_API_KEY, "
                                                    "else no key)")
    p.add_argument("--allow-local-images", metavar="DIR",
                   help="let image_url parts name files inside DIR (default: base64 data: URLs only)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest image in pixels (default: the model's, 64M)")
    p.add_argument("--max-context", type=int, default=4096, help="tokens of prompt and answer per request (default 4096)")
    p.add_argument("--name", default=None, help="the model's name in the API (default: the folder's name)")
    p.set_defaults(func=cmd_serve)

    from .bench.cli import register as register_bench

    register_bench(sub)
    from .data.cli import register as register_data

    register_data(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ._errors import user_facing_errors

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("eyecare: interrupted", file=sys.stderr)
        return 130
    except user_facing_errors() as e:
        text = str(e).strip()
        message = text.splitlines()[0] if text else type(e).__name__
        if text.count("\n") and "checkpoint does not match" in text:
            message = f"{message} {text.count(chr(10))} problem(s), first: {text.splitlines()[1].strip()}"
        print(f"eyecare {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
