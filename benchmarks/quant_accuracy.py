"""Accuracy of the int8 / int4 weights, and the device memory of each variant of EyecareGPT-3.8B and -7B.

Accuracy is measured against the float32 transformers reference on random-weight models with the real
layer widths (fewer layers): Phi-3.5-mini (EyecareGPT-3.8B's LLM), Qwen2.5-7B (EyecareGPT-7B's) and the
SigLIP so400m vision tower. The random weights are float32 with the spread of trained ones (1/sqrt(fan-in));
the published checkpoints are bf16, so every eyecare variant starts from the bf16-rounded weights:

- bf16: eyecare with the bf16 checkpoint as stored;
- int8 / int4: eyecare quantizing that checkpoint while loading (eyecare/quantize.py);
- ref int8 / ref int4: transformers (float32) holding the same bf16 weights with the linear layers replaced by
  the common block formats as their definition states them (this file, in torch): 8-bit blocks of 32 with one
  f16 scale and values -127..127 (d = max|w| / 127, q = round(w / d)), 4-bit blocks of 32 with one f16 scale
  and values -8..7 (d = w_max / -8 for the weight of largest magnitude, q = clamp(round(w / d), -8, 7)).

Figures: the relative error of the logits, ||y - y_ref|| / ||y_ref|| over all positions (a single prompt of
--positions random tokens), and the top-1 agreement (the share of positions whose argmax is the reference's).
Random models have flat logits, so absolute errors are large; the comparison that matters is eyecare's
variant against the reference quantizer's on the same weights. For the vision tower, the relative error of
the last hidden state of one random 384 px view.

Needs torch and transformers (the test extra), like the tests' references:

    python benchmarks/quant_accuracy.py                 # everything (several GB of host memory for Qwen2.5's vocab)
    python benchmarks/quant_accuracy.py --part phi3 --positions 256
    python benchmarks/quant_accuracy.py --part memory   # the memory table only (no torch)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

PHI35 = {"model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5,
         "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
         "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.5] * 48},
         "sliding_window": 262144, "tie_word_embeddings": False, "hidden_act": "silu"}
QWEN25_7B = {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
             "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
             "max_position_embeddings": 32768, "rope_theta": 1000000.0, "use_sliding_window": False,
             "tie_word_embeddings": False, "hidden_act": "silu"}
SIGLIP_SO400M = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                 "num_hidden_layers": 27, "num_attention_heads": 16, "num_channels": 3, "image_size": 384,
                 "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
METHODS = ("int8", "int4")


# ------------------------------------------------------------------------------------------------
# The reference block formats, from their definition (torch, independent of eyecare/quantize.py)

def reference_blocks(w, method: str):
    """The weight [N, K] as the 8-bit or 4-bit block format holds it (float32 values)."""
    import torch

    n, k = w.shape
    pad = (-k) % 32
    x = torch.nn.functional.pad(w.float(), (0, pad)).reshape(n, -1, 32)
    if method == "int8":
        d = x.abs().amax(-1, keepdim=True) / 127
        lo, hi = -127, 127
    else:
        idx = x.abs().argmax(-1, keepdim=True)
        d = torch.gather(x, -1, idx) / -8
        lo, hi = -8, 7
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.clamp(torch.round(x * inv), lo, hi)
    return (q * d.half().float()).reshape(n, -1)[:, :k]


def is_linear(name: str, vision: bool = False) -> bool:
    if vision:
        return name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")) \
            and ".layers." in name
    return ".layers." in name and name.endswith("_proj.weight")


def randomize(model, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def compare(got: np.ndarray, want: np.ndarray, top1: bool = True) -> str:
    got, want = got.astype(np.float64).reshape(-1, want.shape[-1]), want.astype(np.float64).reshape(-1, want.shape[-1])
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    if not top1:
        return f"{rel:.3e}"
    agree = np.mean(got.argmax(-1) == want.argmax(-1)) * 100
    return f"{rel:.3e}  top-1 {agree:5.1f} %"


# ------------------------------------------------------------------------------------------------
# Language models

def llm_accuracy(kind: str, layers: int, positions: int, lm_head: bool, seed: int = 0):
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from eyecare import LanguageModel
    from eyecare.core import to_bfloat16
    from eyecare.safetensors import save_safetensors

    cfg = dict(PHI35 if kind == "phi3" else QWEN25_7B, num_hidden_layers=layers)
    cls, cfg_cls = (Phi3ForCausalLM, Phi3Config) if kind == "phi3" else (Qwen2ForCausalLM, Qwen2Config)
    t = time.perf_counter()
    torch.manual_seed(seed)
    with torch.no_grad():
        model = cls(cfg_cls(**{k: v for k, v in cfg.items() if k != "model_type"})).eval()
        randomize(model, seed)
    ids = torch.from_numpy(np.random.default_rng(seed).integers(0, cfg["vocab_size"], positions))
    with torch.no_grad():
        truth = model(ids[None]).logits[0].numpy()
        # From here on the model holds the bf16 weights every variant starts from.
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        linears = {n: p.detach().clone() for n, p in model.named_parameters() if is_linear(n) or n == "lm_head.weight"}
    name = "Phi-3.5-mini" if kind == "phi3" else "Qwen2.5-7B"
    print(f"{name} widths, {layers} layer(s), vocab {cfg['vocab_size']}: logits of {positions} positions vs float32 "
          f"transformers (built in {time.perf_counter() - t:.0f} s)")
    with tempfile.TemporaryDirectory() as d:
        tensors = {n: (to_bfloat16(p.detach().numpy()), "BF16") for n, p in model.state_dict().items()}
        save_safetensors(tensors, os.path.join(d, "model.safetensors"))
        del tensors
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        variants = ("bf16",) + METHODS + (tuple(m + "+lm_head" for m in METHODS) if lm_head else ())
        for variant in variants:
            method, with_head = variant.split("+")[0], variant.endswith("+lm_head")
            lm = LanguageModel.from_pretrained(d, max_context=positions, quantize=None if variant == "bf16" else method,
                                               quantize_lm_head=with_head)
            got = lm.forward(input_ids=ids.numpy())
            lm.close()
            line = f"  eyecare {variant:<13} {compare(got, truth)}"
            if variant != "bf16":
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in linears and (with_head or n != "lm_head.weight"):
                            p.copy_(reference_blocks(linears[n], method))
                    ref = model(ids[None]).logits[0].numpy()
                    for n, p in model.named_parameters():
                        if n in linears:
                            p.copy_(linears[n])
                line += f"   | reference {variant}: {compare(ref, truth)}"
            print(line, flush=True)


# ------------------------------------------------------------------------------------------------
# The vision tower

def vision_accuracy(layers: int, seed: int = 0):
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from eyecare import quantize as Q
    from eyecare.core import tensor, to_bfloat16
    from eyecare.vision import CONNECTOR_PREFIX, VISION_PREFIX, VisionTower

    v = dict(SIGLIP_SO400M, num_hidden_layers=layers)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = SiglipVisionModel(SiglipVisionConfig(**{k: x for k, x in v.items() if k != "model_type"},
                                                     vision_use_head=False)).eval()
        randomize(model, seed)
    pixels = np.random.default_rng(seed).uniform(-1, 1, (1, 3, 384, 384)).astype(np.float32)
    state = {k[len("vision_model."):] if k.startswith("vision_model.") else k: p for k, p in model.state_dict().items()}
    state = {k: p for k, p in state.items() if not k.startswith("post_layernorm.")}  # the connector reads before it
    with torch.no_grad():
        truth = model(torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-1].numpy()
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        linears = {n: p.detach().clone() for n, p in model.named_parameters() if is_linear(n, vision=True)}
    d_llm = 64
    config = {"vision_config": v, "text_config": {"hidden_size": d_llm},
              "connector": {"feature_layer": -1, "groups": [[0, 1], [1, layers]], "projector": "mlp2x_gelu"}}
    rng = np.random.default_rng(seed)
    projector = {CONNECTOR_PREFIX + "projector.0.weight": rng.standard_normal((d_llm, 3 * v["hidden_size"])) * 0.02,
                 CONNECTOR_PREFIX + "projector.0.bias": np.zeros(d_llm),
                 CONNECTOR_PREFIX + "projector.2.weight": rng.standard_normal((d_llm, d_llm)) * 0.1,
                 CONNECTOR_PREFIX + "projector.2.bias": np.zeros(d_llm)}
    print(f"SigLIP so400m widths, {layers} layer(s): last hidden state of one 384 px view vs float32 transformers")
    for variant in ("bf16",) + METHODS:
        weights = {n: tensor(a.astype(np.float32)) for n, a in projector.items()}
        for n, p in state.items():
            bits = to_bfloat16(p.numpy())
            if variant != "bf16" and p.ndim == 2 and is_linear(n, vision=True):
                weights[VISION_PREFIX + n] = Q.quantize_to_device(bits, variant)
            else:
                weights[VISION_PREFIX + n] = tensor(bits, "bfloat16")
        tower = VisionTower(config, weights, max_views=1)
        got = tower.hidden_states(pixels)[-1]
        tower.close()
        line = f"  eyecare {variant:<13} {compare(got, truth, top1=False)}"
        if variant != "bf16":
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in linears:
                        p.copy_(reference_blocks(linears[n], variant))
                ref = model(torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-1].numpy()
                for n, p in model.named_parameters():
                    if n in linears:
                        p.copy_(linears[n])
            line += f"   | reference {variant}: {compare(ref, truth, top1=False)}"
        print(line, flush=True)


# ------------------------------------------------------------------------------------------------
# Memory

def memory_table():
    from eyecare.convert import _eyecare_config
    from eyecare.quantize import VARIANTS, model_weight_bytes

    print("Weights on the device (GiB), from the real configs (SigLIP so400m + connector + LLM; the vision layers "
          "past the connector's feature layer are not loaded):")
    models = {"EyecareGPT-3.8B": PHI35, "EyecareGPT-7B": QWEN25_7B}
    print(f"  {'variant':<20}" + "".join(f"{m:>18}" for m in models))
    for label, quant in VARIANTS.items():
        row = [sum(model_weight_bytes(_eyecare_config(SIGLIP_SO400M, t, None, None), quant).values()) / 2**30
               for t in models.values()]
        print(f"  {label:<20}" + "".join(f"{x:18.2f}" for x in row))
    for m, t in models.items():
        kv = 2 * t["num_hidden_layers"] * t["num_key_value_heads"] * (t["hidden_size"] // t["num_attention_heads"]) * 4
        print(f"  + KV cache of {m}: {kv * 4096 / 2**30:.2f} GiB for 4096 tokens (f32), whatever the variant")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["all", "phi3", "qwen2", "vision", "memory"], default="all")
    ap.add_argument("--positions", type=int, default=256, help="prompt tokens whose logits are compared (>= 256)")
    ap.add_argument("--phi3-layers", type=int, default=2)
    ap.add_argument("--qwen2-layers", type=int, default=1)
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--lm-head", action="store_true", help="also the variants with the lm_head quantized")
    args = ap.parse_args(argv)
    if args.part in ("all", "memory"):
        memory_table()
    if args.part in ("all", "phi3"):
        llm_accuracy("phi3", args.phi3_layers, args.positions, args.lm_head)
    if args.part in ("all", "qwen2"):
        llm_accuracy("qwen2", args.qwen2_layers, args.positions, args.lm_head)
    if args.part in ("all", "vision"):
        vision_accuracy(args.vision_layers)


if __name__ == "__main__":
    main()
