"""Throughput of the vision tower (SigLIP so400m + LDC + projector) on the chosen device (EYECARE_DEVICE),
with random weights, next to the device's measured FMA peak (benchmarks/peaks.py).

    python benchmarks/vision.py                       # so400m: 27 layers (26 run), 1 view, bf16
    python benchmarks/vision.py --layers 3 --views 2  # shorter: lavapipe takes many seconds a layer
    python benchmarks/vision.py --breakdown           # also each op of one layer, timed on its own

A view's work is counted as 2*M*N*K per matmul plus 4*T*T*D for attention (scores and weighted sum);
achieved GFLOP/s divides the views' work by the wall time of the encode call (upload, one batch per
chunk of views, read-back)."""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eyecare._core as core  # noqa: E402
from eyecare.core import device_info, empty, tensor  # noqa: E402
from eyecare.vision import VisionTower  # noqa: E402
from peaks import fma_gflops, timed  # noqa: E402

SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384, patch_size=14,
              hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


def config_for(layers, d_llm):
    # The published connector for 27 layers (feature -2, groups [0, 13) and [13, 26): layer 27 is not
    # run); with fewer layers, one that reads them all, so that --layers N times N layers.
    if layers == 27:
        feature, groups = -2, [[0, 13], [13, 26]]
    else:
        half = (layers + 1) // 2
        feature, groups = -1, [[0, half], [half, layers + 1]]
    return {"vision_config": dict(SO400M, num_hidden_layers=layers),
            "connector": {"feature_layer": feature, "groups": groups, "projector": "mlp2x_gelu"},
            "adaptive_resolution": {"tile_size": 384, "tile_pool": 2},
            "text_config": {"hidden_size": d_llm}}


def random_weights(config, dtype, rng, layers_needed):
    """Device tensors under the checkpoint names; layers the connector does not read are left out."""
    v = config["vision_config"]
    D, F, P = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    T = (v["image_size"] // P) ** 2
    d = config["text_config"]["hidden_size"]
    vp, cp = "vision_tower.vision_model.", "connector.projector."
    shapes = {vp + "embeddings.patch_embedding.weight": (D, 3, P, P), vp + "embeddings.patch_embedding.bias": (D,),
              vp + "embeddings.position_embedding.weight": (T, D)}
    for i in range(layers_needed):
        lp = f"{vp}encoder.layers.{i}."
        for name in ("layer_norm1", "layer_norm2"):
            shapes[lp + name + ".weight"] = shapes[lp + name + ".bias"] = (D,)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{lp}self_attn.{name}.weight"], shapes[f"{lp}self_attn.{name}.bias"] = (D, D), (D,)
        shapes[lp + "mlp.fc1.weight"], shapes[lp + "mlp.fc1.bias"] = (F, D), (F,)
        shapes[lp + "mlp.fc2.weight"], shapes[lp + "mlp.fc2.bias"] = (D, F), (D,)
    n_in = (1 + len(config["connector"]["groups"])) * D
    shapes.update({cp + "0.weight": (d, n_in), cp + "0.bias": (d,), cp + "2.weight": (d, d), cp + "2.bias": (d,)})
    weights = {}
    for name, shape in shapes.items():
        scale = 1.0 if "norm" in name and name.endswith("weight") else 0.02
        a = rng.standard_normal(shape, dtype=np.float32) * scale
        weights[name] = tensor(a, dtype)
    return weights


def warm_up(dtype, d_llm, rng):
    """Builds the pipelines the timed pass uses, with a one-layer tower of the same head dimension,
    weight dtype and pooling (pipelines are keyed by those, not by the widths), at 1/8 of the width so
    that it costs milliseconds rather than a so400m layer."""
    config = config_for(1, d_llm)
    config["vision_config"] = dict(config["vision_config"], hidden_size=144, intermediate_size=538, num_attention_heads=2)
    tower = VisionTower(config, random_weights(config, dtype, rng, 1), max_views=2)
    tower.encode(rng.uniform(-1, 1, (2, 3, 384, 384)).astype(np.float32), [(1, 1)])
    tower.close()


def flops_per_view(info, n_groups, d_llm):
    T, D, F = info["tokens"], info["hidden_size"], info["intermediate_size"]
    patch = 2 * T * 3 * info["patch_size"] ** 2 * D
    layer = 2 * T * D * D * 4 + 2 * T * D * F * 2 + 4 * T * T * D
    projector = 2 * T * (1 + n_groups) * D * d_llm + 2 * T * d_llm * d_llm
    return patch + info["layers_run"] * layer + projector, layer


def breakdown(dtype, views, rng, reps=1):
    """Each op of one so400m layer over `views` views, on its own (the same shapes as in the pass)."""
    D, F, H = 1152, 4304, 16
    M = views * 729
    x, big = tensor(rng.standard_normal((M, D), dtype=np.float32)), tensor(rng.standard_normal((M, F), dtype=np.float32))
    y, ybig = empty((M, D)), empty((M, F))
    w_dd = tensor(rng.standard_normal((D, D), dtype=np.float32) * 0.02, dtype)
    w_3dd = tensor(rng.standard_normal((3 * D, D), dtype=np.float32) * 0.02, dtype)
    w_fd = tensor(rng.standard_normal((F, D), dtype=np.float32) * 0.02, dtype)
    w_df = tensor(rng.standard_normal((D, F), dtype=np.float32) * 0.02, dtype)
    ln = tensor(np.ones(D, np.float32), dtype)
    y3 = empty((M, 3 * D))
    lens = tensor(np.full(views, 729, np.int32))
    rows = [
        ("layernorm", 0, lambda: core.op_layernorm(x, ln, ln, 1e-6, y)),
        (f"matmul {M}x{D}x{D} (q, k, v, out each)", 2 * M * D * D, lambda: core.op_matmul(x, w_dd, None, y)),
        (f"matmul {M}x{D}x{3 * D} (q, k, v fused)", 2 * M * D * 3 * D, lambda: core.op_matmul(x, w_3dd, None, y3)),
        ("attention 16 heads of 72, non-causal", 4 * M * 729 * D,
         lambda: core.op_attention(x, x, x, y, lens, views, 729, 729, H, H, 72, False, 72 ** -0.5)),
        (f"matmul {M}x{D}x{F} (fc1)", 2 * M * D * F, lambda: core.op_matmul(x, w_fd, None, ybig)),
        ("gelu_tanh", 0, lambda: core.op_activation("gelu_tanh", big, big)),
        (f"matmul {M}x{F}x{D} (fc2)", 2 * M * F * D, lambda: core.op_matmul(big, w_df, None, y)),
    ]
    print(f"\none layer's ops over {views} view(s), each timed alone ({dtype} weights):")
    for name, flops, run in rows:
        sec = timed(run, reps)
        rate = f"{flops / sec / 1e9:8.1f} GFLOP/s" if flops else ""
        print(f"  {name:44s} {sec * 1e3:9.1f} ms {rate}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=27, help="encoder layers in the config (default 27, so400m)")
    ap.add_argument("--views", type=int, default=1, help="views encoded in the timed call (default 1)")
    ap.add_argument("--max-views", type=int, default=None, help="views per pass (default: all views in one pass)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--d-llm", type=int, default=3072, help="projector width (3072: Phi-3.5, 3584: Qwen2.5 7B)")
    ap.add_argument("--breakdown", action="store_true", help="also time each op of one layer on its own")
    args = ap.parse_args()
    if args.layers < 1 or args.views < 1:
        ap.error("--layers and --views must be positive")

    info = device_info()
    print(f"device: {info['name']} ({info['type']})")
    peak = fma_gflops()
    print(f"peak: FMA {peak:.1f} GFLOP/s (benchmarks/peaks.py)")

    rng = np.random.default_rng(0)
    config = config_for(args.layers, args.d_llm)
    from eyecare.vision import check_config

    needed = check_config(config)["layers_run"]
    start = time.perf_counter()
    weights = random_weights(config, args.dtype, rng, needed)
    tower = VisionTower(config, weights, max_views=args.max_views or args.views)
    del weights
    load = time.perf_counter() - start
    ti = tower.info
    print(f"so400m shape: {args.layers} layers ({ti['layers_run']} run), {ti['tokens']} tokens/view, {args.dtype} "
          f"weights, d_llm {ti['d_llm']}, {ti['max_views']} view(s) per pass; random weights made and uploaded in {load:.1f} s")

    pixels = rng.uniform(-1, 1, (args.views, 3, 384, 384)).astype(np.float32)
    grids = [(0, 0)] * args.views  # global views: every view's 729 tokens come back
    warm_up(args.dtype, args.d_llm, rng)
    start = time.perf_counter()
    tokens = tower.encode(pixels, grids)
    sec = time.perf_counter() - start
    assert tokens.shape == (args.views * 729, ti["d_llm"]) and np.isfinite(tokens).all()

    n_groups = len(config["connector"]["groups"])
    flops, layer_flops = flops_per_view(ti, n_groups, ti["d_llm"])
    rate = flops * args.views / sec / 1e9
    print(f"\n{args.views} view(s) in {sec:.2f} s: {args.views / sec:.3f} views/s, {sec / args.views * 1e3:.0f} ms/view "
          f"(last pass on the device: {tower.info['last_device_ms']:.0f} ms)")
    print(f"work: {flops / 1e9:.1f} GFLOP/view ({layer_flops / 1e9:.1f} per layer); achieved {rate:.1f} GFLOP/s = "
          f"{rate / peak:.1%} of the FMA peak")
    if args.layers != 27:
        full = flops_per_view({**ti, "layers_run": 26}, 2, ti["d_llm"])[0]
        print(f"a 27-layer so400m view ({full / 1e9:.0f} GFLOP) would take about {full / rate / 1e9:.1f} s at this rate")
    tower.close()
    if args.breakdown:
        breakdown(args.dtype, args.views, rng)


if __name__ == "__main__":
    main()
