"""The EyecareGPT image processor: adaptive resolution (docs/architecture.md, 1.1), on the CPU, without a Vulkan device.

Each image becomes 1 + rows*cols views of float32 [3, tile, tile]:

* view 0, the global view: the whole image resized to tile x tile with PIL's bicubic filter, then rescaled by
  1/255 and normalized with mean 0.5 / std 0.5, exactly as transformers' SiglipImageProcessor does;
* then the tiles: the grid (rows, cols) is chosen from ``grid_pinpoints`` by LLaVA-NeXT's
  ``select_best_resolution``; the image is resized keeping its aspect ratio to fit that resolution, centered
  on ``pad_color`` and cut into tile x tile views in raster order (row by row), as transformers'
  LlavaNextImageProcessor does (``_resize_for_patching`` + ``_pad_for_patching`` + ``divide_to_patches``, which
  compute the same pixels as LLaVA-NeXT's ``resize_and_pad_image`` + ``divide_to_patches``).

Decoding, resizing and tiling run in C (eyecare._core: stb_image and a transcription of Pillow's resampler).

    processor = EyecareProcessor.from_pretrained("checkpoints/eyecaregpt-3.8b")
    inputs = processor(["fundus.jpg", pil_image, numpy_array])
    inputs["pixel_values"]      # float32 [sum of views, 3, 384, 384]
    inputs["image_grids"]       # [(rows, cols), ...] one per image
    inputs["num_image_tokens"]  # [729 + rows*cols*196, ...] one per image
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

import numpy as np

IMAGE_TOKEN = "<image>"
DEFAULT_TILE_SIZE = 384
# LLaVA-NeXT's anyres grids (1x2, 2x1, 2x2, 1x3, 3x1 tiles) scaled from its 336-pixel tiles to SigLIP's 384, as
# [height, width]: at most 4 tiles, so an image costs at most 729 + 4*196 = 1513 tokens with tile_pool 2.
DEFAULT_GRID_PINPOINTS = [[384, 768], [768, 384], [768, 768], [384, 1152], [1152, 384]]
DEFAULT_TILE_POOL = 2
# Black, as LLaVA-NeXT's resize_and_pad_image and transformers' LlavaNext _pad_for_patching pad the tiles (the
# mean-colour padding of LLaVA is expand2square, the square-padding mode of LLaVA-1.5, not anyres).
DEFAULT_PAD_COLOR = [0, 0, 0]
DEFAULT_ADAPTIVE_RESOLUTION = {"tile_size": DEFAULT_TILE_SIZE, "grid_pinpoints": DEFAULT_GRID_PINPOINTS,
                               "tile_pool": DEFAULT_TILE_POOL, "pad_color": DEFAULT_PAD_COLOR}
DEFAULT_PATCH_SIZE = 14
DEFAULT_MAX_PIXELS = 64_000_000
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def select_best_resolution(original_size: Sequence[int], possible_resolutions: Iterable[Sequence[int]]) -> tuple:
    """The resolution of possible_resolutions that fits an image of original_size best, as LLaVA-NeXT chooses it:
    the largest effective resolution min(w*s * h*s, w*h) with s = min(W/w, H/h) (downscaled sizes truncated to
    integers), then the least wasted area W*H - effective; the first of equals wins.

    Sizes are (height, width), transformers' convention (LLaVA-NeXT's own code passes (width, height) pairs)."""
    original_height, original_width = original_size
    best_fit = None
    max_effective = 0
    min_wasted = float("inf")
    for height, width in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        effective = min(int(original_width * scale) * int(original_height * scale), original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best_fit = effective, wasted, (height, width)
    return best_fit


class ImageInputs(dict):
    """What the processor returns (a dict, like transformers' BatchFeature; keys also read as attributes):

    pixel_values      float32 [total views, 3, tile, tile] (a torch tensor with return_tensors="pt")
    image_grids       [(rows, cols)] per image
    num_views         [1 + rows*cols] per image
    num_image_tokens  [tokens the LLM sees] per image
    image_sizes       [(height, width)] of each image as decoded
    """

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class EyecareProcessor:
    """Turns images into EyecareGPT's views and tells how many image tokens each one becomes.

    tile_size: side of each view (the vision tower's image_size). grid_pinpoints: candidate [height, width]
    resolutions for the tiles, multiples of tile_size. tile_pool: a tile's patch grid is pooled to
    ceil(grid / tile_pool) per side. pad_color: RGB 0..255 around the aspect-preserving resize. patch_size: the
    tower's patch (vision_config.patch_size). max_pixels: images with more pixels (width*height, as declared by
    the file) are refused before decoding, against decompression bombs.

    Accepted images: a path (str or os.PathLike) or the encoded bytes of a JPEG, PNG, BMP, GIF (first frame), TGA,
    PSD or HDR file; a NumPy array (H, W), (H, W, 1|3|4) or channels-first (1|3|4, H, W), uint8 (or other
    integers within 0..255), bool, or float in [0, 1] (rounded to uint8); a PIL image (converted to RGB).
    Grayscale is replicated to RGB and alpha is dropped, as PIL's convert("RGB") does."""

    model_input_names = ["pixel_values"]

    def __init__(self, tile_size: int = DEFAULT_TILE_SIZE, grid_pinpoints: Sequence[Sequence[int]] | None = None,
                 tile_pool: int = DEFAULT_TILE_POOL, pad_color: Sequence[int] = DEFAULT_PAD_COLOR,
                 patch_size: int = DEFAULT_PATCH_SIZE, image_token: str = IMAGE_TOKEN,
                 max_pixels: int = DEFAULT_MAX_PIXELS, image_mean: Sequence[float] = SIGLIP_MEAN,
                 image_std: Sequence[float] = SIGLIP_STD):
        self.tile_size = _positive_int(tile_size, "tile_size")
        if grid_pinpoints is None:
            grid_pinpoints = [[self.tile_size * h // DEFAULT_TILE_SIZE, self.tile_size * w // DEFAULT_TILE_SIZE]
                              for h, w in DEFAULT_GRID_PINPOINTS]
        self.grid_pinpoints = _check_pinpoints(grid_pinpoints, self.tile_size)
        self.tile_pool = _positive_int(tile_pool, "tile_pool")
        self.pad_color = _check_color(pad_color)
        self.patch_size = _positive_int(patch_size, "patch_size")
        if self.patch_size > self.tile_size:
            raise ValueError(f"patch_size {self.patch_size} is larger than tile_size {self.tile_size}")
        self.image_token = str(image_token)
        if isinstance(max_pixels, float) and max_pixels.is_integer():
            max_pixels = int(max_pixels)
        self.max_pixels = _positive_int(max_pixels, "max_pixels")
        self.image_mean = _three_floats(image_mean, "image_mean")
        self.image_std = _three_floats(image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise ValueError("image_std must not contain 0")

    # ---------------------------------------------------------------------------------------------
    # Construction from a checkpoint

    @classmethod
    def from_config(cls, config: dict, **overrides) -> "EyecareProcessor":
        """From an EyecareGPT config dict (its adaptive_resolution, vision_config.patch_size / image_size and
        image_token), from :meth:`to_dict`'s output, or from an adaptive_resolution dict alone. Keyword arguments
        override it."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, not {type(config).__name__}")
        adaptive = config.get("adaptive_resolution", config if "tile_size" in config else {})
        if not isinstance(adaptive, dict):
            raise ValueError("config: 'adaptive_resolution' must be an object")
        vision = config.get("vision_config") or {}
        kwargs: dict[str, Any] = {
            "tile_size": adaptive.get("tile_size", vision.get("image_size", DEFAULT_TILE_SIZE)),
            "grid_pinpoints": adaptive.get("grid_pinpoints"),
            "tile_pool": adaptive.get("tile_pool", DEFAULT_TILE_POOL),
            "pad_color": adaptive.get("pad_color", DEFAULT_PAD_COLOR),
            "patch_size": config.get("patch_size", vision.get("patch_size", DEFAULT_PATCH_SIZE)),
            "image_token": config.get("image_token", IMAGE_TOKEN),
            "max_pixels": adaptive.get("max_pixels", DEFAULT_MAX_PIXELS),
        }
        for key in ("image_mean", "image_std"):
            if key in adaptive:
                kwargs[key] = adaptive[key]
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "EyecareProcessor":
        """From a checkpoint directory's config.json (or the path of a config.json)."""
        path = os.fspath(path)
        config_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json (an EyecareGPT checkpoint directory has one)") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from None
        return cls.from_config(config, **overrides)

    def to_dict(self) -> dict:
        """The settings, in config.json's adaptive_resolution layout (plus the rest of the processor's)."""
        return {"adaptive_resolution": {"tile_size": self.tile_size, "grid_pinpoints": [list(p) for p in self.grid_pinpoints],
                                        "tile_pool": self.tile_pool, "pad_color": list(self.pad_color),
                                        "max_pixels": self.max_pixels, "image_mean": list(self.image_mean),
                                        "image_std": list(self.image_std)},
                "patch_size": self.patch_size, "image_token": self.image_token}

    def __repr__(self):
        return (f"EyecareProcessor(tile_size={self.tile_size}, grid_pinpoints={self.grid_pinpoints}, "
                f"tile_pool={self.tile_pool}, pad_color={list(self.pad_color)}, patch_size={self.patch_size}, "
                f"max_pixels={self.max_pixels})")

    # ---------------------------------------------------------------------------------------------
    # Layout arithmetic

    def grid_for_size(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of height x width."""
        best_h, best_w = select_best_resolution((height, width), self.grid_pinpoints)
        return best_h // self.tile_size, best_w // self.tile_size

    @property
    def patches_per_side(self) -> int:
        """Patch tokens per side of a view: tile_size // patch_size (27 for SigLIP so400m-patch14-384)."""
        return self.tile_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        return math.ceil(self.patches_per_side / self.tile_pool) ** 2

    def num_image_tokens(self, grid: Sequence[int]) -> int:
        """Tokens an image with this (rows, cols) grid becomes: all of the global view's patches, then each
        tile's patch grid pooled to ceil(patches / tile_pool) per side."""
        rows, cols = grid
        return self.patches_per_side ** 2 + rows * cols * self.tokens_per_tile

    # ---------------------------------------------------------------------------------------------
    # Images

    def load_image(self, image) -> np.ndarray:
        """Any accepted image as a C-contiguous uint8 array [height, width, 3]."""
        from . import _core

        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
            return _core.decode_image(image, self.max_pixels)
        pil_image = sys.modules.get("PIL.Image")  # an object can only be a PIL image if PIL was imported
        if pil_image is not None and isinstance(image, pil_image.Image):
            self._check_pixels(image.height, image.width)
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):
            rgb = _array_to_rgb(np.asarray(image))
            self._check_pixels(rgb.shape[0], rgb.shape[1])
        else:
            raise TypeError(f"unsupported image type {type(image).__name__}: give a path, bytes, a NumPy array "
                            "or a PIL image")
        return np.ascontiguousarray(rgb, dtype=np.uint8)

    def _check_pixels(self, height: int, width: int) -> None:
        if height * width > self.max_pixels:
            raise ValueError(f"image of {width}x{height} = {width * height} pixels is over the limit of "
                             f"{self.max_pixels} pixels (max_pixels)")

    def views(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The views float32 [1 + rows*cols, 3, tile, tile] of a uint8 [H, W, 3] image, and its (rows, cols)."""
        from . import _core

        grid = self.grid_for_size(rgb.shape[0], rgb.shape[1])
        pixels = _core.make_views(rgb, self.tile_size, grid, self.pad_color, self.image_mean, self.image_std)
        return pixels, grid

    def __call__(self, images, return_tensors: str | None = None) -> ImageInputs:
        """Processes one image or a list of images (see the class docstring for the accepted kinds).
        return_tensors: None or "np" for NumPy, "pt" for a torch tensor of pixel_values."""
        images = _as_list(images)
        all_views, grids, sizes = [], [], []
        for image in images:
            rgb = self.load_image(image)
            pixels, grid = self.views(rgb)
            all_views.append(pixels)
            grids.append(grid)
            sizes.append((int(rgb.shape[0]), int(rgb.shape[1])))
        t = self.tile_size
        pixel_values = np.concatenate(all_views) if all_views else np.zeros((0, 3, t, t), np.float32)
        if return_tensors == "pt":
            import torch

            pixel_values = torch.from_numpy(pixel_values)
        elif return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', not {return_tensors!r}")
        return ImageInputs(pixel_values=pixel_values, image_grids=grids,
                           num_views=[1 + r * c for r, c in grids],
                           num_image_tokens=[self.num_image_tokens(g) for g in grids], image_sizes=sizes)

    preprocess = __call__


# -------------------------------------------------------------------------------------------------
# Helpers


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:  # a batch [N, H, W, C]
        return list(images)
    return [images]


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) or (1|3|4, H, W) of uint8 / bool / integers in 0..255 / floats in [0, 1] -> uint8 RGB."""
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels first, as torch tensors and some HF pipelines hold images
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"an image array must be (H, W), (H, W, 1|3|4) or (1|3|4, H, W); got shape {a.shape}")
    a = _to_uint8(a)
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    return a[:, :, :3]


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        scaled = np.clip(np.nan_to_num(a.astype(np.float64), nan=0.0), 0.0, 1.0) * 255.0
        return np.rint(scaled).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"integer image values must lie in 0..255 (got {a.min()}..{a.max()}, dtype {a.dtype}); "
                             "scale 16-bit images to uint8 first")
        return a.astype(np.uint8)
    raise TypeError(f"unsupported image dtype {a.dtype}")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_pinpoints(pinpoints, tile: int) -> list[list[int]]:
    out = []
    for p in pinpoints:
        if len(p) != 2:
            raise ValueError(f"grid_pinpoints entries are [height, width] pairs, got {p!r}")
        h, w = (_positive_int(v, "a grid_pinpoints size") for v in p)
        if h % tile or w % tile:
            raise ValueError(f"grid_pinpoints entry {[h, w]} is not a multiple of tile_size {tile}")
        out.append([h, w])
    if not out:
        raise ValueError("grid_pinpoints is empty")
    return out


def _check_color(color) -> tuple[int, int, int]:
    c = tuple(color)
    if len(c) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in c):
        raise ValueError(f"pad_color must be three integers 0..255, got {color!r}")
    return tuple(int(v) for v in c)


def _three_floats(values, name: str) -> tuple[float, float, float]:
    v = tuple(float(x) for x in values)
    if len(v) != 3 or not all(math.isfinite(x) for x in v):
        raise ValueError(f"{name} must be three finite numbers, got {values!r}")
    return v
