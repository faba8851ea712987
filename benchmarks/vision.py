"""Throughput of the vision tower (SigLIP so400m + LDC + projector) on the chosen device (EYECARE_DEVICE),
with random weights, next to the device's FMA peak measured in the same run (benchmarks/peaks.py), and
the split of a view's time into its stages (patch embedding, attention, MLP, connector), each stage's
ops timed on their own with the so400m shapes.

    python benchmarks/vision.py                       # so400m: 27 layers (26 run), 1 view, bf16
    python benchmarks/vision.py --layers 3 --views 2  # shorter: lavapipe takes many seconds a layer

A view's work is counted as 2*M*N*K per matmul plus 4*T*T*D for attention (scores and weighted sum);
achieved GFLOP/s divides the views' work by the wall time of the encode call (upload, one batch per
chunk of views, read-back)."""
import argparse
import time

import numpy as np

import eyecare._core as core
from eyecare.core import device_info, empty, tensor
from eyecare.vision import VisionTower, check_config
from peaks import fma_gflops, timed

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


def stages(dtype, views, d_llm, layers_run, rng, reps=1):
    """Seconds and GFLOP of each stage of a pass over `views` so400m views: its ops recorded alone, with the
    pass's shapes; the attention and MLP stages are one layer's, multiplied by the layers run."""
    D, F, H, P, T = 1152, 4304, 16, 14, 729
    M = views * T
    w = lambda *shape: tensor(rng.standard_normal(shape, dtype=np.float32) * 0.02, dtype)  # noqa: E731
    act = lambda *shape: tensor(rng.standard_normal(shape, dtype=np.float32))  # noqa: E731
    pixels, patches = act(views, 3, 384, 384), empty((M, 3 * P * P))
    x, xn, h = act(M, D), empty((M, D)), act(M, D)
    q, k, v, att, mlp = empty((M, D)), empty((M, D)), empty((M, D)), empty((M, D)), empty((M, F))
    w_patch, pos = w(D, 3 * P * P), act(T, D)
    w_q, w_k, w_v, w_o, b_d = w(D, D), w(D, D), w(D, D), w(D, D), w(D)
    w_1, b_1, w_2 = w(F, D), w(F), w(D, F)
    ln = tensor(np.ones(D, np.float32), dtype)
    lens = tensor(np.full(views, T, np.int32))
    cat, y0, y1 = act(M, 3 * D), empty((M, d_llm)), empty((M, d_llm))
    w_p0, w_p1, b_p = w(d_llm, 3 * D), w(d_llm, d_llm), w(d_llm)

    def patch_embed():
        core.op_patchify(pixels, P, patches)
        core.op_matmul(patches, w_patch, b_d, x)
        core.op_add(x, pos, x)

    def attention():
        core.op_layernorm(h, ln, ln, 1e-6, xn)
        for wt, out in ((w_q, q), (w_k, k), (w_v, v)):
            core.op_matmul(xn, wt, b_d, out)
        core.op_attention(q, k, v, att, lens, views, T, T, H, H, D // H, False, (D // H) ** -0.5)
        core.op_matmul(att, w_o, b_d, h, True)

    def mlp_block():
        core.op_layernorm(h, ln, ln, 1e-6, xn)
        core.op_matmul(xn, w_1, b_1, mlp)
        core.op_activation("gelu_tanh", mlp, mlp)
        core.op_matmul(mlp, w_2, b_d, h, True)

    def connector():
        core.op_matmul(cat, w_p0, b_p, y0)
        core.op_activation("gelu", y0, y0)
        core.op_matmul(y0, w_p1, b_p, y1)

    qkvo = 2 * M * D * D * 4
    rows = [("patch embedding", 1, 2 * M * 3 * P * P * D, patch_embed),
            ("attention (ln, q/k/v/out projections, SDPA)", layers_run, qkvo + 4 * views * T * T * D, attention),
            ("  of which SDPA alone", layers_run, 4 * views * T * T * D,
             lambda: core.op_attention(q, k, v, att, lens, views, T, T, H, H, D // H, False, (D // H) ** -0.5)),
            ("MLP (ln, fc1, gelu, fc2)", layers_run, 2 * M * D * F * 2, mlp_block),
            ("connector (projector)", 1, 2 * M * 3 * D * d_llm + 2 * M * d_llm * d_llm, connector)]
    out = []
    for name, times, flops, run in rows:
        sec = timed(run, reps)
        out.append((name, sec * times, flops * times))
    return out


def main(argv=None, peak=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=27, help="encoder layers in the config (default 27, so400m)")
    ap.add_argument("--views", type=int, default=1, help="views encoded in the timed call (default 1)")
    ap.add_argument("--max-views", type=int, default=None, help="views per pass (default: all views in one pass)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--d-llm", type=int, default=3072, help="projector width (3072: Phi-3.5, 3584: Qwen2.5 7B)")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage split")
    ap.add_argument("--repeats", type=int, default=2,
                    help="encode calls timed; the best counts (a shared machine's speed varies from one run to the next)")
    args = ap.parse_args(argv)
    if args.layers < 1 or args.views < 1:
        ap.error("--layers and --views must be positive")

    info = device_info()
    print(f"device: {info['name']} ({info['type']})")
    peak = peak or fma_gflops()
    print(f"peak: FMA {peak:.1f} GFLOP/s (benchmarks/peaks.py, this run)")

    rng = np.random.default_rng(0)
    config = config_for(args.layers, args.d_llm)
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
    sec = float("inf")
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        tokens = tower.encode(pixels, grids)
        sec = min(sec, time.perf_counter() - start)
    sec_pass = sec
    assert tokens.shape == (args.views * 729, ti["d_llm"]) and np.isfinite(tokens).all()

    n_groups = len(config["connector"]["groups"])
    flops, layer_flops = flops_per_view(ti, n_groups, ti["d_llm"])
    rate = flops * args.views / sec / 1e9
    print(f"\n{args.views} view(s) in {sec:.2f} s (best of {max(1, args.repeats)}): {args.views / sec:.3f} views/s, {sec / args.views * 1e3:.0f} ms/view "
          f"(last pass on the device: {tower.info['last_device_ms']:.0f} ms)")
    print(f"work: {flops / 1e9:.1f} GFLOP/view ({layer_flops / 1e9:.1f} per layer); achieved {rate:.1f} GFLOP/s = "
          f"{rate / peak:.1%} of the FMA peak")
    full = flops_per_view({**ti, "layers_run": 26}, 2, ti["d_llm"])[0]
    if args.layers != 27:
        print(f"a 27-layer so400m view ({full / 1e9:.0f} GFLOP) would take about {full / rate / 1e9:.1f} s at this rate")
    tower.close()
    if not args.no_stages:
        split = stages(args.dtype, args.views, ti["d_llm"], ti["layers_run"], rng)
        total = sum(sec for name, sec, _ in split if not name.startswith(" "))
        print(f"\nstages of the pass over {args.views} view(s), each stage's ops timed alone ({ti['layers_run']} layers):")
        for name, sec, flops in split:
            share = "" if name.startswith(" ") else f"{sec / total:6.1%}"
            print(f"  {name:46s} {sec * 1e3:9.0f} ms {share:>7s} {flops / sec / 1e9:8.1f} GFLOP/s")
        print(f"  {'sum of the stages':46s} {total * 1e3:9.0f} ms (the whole pass: {sec_pass * 1e3:.0f} ms)")
    return [{"what": "vision, so400m view", "value": rate, "unit": "GFLOP/s", "bound": peak, "bound_what": "FMA peak",
             "target": 25.0, "target_is": "GFLOP/s", "note": f"{full / rate / 1e9:.1f} s per 27-layer view"}]


if __name__ == "__main__":
    main()
