"""The vision tower, LDC, projector and tile pooling against transformers' SiglipVisionModel
(output_hidden_states=True) plus torch ops for the connector, on checkpoints written with the
safetensors library and read by eyecare's reader.

Tolerances. Activations are f32 on both sides and the weights are the same values (for 16-bit
checkpoints the reference runs the same rounded weights in f32), so the two differ only by summation
order: ~1e-7 relative per op, amplified through the layers by LayerNorm and attention. Errors are
measured relative to each tensor's largest magnitude:
  - float32 weights: hidden states and tokens within 5e-6 (tiny configs) / 1e-5 (so400m widths, sums
    of 1152-4304 terms); measured errors are about 1e-6 in both;
  - bfloat16 and float16 weights: the same bounds, since the reference uses the rounded weights
    (measured errors are the same, about 1e-6).
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import SiglipVisionConfig, SiglipVisionModel

import eyecare
from eyecare.core import tensor
from eyecare.vision import VisionTower, check_config, view_kinds

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOL = {"tiny": 5e-6, "so400m": 1e-5}


def randomize(module, gen):
    """Random values for every parameter (HF's init leaves norms at 1 and biases at 0, which would
    hide mistakes in how they are applied)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "position_embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))


def make_checkpoint(path, vision, connector, d_llm, dtype, tile_pool=2, seed=0, drop=()):
    """Writes config.json + model.safetensors (the names of docs/architecture.md 2) and returns the torch reference
    modules, holding the very values stored (rounded to dtype)."""
    gen = torch.Generator().manual_seed(seed)
    model = SiglipVisionModel(SiglipVisionConfig(**vision)).eval()
    n_in = (1 + len(connector["groups"])) * vision["hidden_size"]
    projector = torch.nn.Sequential(torch.nn.Linear(n_in, d_llm), torch.nn.GELU(), torch.nn.Linear(d_llm, d_llm))
    randomize(model, gen)
    randomize(projector, gen)
    tensors = {}
    for module, prefix in ((model, "vision_tower.vision_model."), (projector, "connector.projector.")):
        with torch.no_grad():
            for name, value in module.state_dict().items():
                stored = value.to(TORCH_DTYPES[dtype]).contiguous()
                value.copy_(stored.float())
                # transformers 5 names SiglipVisionModel's parameters without "vision_model."
                name = name[len("vision_model."):] if name.startswith("vision_model.") else name
                if prefix + name not in drop:
                    tensors[prefix + name] = stored
    save_file(tensors, str(path / "model.safetensors"))
    config = {
        "model_type": "eyecaregpt",
        "vision_config": dict(vision, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        "connector": dict(connector, projector="mlp2x_gelu"),
        "adaptive_resolution": {"tile_size": vision["image_size"], "grid_pinpoints": [[vision["image_size"]] * 2],
                                "tile_pool": tile_pool, "pad_color": [0, 0, 0]},
        "text_config": {"hidden_size": d_llm},
    }
    (path / "config.json").write_text(json.dumps(config))
    return model, projector, config


def reference(model, projector, pixels, grids, connector, tile_pool):
    """Hidden states h[0..L] and the image tokens, by transformers + torch (docs/architecture.md 1.2-1.3)."""
    with torch.no_grad():
        hs = model(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
        parts = [hs[connector["feature_layer"]]] + [torch.stack(hs[a:b]).mean(0) for a, b in connector["groups"]]
        y = projector(torch.cat(parts, dim=-1))  # [views, T, d_llm]
        n, T, d = y.shape
        G = math.isqrt(T)
        side = -(-G // tile_pool)
        tokens, v = [], 0
        for rows, cols in grids:
            tokens.append(y[v])
            v += 1
            for _ in range(rows * cols):
                grid = y[v].T.reshape(1, d, G, G)
                tokens.append(F.adaptive_avg_pool2d(grid, side).reshape(d, side * side).T)
                v += 1
        return [h.numpy() for h in hs], torch.cat(tokens).numpy()


def assert_close(got, want, tol, what):
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max()) / scale
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert err <= tol, f"{what}: max error {err:.2e} of the largest magnitude (tolerance {tol:.0e})"


def pixels_for(n, size, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


# Head dims 12 and 18 (not a multiple of 4); overlapping groups; feature layer -2 (layer 4 unused)
# and -1; pooling 3 -> 2 (overlapping windows) and 4 -> 2; 60 px in patches of 14 leaves 4 pixels
# the convolution ignores, as 384 / 14 does in so400m.
TINY = {
    "a": (dict(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, image_size=42, patch_size=14),
          dict(feature_layer=-2, groups=[[0, 2], [2, 4]]), 2),
    "b": (dict(hidden_size=36, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2, image_size=60, patch_size=14),
          dict(feature_layer=-1, groups=[[0, 2], [1, 4]]), 3),
}
GRIDS = [(1, 2), (1, 1)]  # 3 + 2 views; with max_views 2 the passes cross image boundaries


@pytest.mark.parametrize("name,dtype", [("a", "float32"), ("a", "bfloat16"), ("a", "float16"), ("b", "float32"), ("b", "bfloat16")])
def test_tiny_tower_matches_transformers(tmp_path, name, dtype):
    vision, connector, tile_pool = TINY[name]
    model, projector, _ = make_checkpoint(tmp_path, vision, connector, 40, dtype, tile_pool)
    pixels = pixels_for(5, vision["image_size"])
    want_hidden, want_tokens = reference(model, projector, pixels, GRIDS, connector, tile_pool)

    with VisionTower.from_checkpoint(tmp_path, all_layers=True, max_views=2) as tower:
        tokens = tower.encode(pixels, GRIDS)
        tokens_again, hidden = tower.encode(pixels, GRIDS, return_hidden_states=True)
        assert sum(tower.token_counts(GRIDS)) == len(tokens)
        info = tower.info
    L = vision["num_hidden_layers"]
    assert info["layers_available"] == L and hidden.shape[0] == L + 1
    for i in range(L + 1):
        assert_close(hidden[i], want_hidden[i], TOL["tiny"], f"h[{i}]")
    assert_close(tokens, want_tokens, TOL["tiny"], "tokens")
    assert_close(tokens_again, want_tokens, TOL["tiny"], "tokens of the hidden-state run")


def test_unused_last_layer_is_neither_loaded_nor_computed(tmp_path):
    vision, connector, tile_pool = TINY["a"]  # feature layer -2, groups up to h[3]: layer 4 is unused
    model, projector, config = make_checkpoint(tmp_path, vision, connector, 24, "float32", tile_pool)
    assert check_config(config)["layers_run"] == 3
    pixels = pixels_for(3, vision["image_size"])
    _, want = reference(model, projector, pixels, [(1, 2)], connector, tile_pool)
    with VisionTower.from_checkpoint(tmp_path) as tower:
        assert tower.info["layers_run"] == 3 and tower.info["layers_available"] == 3
        assert_close(tower.encode(pixels, [(1, 2)]), want, TOL["tiny"], "tokens")
        assert tower.hidden_states(pixels).shape == (4, 3, 9, 48)  # h[0..3]: the layers it holds

    # A checkpoint without the unused layer is complete.
    drop = {f"vision_tower.vision_model.encoder.layers.3.{n}" for n in ("layer_norm1.weight", "layer_norm1.bias",
            "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
            "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
            "layer_norm2.weight", "layer_norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    make_checkpoint(tmp_path, vision, connector, 24, "float32", tile_pool, drop=drop)
    with VisionTower.from_checkpoint(tmp_path, all_layers=True) as tower:
        assert tower.info["layers_available"] == 3
        assert_close(tower.encode(pixels, [(1, 2)]), want, TOL["tiny"], "tokens without layer 3")


def test_so400m_widths_two_layers(tmp_path):
    # The real so400m shapes (1152 wide, 16 heads of 72, MLP 4304, 384 px, 27 x 27 tokens) with 2
    # layers, bf16 as published; one view, run as a tile so the 27 -> 14 pooling is checked too.
    vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2, num_attention_heads=16, image_size=384,
                  patch_size=14)
    connector = dict(feature_layer=-2, groups=[[0, 1], [1, 3]])
    model, projector, _ = make_checkpoint(tmp_path, vision, connector, 256, "bfloat16")
    pixels = pixels_for(2, 384)
    want_hidden, want_tokens = reference(model, projector, pixels, [(1, 1)], connector, 2)
    with VisionTower.from_checkpoint(tmp_path, all_layers=True) as tower:
        # View 1 of the reference (a tile) on its own.
        tokens, hidden = tower.encode_views(pixels[1:], [True], return_hidden_states=True)
    assert tokens.shape == (196, 256) and hidden.shape == (3, 1, 729, 1152)
    for i in range(3):
        assert_close(hidden[i], want_hidden[i][1:], TOL["so400m"], f"h[{i}]")
    assert_close(tokens, want_tokens[729:], TOL["so400m"], "tile tokens")


# -- errors ---------------------------------------------------------------------------------------

def tiny_weights(vision, connector, d_llm=16):
    """Random device weights under the checkpoint names, f32."""
    rng = np.random.default_rng(0)
    D, Fi, P = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    T = (vision["image_size"] // P) ** 2
    shapes = {"embeddings.patch_embedding.weight": (D, 3, P, P), "embeddings.patch_embedding.bias": (D,),
              "embeddings.position_embedding.weight": (T, D)}
    for i in range(vision["num_hidden_layers"]):
        for n, s in (("layer_norm1.weight", (D,)), ("layer_norm1.bias", (D,)), ("layer_norm2.weight", (D,)),
                     ("layer_norm2.bias", (D,)), ("mlp.fc1.weight", (Fi, D)), ("mlp.fc1.bias", (Fi,)),
                     ("mlp.fc2.weight", (D, Fi)), ("mlp.fc2.bias", (D,))):
            shapes[f"encoder.layers.{i}.{n}"] = s
        for p in "qkv":
            shapes[f"encoder.layers.{i}.self_attn.{p}_proj.weight"] = (D, D)
            shapes[f"encoder.layers.{i}.self_attn.{p}_proj.bias"] = (D,)
        shapes[f"encoder.layers.{i}.self_attn.out_proj.weight"] = (D, D)
        shapes[f"encoder.layers.{i}.self_attn.out_proj.bias"] = (D,)
    weights = {"vision_tower.vision_model." + n: rng.standard_normal(s).astype(np.float32) * 0.1 for n, s in shapes.items()}
    n_in = (1 + len(connector["groups"])) * D
    weights.update({"connector.projector.0.weight": rng.standard_normal((d_llm, n_in)).astype(np.float32),
                    "connector.projector.0.bias": np.zeros(d_llm, np.float32),
                    "connector.projector.2.weight": rng.standard_normal((d_llm, d_llm)).astype(np.float32),
                    "connector.projector.2.bias": np.zeros(d_llm, np.float32)})
    return weights


def config_of(vision, connector, **extra):
    return {"vision_config": dict(vision), "connector": dict(connector), **extra}


def test_every_bad_weight_is_reported_at_once():
    vision, connector, _ = TINY["a"]
    arrays = tiny_weights(vision, connector)
    del arrays["vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"]
    del arrays["vision_tower.vision_model.encoder.layers.2.mlp.fc1.weight"]
    del arrays["vision_tower.vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    del arrays["connector.projector.2.bias"]
    arrays["vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"] = np.zeros((48, 95), np.float32)
    arrays["vision_tower.vision_model.embeddings.position_embedding.weight"] = np.zeros((8, 48), np.float32)
    weights = {n: tensor(a) for n, a in arrays.items()}
    weights["vision_tower.vision_model.encoder.layers.0.layer_norm1.bias"] = tensor(np.zeros(48), "bfloat16")
    with pytest.raises(eyecare.FormatError) as e:
        VisionTower(config_of(vision, connector), weights)
    msg = str(e.value)
    assert "7 problems" in msg
    assert "missing: vision_tower.vision_model.encoder.layers.{0, 2}.mlp.fc1.weight [96, 48]" in msg
    assert "missing: vision_tower.vision_model.encoder.layers.{1}.self_attn.k_proj.bias [48]" in msg
    assert "missing: connector.projector.2.bias [16]" in msg
    assert "encoder.layers.1.mlp.fc2.weight: shape [48, 95], expected [48, 96]" in msg
    assert "position_embedding.weight: shape [8, 48], expected [9, 48]" in msg
    assert "layer 0: a layer norm's weight and bias have different dtypes" in msg


def test_a_wrong_prefix_reports_the_names_it_looked_for():
    vision, connector, _ = TINY["a"]
    weights = {n.replace("vision_tower.", "model.vision_tower."): tensor(a) for n, a in tiny_weights(vision, connector).items()}
    with pytest.raises(ValueError, match=r"missing: vision_tower\.vision_model\.encoder\.layers\.\{0-2\}\.mlp\.fc2\.bias") as e:
        VisionTower(config_of(vision, connector), weights)
    assert "no weight name starts with 'vision_tower.vision_model.'" in str(e.value)
    assert "'model.vision_tower.vision_model.embeddings.patch_embedding.bias'" in str(e.value)
    tower = VisionTower(config_of(vision, connector), weights, vision_prefix="model.vision_tower.vision_model.")
    assert tower.d_llm == 16  # taken from the projector when the config has no text_config
    tower.close()


@pytest.mark.parametrize("change,match", [
    ({"connector": {"feature_layer": -6}}, "feature_layer -6 is outside"),
    ({"connector": {"feature_layer": 5}}, "feature_layer 5 is outside"),
    ({"connector": {"groups": [[0, 13], [13, 26]]}}, r"groups\[0\] = \[0, 13\]"),
    ({"connector": {"groups": [[2, 2]]}}, r"groups\[0\] = \[2, 2\] must be .* 0 <= start < end <= 5"),
    ({"connector": {"groups": [[0, "x"]]}}, r"groups\[0\].*not a \[start, end\] pair"),
    ({"connector": {"projector": "linear"}}, "projector 'linear' is not supported"),
    ({"vision_config": {"hidden_act": "quick_gelu"}}, "hidden_act 'quick_gelu' is not supported"),
    ({"vision_config": {"num_attention_heads": 5}}, "not a multiple of num_attention_heads 5"),
    ({"vision_config": {"image_size": 10}}, "image_size 10 is smaller than patch_size 14"),
    ({"adaptive_resolution": {"tile_pool": 0}}, "tile_pool must be at least 1"),
    ({"adaptive_resolution": {"tile_size": 384}}, "tile_size 384 differs from vision_config.image_size 42"),
])
def test_bad_configs_are_clear_errors(change, match):
    vision, connector, _ = TINY["a"]
    config = config_of(vision, connector)
    for part, fields in change.items():
        config[part] = {**config.get(part, {}), **fields}
    with pytest.raises(ValueError, match=match):
        check_config(config)
    with pytest.raises(ValueError, match=match):
        VisionTower(config, {})


def test_bad_inputs_and_freed_weights_raise():
    vision, connector, _ = TINY["a"]
    weights = {n: tensor(a) for n, a in tiny_weights(vision, connector).items()}
    tower = VisionTower(config_of(vision, connector), weights, max_views=2)
    pixels = pixels_for(3, 42)
    with pytest.raises(ValueError, match=r"pixel_values must be \[n_views, 3, 42, 42\]"):
        tower.encode(pixels_for(3, 28), [(1, 2)])
    with pytest.raises(ValueError, match="describe 2 views"):
        tower.encode(pixels, [(1, 1)])
    with pytest.raises(ValueError, match="not a \\(rows, cols\\) pair"):
        tower.encode(pixels, [3])
    assert view_kinds([(1, 2), (0, 0)]) == b"\x00\x01\x01\x00"
    assert tower.encode(pixels, [(1, 2)]).shape == (9 + 2 * 4, 16)
    weights["vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight"].free()
    with pytest.raises(ValueError, match="encoder.layers.1.mlp.fc1.weight' has been freed"):
        tower.encode(pixels, [(1, 2)])
    tower.close()
    with pytest.raises(ValueError, match="closed"):
        tower.encode(pixels, [(1, 2)])
    with pytest.raises(TypeError, match="must be a live eyecare Tensor"):
        VisionTower(config_of(vision, connector), {"vision_tower.vision_model.embeddings.patch_embedding.bias": np.zeros(48)})


def test_views_share_one_pass_and_the_gil_is_released():
    from gil import ran_during

    vision = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=2, num_attention_heads=3, image_size=224,
                  patch_size=14)
    connector = dict(feature_layer=-1, groups=[[0, 2], [1, 3]])
    weights = {n: tensor(a) for n, a in tiny_weights(vision, connector).items()}
    tower = VisionTower(config_of(vision, connector), weights, max_views=3)
    pixels = pixels_for(3, 224)
    tower.encode(pixels[:1], [(0, 0)])
    one = tower.info["last_dispatches"]
    # 3 embedding ops, 10 a layer, 4 running-mean adds, 3 concat copies, 3 projector ops
    assert one == 3 + 2 * 10 + 4 + 3 + 3
    # Another Python thread runs while the three views' pass is on the device: only possible with the GIL released.
    assert ran_during(lambda: tower.encode(pixels, [(1, 2)])), "the encode call held the GIL"
    assert tower.info["last_dispatches"] == one + 1  # three views, one batch; + the tiles' pooling
    tower.close()


def test_processor_output_goes_straight_in(tmp_path):
    from eyecare.processor import EyecareProcessor

    vision, connector, tile_pool = TINY["a"]
    model, projector, config = make_checkpoint(tmp_path, vision, connector, 24, "bfloat16", tile_pool)
    config["adaptive_resolution"]["grid_pinpoints"] = [[42, 84], [84, 42], [84, 84]]
    (tmp_path / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (50, 100, 3), dtype=np.uint8), rng.integers(0, 256, (90, 80, 3), dtype=np.uint8)]
    inputs = EyecareProcessor.from_pretrained(tmp_path)(images)
    with VisionTower.from_checkpoint(tmp_path) as tower:
        tokens = tower.encode(inputs["pixel_values"], inputs["image_grids"])
        assert tower.token_counts(inputs["image_grids"]) == inputs["num_image_tokens"]
    assert len(tokens) == sum(inputs["num_image_tokens"])
    _, want = reference(model, projector, inputs["pixel_values"], inputs["image_grids"], connector, tile_pool)
    assert_close(tokens, want, TOL["tiny"], "tokens")


@pytest.mark.parametrize("image_size,patch_size", [(65536, 1), (60000, 2), (2**31 - 1, 14), (384, 2**20)])
def test_hostile_config_sizes_raise_instead_of_wrapping(image_size, patch_size):
    # A config.json is untrusted: token counts computed from huge sides must not wrap to small values.
    from eyecare.vision import check_config

    cfg = {"vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=image_size, patch_size=patch_size),
           "connector": {"groups": [[0, 1], [1, 2]]}, "adaptive_resolution": {"tile_size": image_size},
           "text_config": {"hidden_size": 8}}
    with pytest.raises(ValueError, match="too large|out of range|smaller than"):
        check_config(cfg)
