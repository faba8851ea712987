"""The EyecareGPT checkpoint directory (docs/architecture.md, 2): its config.json, the tensor names of each part,
and writing one (single file, or shards with an index) for the converter and `eyecare make-tiny`.

    config.json           model_type "eyecaregpt", vision_config, text_config, connector,
                          adaptive_resolution, image_token
    model.safetensors     or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json (with the chat template), generation_config.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .safetensors import save_safetensors

VISION_PREFIX = "vision_tower."
CONNECTOR_PREFIX = "connector."
LANGUAGE_PREFIX = "language_model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")
CONNECTOR_DEFAULTS = {"feature_layer": -2, "groups": [[0, 13], [13, 26]], "projector": "mlp2x_gelu"}


def read_config(path: str | os.PathLike) -> dict:
    """config.json of an EyecareGPT checkpoint directory, checked for the parts every loader needs."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (an EyecareGPT checkpoint is a directory with config.json)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: no config.json, so this is not an EyecareGPT checkpoint directory")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path}: must hold a JSON object")
    if config.get("model_type") != "eyecaregpt":
        raise ValueError(f"{cfg_path}: model_type is {config.get('model_type')!r}, not 'eyecaregpt' "
                         "(convert a Hugging Face or LLaVA checkpoint with `eyecare convert`)")
    for key in ("vision_config", "text_config"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{cfg_path}: '{key}' is missing or not an object")
    return config


def siglip_tensors(vision_config: dict) -> dict[str, tuple]:
    """Names (under vision_tower.) and shapes of a SigLIP vision tower, as SiglipVisionModel saves them.
    post_layernorm is included: a faithful copy of the tower, though the connector reads the hidden
    states before it."""
    D = vision_config["hidden_size"]
    F = vision_config["intermediate_size"]
    P = vision_config["patch_size"]
    C = vision_config.get("num_channels", 3)
    n_pos = (vision_config["image_size"] // P) ** 2
    p = VISION_PREFIX + "vision_model."
    out = {p + "embeddings.patch_embedding.weight": (D, C, P, P), p + "embeddings.patch_embedding.bias": (D,),
           p + "embeddings.position_embedding.weight": (n_pos, D),
           p + "post_layernorm.weight": (D,), p + "post_layernorm.bias": (D,)}
    for i in range(vision_config["num_hidden_layers"]):
        q = p + f"encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            out[q + norm + ".weight"] = (D,)
            out[q + norm + ".bias"] = (D,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[q + f"self_attn.{proj}.weight"] = (D, D)
            out[q + f"self_attn.{proj}.bias"] = (D,)
        out[q + "mlp.fc1.weight"] = (F, D)
        out[q + "mlp.fc1.bias"] = (F,)
        out[q + "mlp.fc2.weight"] = (D, F)
        out[q + "mlp.fc2.bias"] = (D,)
    return out


def connector_tensors(vision_hidden: int, d_llm: int, n_groups: int = len(CONNECTOR_DEFAULTS["groups"])) -> dict[str, tuple]:
    """The mlp2x_gelu projector: Linear((1 + groups) * vision width -> d_llm), GELU, Linear(d_llm -> d_llm).
    Its input is the Layer-wise Dense Connector's concatenation: the feature layer's hidden state and the
    mean of each group of layers, each vision width wide (csrc/model/vision.c, width_in)."""
    p = CONNECTOR_PREFIX + "projector."
    return {p + "0.weight": (d_llm, (1 + n_groups) * vision_hidden), p + "0.bias": (d_llm,),
            p + "2.weight": (d_llm, d_llm), p + "2.bias": (d_llm,)}


def write_checkpoint(out_dir: str | os.PathLike, config: dict, tensors: dict, *, shard_bytes: int = 4 << 30,
                     progress=None, metadata: dict | None = None) -> list[Path]:
    """Writes config.json and the tensors (name -> array, (uint16 bits, "BF16"), or a LazyTensor made when
    written), in shards of at most shard_bytes (a single model.safetensors when it all fits). metadata: more
    entries for each file's __metadata__. Returns the files written."""
    metadata = {"format": "pt", **(metadata or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        value = tensors[name]
        nbytes = (value[0] if isinstance(value, tuple) else value).nbytes
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += nbytes
    shards.append(current)
    written = []
    if len(shards) == 1:
        save_safetensors(shards[0], out / "model.safetensors", metadata)
        written.append(out / "model.safetensors")
    else:
        weight_map = {}
        for k, shard in enumerate(shards, 1):
            name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            save_safetensors(shard, out / name, metadata)
            weight_map.update({t: name for t in shard})
            written.append(out / name)
            if progress:
                progress(k, len(shards))
        total = sum((v[0] if isinstance(v, tuple) else v).nbytes for v in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        written.append(out / "model.safetensors.index.json")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    written.append(out / "config.json")
    return written
