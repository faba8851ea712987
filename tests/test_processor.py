"""EyecareProcessor (eyecare/processor.py): the global view against transformers' SiglipImageProcessor, all views
against transformers' LlavaNextImageProcessor, grid selection against LLaVA-NeXT's select_best_resolution, tiling
layout, token counts, input kinds and configuration. CPU only: no Vulkan device is needed.

Tolerance against transformers: bit-exact (the resize transcribes Pillow 13's resampler). With older Pillow, which
always resamples horizontally first, images that lose more than twice as many rows as columns may differ by up to
2/255 before normalization (4/255 after it), so those comparisons allow that there."""
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import eyecare  # noqa: E402
from eyecare.processor import (DEFAULT_ADAPTIVE_RESOLUTION, DEFAULT_GRID_PINPOINTS, EyecareProcessor,  # noqa: E402
                               select_best_resolution)

PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13


def scene(h, w, seed=0):
    """A natural-looking RGB image: gradients, a ripple, a disc with sharp edges, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + 2 * y) / 9.0)], -1)
    img[(y - h * 0.5) ** 2 + (x - w * 0.45) ** 2 < (min(h, w) * 0.3) ** 2] = [200, 40, 30]
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def transformers_processors():
    """The PIL-backed SigLIP and LLaVA-NeXT image processors (transformers 5 names them ...Pil; in 4.x the plain
    classes are the PIL ones), configured as EyecareGPT's defaults."""
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        siglip = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
        llava = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
        s = siglip(size={"height": 384, "width": 384})
        l = llava(size={"height": 384, "width": 384}, crop_size={"height": 384, "width": 384}, do_center_crop=False,
                  image_mean=[0.5] * 3, image_std=[0.5] * 3, image_grid_pinpoints=DEFAULT_GRID_PINPOINTS)
    return s, l


def fit_size(h, w, target_h, target_w):
    """The aspect-preserving size inside a target, as transformers' get_patch_output_size computes it."""
    if target_w / w < target_h / h:
        return min(math.ceil(h * target_w / w), target_h), target_w
    return target_h, min(math.ceil(w * target_h / h), target_w)


def allowed_difference(h, w, targets):
    """0, or 4/255 in normalized units when an older Pillow resamples to some target in the other order."""
    if PILLOW_13:
        return 0.0
    return 4 / 255 if any(h - th > 0 and h - th > 2 * (w - tw) for th, tw in targets) else 0.0


SIZES = [(300, 400), (1000, 250), (384, 384), (10, 10), (1600, 1200), (500, 2100), (777, 513), (200, 900), (96, 2000)]


@pytest.fixture(scope="module")
def processor():
    return EyecareProcessor()


@pytest.mark.parametrize("size", SIZES)
def test_global_view_matches_siglip_image_processor(processor, size):
    siglip, _ = transformers_processors()
    img = scene(*size)
    ours = processor(img)["pixel_values"][0]
    want = siglip(Image.fromarray(img), return_tensors="np")["pixel_values"][0]
    assert ours.shape == want.shape == (3, 384, 384) and ours.dtype == np.float32
    assert np.abs(ours - want).max() <= allowed_difference(*size, [(384, 384)])


@pytest.mark.parametrize("size", SIZES)
def test_all_views_match_llava_next_image_processor(processor, size):
    """Global view, then the tiles of the aspect-preserving resize padded with black (transformers' LlavaNext
    _resize_for_patching + _pad_for_patching, the same pixels as LLaVA-NeXT's resize_and_pad_image)."""
    _, llava = transformers_processors()
    img = scene(*size, seed=1)
    ours = processor(img)
    want = llava(Image.fromarray(img), return_tensors="np")["pixel_values"][0]
    assert ours["pixel_values"].shape == want.shape
    rows, cols = ours["image_grids"][0]
    fit = fit_size(*size, rows * 384, cols * 384)
    assert np.abs(ours["pixel_values"] - want).max() <= allowed_difference(*size, [(384, 384), fit])


# ---------------------------------------------------------------------------------------------------------------
# Grid selection


def llava_next_select_best_resolution(original_size, possible_resolutions):
    """LLaVA-NeXT's select_best_resolution (llava/mm_utils.py), in its own (width, height) convention: the
    resolution with the largest effective resolution, the area of the image scaled to fit (sides truncated to
    integers, at most the original area), and among equals the least wasted area; the first of exact ties."""
    original_width, original_height = original_size
    best, best_effective, best_waste = None, 0, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        effective = min(int(original_width * scale) * int(original_height * scale), original_width * original_height)
        waste = width * height - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (width, height), effective, waste
    return best


GRID_TABLE = [  # (height, width) of the image -> (rows, cols) with the default pinpoints
    ((384, 384), (1, 2)),      # square and small: every grid holds it whole, 1x2 wastes least and comes first
    ((2000, 2000), (2, 2)),    # square and large: 2x2 keeps the most pixels
    ((500, 2000), (1, 3)),     # 4:1 wide
    ((2000, 500), (3, 1)),     # 1:4 tall
    ((10, 10), (1, 2)),        # tiny
    ((5000, 6000), (2, 2)),    # larger than every pinpoint
    ((700, 1000), (2, 2)),
    ((400, 900), (1, 3)),      # 1x3 keeps 864x384 of it, 1x2 only 768x341
]


@pytest.mark.parametrize("size,grid", GRID_TABLE)
def test_grid_table(processor, size, grid):
    assert processor.grid_for_size(*size) == grid


def test_select_best_resolution_matches_the_references():
    transformers_select = pytest.importorskip("transformers.image_processing_utils").select_best_resolution
    pinpoint_sets = [DEFAULT_GRID_PINPOINTS, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                     [[384, 384], [384, 768], [768, 384], [768, 768], [1152, 1152], [384, 1536], [1536, 384]]]
    sizes = [(384, 384), (1000, 1000), (500, 2000), (2000, 500), (10, 10), (9000, 7000), (1, 1), (3, 4000),
             (4000, 3), (768, 1152), (1152, 768)]
    rng = np.random.default_rng(0)
    sizes += [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(200)]
    for pinpoints in pinpoint_sets:
        as_wh = [(w, h) for h, w in pinpoints]
        for h, w in sizes:
            ours = select_best_resolution((h, w), pinpoints)
            assert tuple(transformers_select((h, w), pinpoints)) == ours
            ref_w, ref_h = llava_next_select_best_resolution((w, h), as_wh)
            assert (ref_h, ref_w) == ours, (h, w)


# ---------------------------------------------------------------------------------------------------------------
# Layout and token counts


def normalized(values, mean=0.5, std=0.5):
    x = (np.asarray(values, np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.float32(mean)) / np.float32(std)


def test_tiles_are_in_raster_order_with_padding():
    # 1200 x 1800 (h x w) -> 2x2 grid (768 x 768): fills the width, height ceil(1200 * 768 / 1800) = 512, so 128
    # rows of padding above and below; the image's four quadrants keep their colours.
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    img = np.zeros((1200, 1800, 3), np.uint8)
    for i, c in enumerate(colours):
        img[(i // 2) * 600:(i // 2 + 1) * 600, (i % 2) * 900:(i % 2 + 1) * 900] = c
    p = EyecareProcessor(pad_color=(20, 40, 60))
    out = p(img)
    assert out["image_grids"] == [(2, 2)] and out["num_views"] == [5]
    views = out["pixel_values"]
    assert views.shape == (5, 3, 384, 384)
    pad = normalized((20, 40, 60))[:, None, None]
    for i, c in enumerate(colours):
        tile = views[1 + i]
        image_rows = slice(128, 384) if i < 2 else slice(0, 256)  # the top tiles start with padding, the bottom end with it
        pad_rows = slice(0, 128) if i < 2 else slice(256, 384)
        np.testing.assert_array_equal(tile[:, pad_rows], np.broadcast_to(pad, (3, 128, 384)))
        # away from the quadrant borders, where bicubic blends colours, each tile holds its quadrant's colour
        inner = tile[:, image_rows][:, 8:-8, 8:-8]
        np.testing.assert_allclose(inner, np.broadcast_to(normalized(c)[:, None, None], inner.shape), atol=1e-6)


def test_token_counts(processor):
    assert (processor.patches_per_side, processor.tokens_per_tile) == (27, 196)
    for (h, w), (rows, cols) in GRID_TABLE:
        assert processor.num_image_tokens((rows, cols)) == 27 * 27 + rows * cols * 14 * 14
    assert EyecareProcessor(tile_pool=1).num_image_tokens((2, 2)) == 5 * 729
    assert EyecareProcessor(tile_pool=3).num_image_tokens((1, 2)) == 729 + 2 * 81
    assert EyecareProcessor(tile_size=28, patch_size=14, tile_pool=2).num_image_tokens((1, 3)) == 4 + 3 * 1


def test_batches_concatenate_views_in_order(processor):
    images = [scene(300, 400), scene(2000, 500), scene(50, 50)]
    out = processor(images)
    assert out.image_grids == [(1, 2), (3, 1), (1, 2)]
    assert out.num_views == [3, 4, 3] and out.image_sizes == [(300, 400), (2000, 500), (50, 50)]
    assert out.num_image_tokens == [729 + 2 * 196, 729 + 3 * 196, 729 + 2 * 196]
    assert out.pixel_values.shape == (10, 3, 384, 384)
    np.testing.assert_array_equal(out.pixel_values[3:7], processor(images[1]).pixel_values)
    empty = processor([])
    assert empty.pixel_values.shape == (0, 3, 384, 384) and empty.image_grids == []
    pt = processor(images[2], return_tensors="pt")
    torch = pytest.importorskip("torch")
    assert isinstance(pt["pixel_values"], torch.Tensor) and pt["pixel_values"].shape == (3, 3, 384, 384)


# ---------------------------------------------------------------------------------------------------------------
# Input kinds


def test_every_input_kind_gives_the_same_views(tmp_path):
    p = EyecareProcessor(tile_size=32, grid_pinpoints=[[32, 64], [64, 32], [64, 64]])
    rgb = scene(45, 70)
    gray = rgb[..., 0].copy()
    png = tmp_path / "image.png"
    Image.fromarray(rgb).save(png)
    want = p(rgb).pixel_values
    same_rgb = [str(png), png, png.read_bytes(), np.dstack([rgb, np.full(gray.shape, 7, np.uint8)]),
                rgb.astype(np.float32) / 255, np.ascontiguousarray(rgb.transpose(2, 0, 1)), Image.fromarray(rgb),
                Image.fromarray(np.dstack([rgb, gray])), rgb.astype(np.int64), rgb[None]]
    for image in same_rgb:
        np.testing.assert_array_equal(p(image).pixel_values, want)
    want_gray = p(np.repeat(gray[..., None], 3, -1)).pixel_values
    for image in (gray, gray[..., None], Image.fromarray(gray), gray.astype(np.float64) / 255):
        np.testing.assert_array_equal(p(image).pixel_values, want_gray)
    mask = gray > 128
    np.testing.assert_array_equal(p(mask).pixel_values, p(mask.astype(np.uint8) * 255).pixel_values)
    palette = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(p(palette).pixel_values, p(np.asarray(palette.convert("RGB"))).pixel_values)


def test_bad_inputs_raise(tmp_path):
    p = EyecareProcessor(tile_size=32, grid_pinpoints=[[32, 64]])
    for bad, error in ((object(), TypeError), (np.zeros((5, 5, 2), np.uint8), ValueError),
                       (np.zeros((0, 4, 3), np.uint8), ValueError), (np.full((4, 4), 300, np.int32), ValueError),
                       (b"not an image", eyecare.FormatError), (str(tmp_path / "missing.png"), OSError)):
        with pytest.raises(error):
            p(bad)


def test_max_pixels_applies_to_every_input_kind(tmp_path):
    p = EyecareProcessor(tile_size=32, grid_pinpoints=[[32, 64]], max_pixels=1000)
    img = scene(40, 40)
    path = tmp_path / "image.png"
    Image.fromarray(img).save(path)
    for image in (img, Image.fromarray(img), str(path), path.read_bytes()):
        with pytest.raises(ValueError, match="1000 pixels"):
            p(image)
    assert EyecareProcessor().max_pixels == 64_000_000
    assert EyecareProcessor(max_pixels=64e6).max_pixels == 64_000_000


# ---------------------------------------------------------------------------------------------------------------
# Configuration


def test_defaults():
    p = EyecareProcessor()
    assert (p.tile_size, p.tile_pool, p.pad_color, p.patch_size) == (384, 2, (0, 0, 0), 14)
    assert p.grid_pinpoints == [[384, 768], [768, 384], [768, 768], [384, 1152], [1152, 384]]
    assert p.image_token == "<image>" and p.image_mean == p.image_std == (0.5, 0.5, 0.5)
    assert DEFAULT_ADAPTIVE_RESOLUTION["pad_color"] == [0, 0, 0]
    assert EyecareProcessor(tile_size=336).grid_pinpoints[0] == [336, 672]


def test_from_pretrained_reads_config_json(tmp_path):
    config = {"model_type": "eyecaregpt", "image_token": "<img>",
              "vision_config": {"image_size": 224, "patch_size": 16},
              "adaptive_resolution": {"grid_pinpoints": [[224, 448], [448, 224]], "tile_pool": 3,
                                      "pad_color": [127, 127, 127]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for source in (tmp_path, str(tmp_path), tmp_path / "config.json"):
        p = EyecareProcessor.from_pretrained(source)
        assert (p.tile_size, p.patch_size, p.tile_pool, p.pad_color, p.image_token) == (224, 16, 3, (127,) * 3, "<img>")
        assert p.grid_pinpoints == [[224, 448], [448, 224]]
        assert p.num_image_tokens((1, 2)) == 14 * 14 + 2 * math.ceil(14 / 3) ** 2
    assert EyecareProcessor.from_pretrained(tmp_path, tile_pool=1).tile_pool == 1
    assert EyecareProcessor.from_config({"tile_size": 224, "grid_pinpoints": [[224, 224]]}).grid_pinpoints == [[224, 224]]
    again = EyecareProcessor.from_config(EyecareProcessor.from_pretrained(tmp_path).to_dict())
    assert again.to_dict() == EyecareProcessor.from_pretrained(tmp_path).to_dict()
    with pytest.raises(FileNotFoundError):
        EyecareProcessor.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        EyecareProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs", [dict(grid_pinpoints=[[384, 700]]), dict(grid_pinpoints=[]), dict(pad_color=(0, 0, 300)),
                                    dict(pad_color=(0, 0)), dict(tile_pool=0), dict(tile_size=0), dict(max_pixels=0),
                                    dict(image_std=(0.5, 0.0, 0.5)), dict(patch_size=500)])
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        EyecareProcessor(**kwargs)


def test_works_without_a_vulkan_driver(tmp_path):
    """The processor is a pure CPU path: with no Vulkan driver reachable it still runs."""
    script = ("import numpy as np; from eyecare.processor import EyecareProcessor; "
              "out = EyecareProcessor()(np.zeros((50, 80, 3), np.uint8)); print(out.pixel_values.shape)")
    env = dict(os.environ, PYTHONPATH=str(Path(eyecare.__file__).resolve().parent.parent),
               VK_ICD_FILENAMES=str(tmp_path / "none.json"), VK_DRIVER_FILES=str(tmp_path / "none.json"),
               EYECARE_VALIDATE="0")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(3, 3, 384, 384)"
