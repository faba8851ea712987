"""The device memory an EyecareGPT model takes once loaded, computed from its checkpoint without loading it.

It counts what the C core allocates (csrc/model/decoder.c, csrc/model/vision.c), each allocation rounded
up to the allocator's 256-byte alignment (csrc/vk/vk_context.c), which is the figure the context's
``memory_in_use`` shows and a ``max_device_memory=`` budget has to hold:

- weights: the tensors the model uploads, in their stored dtype (the vision layers past those the
  connector reads and SigLIP's post_layernorm are not uploaded; Qwen2's q/k/v and gate/up are fused);
- the KV cache: per layer [max_batch, max_context, 2 x KV width] float32;
- the decoder's activations: one prefill chunk (256 tokens, or max_batch if larger) of float32 rows for
  each intermediate, plus the last rows and logits of each sequence;
- the vision scratch: max_views views' float32 intermediates (patches, the encoder's, the connector's
  means and concatenation, the projector's outputs and the pooled tiles), the f32 position table.

Generation allocates nothing more. Asking for every position's logits (``forward()`` without
``logits_to_keep=1``) grows the logits buffer to at most 64 MiB, which is not counted here.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

ALIGNMENT = 256          # csrc/vk/vk_context.c: every allocation starts on, and is rounded up to, this
PREFILL_CHUNK = 256      # LanguageModel's default prefill_chunk
DEFAULT_MAX_VIEWS = 16   # the most views per pass the loader picks on its own (fewer on a small device)
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


def _aligned(nbytes: int) -> int:
    return max(ALIGNMENT, -(-int(nbytes) // ALIGNMENT) * ALIGNMENT)


@dataclasses.dataclass
class DeviceMemory:
    """Bytes by use; ``total`` is their sum."""
    weights: int
    kv_cache: int
    activations: int
    vision_scratch: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.vision_scratch


def _language_weights(text, stored: dict, prefix: str) -> int:
    """Qwen2's q/k/v (weights, biases) and gate/up are uploaded concatenated, one tensor each per layer."""
    names = text.checkpoint_tensors()
    groups = []
    if text.model_type == "qwen2":
        for i in range(text.num_hidden_layers):
            p = f"model.layers.{i}."
            groups += [[f"{p}self_attn.{x}_proj.{kind}" for x in "qkv"] for kind in ("weight", "bias")]
            groups.append([f"{p}mlp.gate_proj.weight", f"{p}mlp.up_proj.weight"])
    fused = {n for g in groups for n in g}
    total = 0
    for group in [[n] for n in names if n not in fused] + groups:
        dtypes = {stored[prefix + n][0] for n in group}
        itemsize = _ITEMSIZE[dtypes.pop()] if len(dtypes) == 1 else 4  # mixed dtypes are widened to f32
        total += _aligned(sum(int(np.prod(stored[prefix + n][1])) for n in group) * itemsize)
    return total


def _vision_bytes(config: dict, stored: dict, max_views: int) -> tuple[int, int]:
    from .checkpoint import CONNECTOR_PREFIX, VISION_PREFIX, connector_tensors, siglip_tensors
    from .vision import check_config, vision_settings

    sizes = check_config(config)
    settings = vision_settings(config)
    D, I = settings["hidden_size"], settings["intermediate_size"]
    C, S, P = settings.get("num_channels", 3), settings["image_size"], settings["patch_size"]
    groups = config["connector"]["groups"]
    d_llm = config["text_config"]["hidden_size"]
    expected = siglip_tensors(config["vision_config"])
    expected.update(connector_tensors(D, d_llm, len(groups)))
    weights = 0
    for name in expected:
        marker = ".encoder.layers."
        if marker in name and int(name.split(marker, 1)[1].split(".", 1)[0]) >= sizes["layers_run"]:
            continue
        if ".post_layernorm." in name or not name.startswith((VISION_PREFIX, CONNECTOR_PREFIX)):
            continue
        dtype, shape = stored[name]
        weights += _aligned(int(np.prod(shape)) * _ITEMSIZE[dtype])
    T, rows = sizes["tokens"], max_views * sizes["tokens"]
    f32 = [T * D,                                   # the position table in f32
           max_views * C * S * S,                   # pixels
           rows * C * P * P,                        # patches
           *[rows * D] * 6,                         # h, xn, q, k, v, att
           rows * I,                                # mlp
           *[rows * D] * len(groups),               # the running means of the connector's groups
           rows * (1 + len(groups)) * D,            # their concatenation with the feature layer
           rows * d_llm, rows * d_llm]              # the projector's two linears
    if sizes["feature_index"] < sizes["layers_run"]:
        f32.append(rows * D)                        # a copy of the feature layer, which later layers overwrite
    if sizes["pooled_side"] < sizes["grid"]:
        f32.append(max_views * sizes["pooled_tokens"] * d_llm)
    scratch = sum(_aligned(4 * n) for n in f32) + _aligned(4 * max_views)  # + the int32 view lengths
    return weights, scratch


def device_memory(path: str | os.PathLike, *, max_context: int = 4096, max_batch: int = 1,
                  max_views: int = DEFAULT_MAX_VIEWS, prefill_chunk: int = PREFILL_CHUNK) -> DeviceMemory:
    """What EyecareGPT.from_pretrained(path, max_context=, max_batch=, max_views=) allocates on the device."""
    from .checkpoint import LANGUAGE_PREFIX, read_config
    from .config import DecoderConfig
    from .safetensors import open_safetensors

    for name, value in (("max_context", max_context), ("max_batch", max_batch), ("max_views", max_views)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    config = read_config(path)
    text = DecoderConfig.from_dict(config["text_config"])
    with open_safetensors(path) as ckpt:
        stored = {n: (ckpt.info(n)[0], tuple(ckpt.info(n)[1])) for n in ckpt.names()}
    missing = [n for n in text.checkpoint_tensors() if LANGUAGE_PREFIX + n not in stored]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} LLM tensors, e.g. {LANGUAGE_PREFIX}{missing[0]}")
    vision_weights, vision_scratch = _vision_bytes(config, stored, max_views)
    weights = vision_weights + _language_weights(text, stored, LANGUAGE_PREFIX)

    D, I, V = text.hidden_size, text.intermediate_size, text.vocab_size
    q = text.num_attention_heads * text.head_dim
    kv = text.num_key_value_heads * text.head_dim
    kv_cache = text.num_hidden_layers * _aligned(max_batch * max_context * 2 * kv * 4)
    R = max(prefill_chunk, max_batch)
    activations = sum(_aligned(4 * n) for n in (
        R * D, R * D,                 # x, h
        R * (q + 2 * kv), R * q,      # qkv, attention output
        R * 2 * I, R * I,             # gate_up, act
        max_batch * D, max_batch * V,  # last rows, logits
        R, R * text.rotary_dim,       # token ids (int32), the RoPE table
        max_batch))                   # sequence lengths (int32)
    return DeviceMemory(weights=weights, kv_cache=kv_cache, activations=activations, vision_scratch=vision_scratch)
