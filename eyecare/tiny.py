"""`eyecare make-tiny`: a small random-weight EyecareGPT checkpoint (either LLM family) with a working
byte-level BPE tokenizer and the family's chat template, for tests, demos and benchmarks. The same
code writes the real-shaped random checkpoints the benchmarks use (``sizes=`` overrides any width).

The answers of a random model are meaningless; what it is for is exercising every code path exactly
as a real checkpoint does.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from .checkpoint import LANGUAGE_PREFIX, connector_tensors, siglip_tensors, write_checkpoint
from .core import to_bfloat16

PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
                 "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
                 "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
                 "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
QWEN2_TEMPLATE = ("{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}"
                  "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
                  "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
                  "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
FAMILIES = {
    "phi3": {"specials": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
             "eos": ["<|end|>", "<|endoftext|>"], "template": PHI3_TEMPLATE},
    "qwen2": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "eos": ["<|im_end|>", "<|endoftext|>"], "template": QWEN2_TEMPLATE},
}
TINY_SIZES = {"vision_hidden": 32, "vision_intermediate": 64, "vision_layers": 4, "vision_heads": 2, "image_size": 28,
              "hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 384}
# The corpus the tiny tokenizer learns its merges from: enough ophthalmic words that prompts tokenize
# into plausible pieces; any other text still encodes, byte by byte.
CORPUS = """Describe the findings in this fundus photograph. The optic disc is pink with a sharp margin.
Diabetic retinopathy with microaneurysms, hemorrhages and hard exudates. Macular edema on OCT.
Is there glaucoma? Yes. No. The cup to disc ratio is enlarged. Drusen in age-related macular degeneration.
Fluorescein angiography shows leakage. ICGA shows polypoidal lesions. Slit lamp: the cornea is clear.
Ultrasound biomicroscopy of the anterior chamber angle. Retinal detachment, vein occlusion, choroidal
neovascularization, papilledema, cataract, keratitis, uveitis. The report: impression and recommendation."""


def build_tokenizer(family: str, vocab_size: int):
    """A byte-level BPE tokenizer (the kind Phi-3.5 and Qwen2 use) with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = FAMILIES[family]["specials"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS.split("\n") * 4, trainer)
    return tok


def _weights(shapes: dict, rng, dtype: str) -> dict:
    out = {}
    for name, shape in shapes.items():
        if re.search(r"(norm|layer_norm\d)\.weight$", name):  # LayerNorm/RMSNorm scales sit near 1
            values = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            values = 0.02 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            values = rng.standard_normal(shape) / math.sqrt(fan_in)
        values = values.astype(np.float32)
        out[name] = (to_bfloat16(values), "BF16") if dtype == "bfloat16" else values.astype(np.dtype(dtype))
    return out


def tiny_config(family: str, sizes: dict, vocab_size: int, eos_ids: list[int]) -> dict:
    s = sizes
    head_dim = s["hidden"] // s["heads"]
    vision = {"model_type": "siglip_vision_model", "hidden_size": s["vision_hidden"],
              "intermediate_size": s["vision_intermediate"], "num_hidden_layers": s["vision_layers"],
              "num_attention_heads": s["vision_heads"], "num_channels": 3, "image_size": s["image_size"],
              "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    common = {"vocab_size": vocab_size, "hidden_size": s["hidden"], "intermediate_size": s["intermediate"],
              "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "hidden_act": "silu",
              "eos_token_id": eos_ids[0], "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    if family == "phi3":
        rng = np.random.default_rng(1)
        text = {**common, "model_type": "phi3", "num_key_value_heads": s["heads"], "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                "rope_scaling": {"type": "longrope",
                                 "short_factor": [round(float(x), 4) for x in 1 + rng.random(head_dim // 2)],
                                 "long_factor": [round(float(x), 4) for x in 1 + 10 * rng.random(head_dim // 2)]},
                "pad_token_id": eos_ids[-1], "bos_token_id": None}
    else:
        text = {**common, "model_type": "qwen2", "num_key_value_heads": s["kv_heads"], "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0, "max_position_embeddings": 32768, "use_sliding_window": False,
                "sliding_window": None, "bos_token_id": None}
    layers = s["vision_layers"]
    half = max(1, layers // 2)
    connector = {"feature_layer": -2, "groups": [[0, half], [half, layers]], "projector": "mlp2x_gelu"}
    tile = s["image_size"]
    adaptive = {"tile_size": tile, "grid_pinpoints": [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile],
                                                      [tile, 3 * tile], [3 * tile, tile]],
                "tile_pool": 2, "pad_color": [127, 127, 127]}
    return {"model_type": "eyecaregpt", "architectures": ["EyecareGPT"], "vision_config": vision, "text_config": text,
            "connector": connector, "adaptive_resolution": adaptive, "image_token": "<image>"}


def make_tiny(out_dir, family: str = "phi3", *, dtype: str = "bfloat16", seed: int = 0, sizes: dict | None = None):
    """Writes a random EyecareGPT checkpoint to out_dir and returns its path."""
    if family not in FAMILIES:
        raise ValueError(f"family must be 'phi3' or 'qwen2', not {family!r}")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be bfloat16, float16 or float32, not {dtype!r}")
    s = {**TINY_SIZES, **(sizes or {})}
    tok = build_tokenizer(family, s["vocab"])
    eos_ids = [tok.token_to_id(t) for t in FAMILIES[family]["eos"]]
    config = tiny_config(family, s, tok.get_vocab_size(), eos_ids)
    from .config import DecoderConfig

    shapes = siglip_tensors(config["vision_config"])
    shapes.update(connector_tensors(s["vision_hidden"], s["hidden"], len(config["connector"]["groups"])))
    shapes.update({LANGUAGE_PREFIX + n: v for n, v in DecoderConfig.from_dict(config["text_config"]).checkpoint_tensors().items()})
    out = Path(out_dir)
    write_checkpoint(out, config, _weights(shapes, np.random.default_rng(seed), dtype))
    tok.save(str(out / "tokenizer.json"))
    specials = FAMILIES[family]["specials"]
    tokenizer_config = {"chat_template": FAMILIES[family]["template"], "eos_token": FAMILIES[family]["eos"][0],
                        "pad_token": "<|endoftext|>", "bos_token": None, "clean_up_tokenization_spaces": False,
                        "model_max_length": config["text_config"]["max_position_embeddings"],
                        "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "special": True}
                                                 for t in specials},
                        "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids, "do_sample": False}, indent=2))
    (out / "README.md").write_text(f"A random-weight EyecareGPT checkpoint ({family}, {dtype}) written by "
                                   "`eyecare make-tiny`. Its answers are meaningless: it exists to exercise the code.\n")
    return out
