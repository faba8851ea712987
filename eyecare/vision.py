"""The vision side of EyecareGPT on the device: the SigLIP vision tower, the Layer-wise Dense Connector
(LDC), the ``mlp2x_gelu`` projector and the pooling of tile tokens (docs/architecture.md, 1.2-1.3).

The computation is in C (``csrc/model/vision.c``): every pass over a chunk of views (patch embedding, the
encoder layers, the LDC's running means, projector, pooling) is recorded into one command buffer and
submitted once. Only the layers the connector reads are computed: with ``feature_layer`` -2 and groups
ending at 26, so400m's 27th layer never runs.

Example::

    from eyecare.vision import VisionTower

    tower = VisionTower.from_checkpoint("checkpoints/eyecaregpt-3.8b")
    tokens = tower.encode(pixel_values, grids)  # float32 [n_tokens, d_llm]

``pixel_values`` is float32 ``[n_views, 3, S, S]`` (the processor's output) and ``grids`` the tile grid
``(rows, cols)`` of each image; image i contributes ``1 + rows * cols`` views, the global view first.
Its tokens are the global view's ``(S/14)^2`` tokens, then each tile's pooled ``ceil(G/tile_pool)^2``
tokens in raster order.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Mapping

import numpy as np

from . import _core

VISION_PREFIX = "vision_tower.vision_model."
CONNECTOR_PREFIX = "connector."

#: Hugging Face ``SiglipVisionConfig`` defaults, for fields a config.json leaves out.
SIGLIP_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
#: The published models' connector (docs/architecture.md, 1.2) (LLaVA's feature layer, the Dense Connector's groups).
CONNECTOR_DEFAULTS = {"feature_layer": -2, "groups": [[0, 13], [13, 26]], "projector": "mlp2x_gelu"}
TILE_POOL_DEFAULT = 2

_VisionTower = _core.vision_tower_type()


def vision_settings(config: Mapping) -> dict:
    """The flat settings the C tower takes, from a checkpoint's config.json (as a dict): its
    ``vision_config``, ``connector``, ``adaptive_resolution`` and ``text_config.hidden_size`` (the
    projector's output width; taken from the projector's weights when absent). Values are checked by
    the tower itself, which raises ValueError naming the field."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict (config.json), not {type(config).__name__}")
    vision = config.get("vision_config")
    if not isinstance(vision, Mapping):
        raise ValueError("config has no 'vision_config' object (the Hugging Face SigLIP vision config)")
    connector = config.get("connector") or {}
    adaptive = config.get("adaptive_resolution") or {}
    text = config.get("text_config") or {}
    for name, part in (("connector", connector), ("adaptive_resolution", adaptive), ("text_config", text)):
        if not isinstance(part, Mapping):
            raise ValueError(f"config '{name}' must be an object")
    settings = {key: vision.get(key, default) for key, default in SIGLIP_DEFAULTS.items()}
    settings.update({key: connector.get(key, default) for key, default in CONNECTOR_DEFAULTS.items()})
    settings["tile_pool"] = adaptive.get("tile_pool", TILE_POOL_DEFAULT)
    settings["d_llm"] = text.get("hidden_size")
    tile_size = adaptive.get("tile_size", settings["image_size"])
    if tile_size != settings["image_size"]:
        raise ValueError(f"adaptive_resolution.tile_size {tile_size!r} differs from vision_config.image_size "
                         f"{settings['image_size']!r}: every view goes through the tower at its own resolution")
    return settings


def check_config(config: Mapping) -> dict:
    """Validates the vision part of a config.json and returns the sizes it implies: head_dim, grid,
    tokens (per global view), pooled_side, pooled_tokens (per tile), feature_index, layers_run (the
    encoder layers the connector needs)."""
    return _core.vision_check_config(vision_settings(config))


def view_kinds(grids: Iterable, n_views: int | None = None) -> bytes:
    """One flag per view, 1 for a tile: each image is its global view followed by rows * cols tiles."""
    flags = bytearray()
    for i, grid in enumerate(grids):
        try:
            rows, cols = grid
        except (TypeError, ValueError):
            raise ValueError(f"grids[{i}] = {grid!r} is not a (rows, cols) pair") from None
        if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (rows, cols)) or rows < 0 or cols < 0:
            raise ValueError(f"grids[{i}] = {grid!r}: rows and cols must be non-negative integers")
        flags.append(0)
        flags.extend(b"\x01" * int(rows * cols))
    if n_views is not None and len(flags) != n_views:
        raise ValueError(f"the grids describe {len(flags)} views (1 + rows * cols per image) but pixel_values has {n_views}")
    return bytes(flags)


def _layer_of(name: str, prefix: str) -> int | None:
    m = re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


class VisionTower:
    """SigLIP + LDC + projector + tile pooling on the device.

    ``config`` is the checkpoint's config.json as a dict, ``weights`` maps checkpoint names to device
    tensors (``eyecare.Tensor``, any of float32, float16, bfloat16): ``vision_prefix`` + the
    SiglipVisionModel names below ``vision_model.`` and ``connector_prefix`` + ``projector.{0,2}.*``.
    Every missing, misshapen or mistyped weight is reported in one :class:`eyecare.FormatError`.
    Encoder layers past those the connector needs may be left out; given, they serve
    :meth:`hidden_states`. The tower keeps the weight tensors alive (freeing one makes the next call
    fail cleanly). ``max_views`` bounds the views per pass (the scratch is sized for it); the default
    fits a quarter of the free device memory, at most 16.
    """

    def __init__(self, config: Mapping, weights: Mapping, *, vision_prefix: str = VISION_PREFIX,
                 connector_prefix: str = CONNECTOR_PREFIX, max_views: int | None = None):
        self.settings = vision_settings(config)
        if max_views is not None and (not isinstance(max_views, int) or max_views < 1):
            raise ValueError(f"max_views must be a positive integer, not {max_views!r}")
        try:
            self._tower = _VisionTower(self.settings, weights, vision_prefix, connector_prefix, max_views or 0)
        except _core.FormatError as e:
            if any(str(name).startswith(vision_prefix) for name in weights):
                raise
            sample = sorted(str(name) for name in weights if not str(name).startswith(connector_prefix))[:3]
            seen = f"names given include {', '.join(map(repr, sample))}" if sample else "no other names were given"
            raise _core.FormatError(f"{e}\n(no weight name starts with {vision_prefix!r}; {seen}: is vision_prefix "
                                    f"right?)") from None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, all_layers: bool = False, max_views: int | None = None,
                        vision_prefix: str = VISION_PREFIX, connector_prefix: str = CONNECTOR_PREFIX,
                        quantize: str | None = None) -> "VisionTower":
        """Loads the tower from a checkpoint directory (config.json + safetensors, docs/architecture.md, 2). Only the
        weights the connector uses go to the device, in their stored dtype; ``all_layers`` also loads the
        encoder layers past them (for :meth:`hidden_states`). quantize: 'int8' or 'int4' quantizes the
        encoder's linear layers while loading; a checkpoint stored with them quantized loads them packed."""
        from .checkpoint import siglip_tensors
        from .quantize import Quantization, load_weight, plan
        from .safetensors import open_safetensors

        path = os.fspath(path)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        sizes = check_config(config)
        limit = vision_settings(config)["num_hidden_layers"] if all_layers else sizes["layers_run"]
        stored = Quantization.from_config(config)
        quant = plan(stored, quantize, vision=quantize is not None)
        shapes = {}
        if isinstance(config.get("vision_config"), Mapping):
            shapes = siglip_tensors({"num_channels": 3, **config["vision_config"]})
            shapes = {vision_prefix + n[len(VISION_PREFIX + "vision_model."):]: s for n, s in shapes.items()}
        weights = {}
        with open_safetensors(path) as ckpt:
            for name in ckpt.names():
                if stored is not None and name.endswith((".qweight", ".scales")):
                    if name.endswith(".scales"):
                        continue
                    name = name[:-len(".qweight")] + ".weight"   # read packed by load_weight
                layer = _layer_of(name, vision_prefix)
                wanted = (name.startswith(vision_prefix + "embeddings.") or name.startswith(connector_prefix + "projector.")
                          or (layer is not None and layer < limit))
                if wanted:
                    if name not in shapes and name not in ckpt:
                        raise _core.FormatError(f"{path}: {name[:-len('.weight')]}.qweight is no weight of the vision tower")
                    shape = shapes[name] if name in shapes else tuple(ckpt.info(name)[1])
                    weights[name] = load_weight(ckpt, name, shape, stored, quant)
        return cls(config, weights, vision_prefix=vision_prefix, connector_prefix=connector_prefix, max_views=max_views)

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def info(self) -> dict:
        """Sizes: hidden_size, tokens (per global view), pooled_tokens (per tile), d_llm, layers_run,
        layers_available, max_views, last_device_ms and last_dispatches (of the last pass's batch) ..."""
        return self._tower.info

    @property
    def d_llm(self) -> int:
        return self.info["d_llm"]

    def token_counts(self, grids: Iterable) -> list[int]:
        """Tokens per image: the global view's, plus rows * cols pooled tiles'."""
        info = self.info
        counts = []
        for i, grid in enumerate(grids):
            tiles = view_kinds([grid]).count(1)
            counts.append(info["tokens"] + tiles * info["pooled_tokens"])
        return counts

    # -- running ----------------------------------------------------------------------------------

    def encode(self, pixel_values, grids: Iterable, *, return_hidden_states: bool = False):
        """Image tokens for the LLM: float32 ``[n_tokens, d_llm]``, image after image (global view,
        then its tiles pooled, in raster order). With ``return_hidden_states`` also every hidden state
        the tower computed, ``[depth + 1, n_views, T, hidden]`` (h[0] = embeddings; depth =
        ``info['layers_available']``, all of which then run)."""
        pixels = self._pixels(pixel_values)
        return self._tower.run(pixels, view_kinds(grids, pixels.shape[0]), return_hidden_states)

    def encode_views(self, pixel_values, is_tile, *, return_hidden_states: bool = False):
        """Like :meth:`encode` with the kind of each view given directly: ``is_tile[i]`` true pools view
        i as a tile, false keeps all its tokens (a global view). For callers that batch views of
        several requests themselves."""
        pixels = self._pixels(pixel_values)
        flags = bytes(1 if t else 0 for t in is_tile)
        if len(flags) != pixels.shape[0]:
            raise ValueError(f"is_tile has {len(flags)} flags for {pixels.shape[0]} views")
        return self._tower.run(pixels, flags, return_hidden_states)

    def hidden_states(self, pixel_values) -> np.ndarray:
        """Every hidden state h[0..depth] of each view, ``[depth + 1, n_views, T, hidden]``, as Hugging
        Face's ``output_hidden_states`` (before post_layernorm)."""
        pixels = self._pixels(pixel_values)
        return self._tower.run(pixels, bytes(pixels.shape[0]), True)[1]

    def _pixels(self, pixel_values) -> np.ndarray:
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        s, c = self.settings["image_size"], self.settings["num_channels"]
        if pixels.ndim != 4 or pixels.shape[1:] != (c, s, s):
            raise ValueError(f"pixel_values must be [n_views, {c}, {s}, {s}], got shape {pixels.shape}")
        if pixels.shape[0] == 0:
            raise ValueError("pixel_values holds no views")
        return pixels

    def close(self) -> None:
        """Releases the tower's device memory (its scratch; the weights are released with their Tensors)."""
        self._tower.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self._tower.closed:
            return "<eyecare VisionTower (closed)>"
        i = self.info
        return (f"<eyecare VisionTower {i['num_hidden_layers']} layers x {i['hidden_size']} ({i['layers_run']} run), "
                f"{i['tokens']} tokens/view, d_llm {i['d_llm']}>")
