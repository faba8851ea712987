"""How much eyecare's JPEG decoder (stb_image) moves the image tokens away from what a Pillow-fed pipeline
(transformers' image processors, the authors' LLaVA code: Pillow, i.e. libjpeg-turbo) would see.

Photo-like fundus images (a lit disc with vessels, an optic disc, choroidal texture, sensor noise and a burnt-in
date stamp, at a fundus camera's size) are encoded by Pillow at 4:2:0 and 4:2:2 chroma subsampling and qualities
75-95, then decoded twice: by eyecare (stb) and by Pillow. Both decodes go through the same processor and vision tower, so every
difference in the tokens comes from the decoder. Printed per case: the largest and mean difference in pixel
levels, the relative error (Frobenius norm of the difference over the norm of the Pillow side) of the
processor's pixel values and of the image tokens, beside the 5e-3 bound eyecare holds image tokens to.

    python benchmarks/jpeg_decoders.py
    python benchmarks/jpeg_decoders.py --size 2048x1536 --seeds 3
    python benchmarks/jpeg_decoders.py --kind edges --qualities 95   # saturated colour edges: the worst case

The tower is a random one at SigLIP's view size (384 px, patch 14: 729 tokens a view) with a small width, as no
weights may be downloaded; the pixel-value figures do not depend on any model."""
import argparse
import io
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from eyecare import _core
from eyecare.processor import EyecareProcessor
from eyecare.tiny import make_tiny
from eyecare.vision import VisionTower

BOUND = 5e-3
SUBSAMPLING = {"4:2:0": 2, "4:2:2": 1}


def fundus(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like fundus image, uint8 [height, width, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:complex(0, height), -1:1:complex(0, width)]
    x = x * width / height
    r2 = x ** 2 + y ** 2
    field = np.clip((0.95 - np.sqrt(r2)) * height / 2 + 0.5, 0, 1)  # the camera's hard circular edge
    # Choroidal texture: noise smoothed at a few scales (a sum of blurred noise fields).
    texture = np.zeros_like(x)
    for scale in (4, 16, 48):
        small = rng.standard_normal((height // scale + 2, width // scale + 2))
        texture += np.asarray(Image.fromarray(small.astype(np.float32), mode="F").resize((width, height),
                                                                                         Image.BICUBIC)) / 3
    vessels = np.zeros_like(x)
    for k in range(9):
        angle = -1.4 + 2.8 * k / 8 + rng.uniform(-0.1, 0.1)
        bend, width_v = rng.uniform(-0.5, 0.5), rng.uniform(0.006, 0.014)
        for t in np.linspace(0.1, 1.5, 240):
            cx, cy = -0.45 + t * np.cos(angle) + bend * t * t, t * np.sin(angle) * 0.8
            cols = np.flatnonzero(np.abs(x[0] - cx) < 0.03)
            rows = np.flatnonzero(np.abs(y[:, 0] - cy) < 0.03)
            if not cols.size or not rows.size:
                continue
            window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            d = np.sqrt((x[window] - cx) ** 2 + (y[window] - cy) ** 2)
            vessels[window] = np.maximum(vessels[window], np.clip(3 * (1 - d / width_v), 0, 1))  # sharp walls
    optic = np.clip((0.12 - np.sqrt((x + 0.45) ** 2 + y ** 2)) / 0.03, 0, 1)
    macula = np.exp(-((x - 0.35) ** 2 + y ** 2) / 0.02)
    red = 0.82 - 0.28 * r2 + 0.05 * texture - 0.35 * vessels + 0.15 * optic - 0.15 * macula
    green = 0.40 - 0.15 * r2 + 0.04 * texture - 0.22 * vessels + 0.40 * optic - 0.12 * macula
    blue = 0.16 - 0.05 * r2 + 0.02 * texture - 0.06 * vessels + 0.30 * optic
    rgb = np.stack([red, green, blue], -1) * field[..., None]
    rgb += rng.normal(0, 4 / 255, rgb.shape)  # sensor noise
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    # What cameras and viewers burn in: a saturated date stamp and a marker, the sharpest chroma edges of such images.
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, height // 40))
    draw.text((width // 40, height // 40), f"2026-12-0{seed % 9 + 1} 10:4{seed % 10}  OD  45deg", fill=(255, 230, 0),
              font=font)
    draw.line([(width * 0.62, height * 0.55), (width * 0.7, height * 0.62)], fill=(0, 255, 60), width=max(2, height // 400))
    return np.asarray(image)


def color_edges(width: int, height: int, seed: int) -> np.ndarray:
    """A worst case rather than a photo: blocks of saturated colours with one-pixel lines, all chroma edges."""
    rng = np.random.default_rng(seed)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
                        [0, 0, 0], [255, 255, 255]], np.uint8)
    blocks = rng.integers(0, len(palette), (height // 24 + 1, width // 24 + 1))
    image = palette[np.kron(blocks, np.ones((24, 24), int))[:height, :width]]
    image[::7, :] = palette[rng.integers(0, len(palette))]
    image[:, ::5] = palette[rng.integers(0, len(palette))]
    return image


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="2048x1536", help="image width x height (default: a fundus camera's)")
    parser.add_argument("--seeds", type=int, default=2, help="images per case")
    parser.add_argument("--qualities", default="75,85,95")
    parser.add_argument("--kind", choices=["fundus", "edges"], default="fundus",
                        help="fundus: photo-like fundus images; edges: saturated colour blocks, a worst case")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(f"Pillow {Image.__version__}, libjpeg-turbo: {features.check_feature('libjpeg_turbo')}; "
          f"eyecare decodes with stb_image; device: {_core.device_info()['name']}")
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny(tmp, "phi3", dtype="float32", sizes={"image_size": 384, "vision_hidden": 64,
                                                              "vision_intermediate": 256, "vision_layers": 4})
        processor = EyecareProcessor.from_pretrained(path)
        with VisionTower.from_checkpoint(path, max_views=5) as tower:
            print(f"{width}x{height} {args.kind} images, {args.seeds} per case; tower: random, 4 layers x 64, 384 px views")
            print(f"{'subsampling':>11} {'quality':>7} {'max |dlevel|':>12} {'mean |dlevel|':>13} "
                  f"{'pixel_values rel':>16} {'tokens rel':>11} {'bound':>7}")
            worst = 0.0
            make = fundus if args.kind == "fundus" else color_edges
            images = [make(width, height, seed) for seed in range(args.seeds)]
            for name, sub in SUBSAMPLING.items():
                for quality in (int(q) for q in args.qualities.split(",")):
                    stats = []
                    for image in images:
                        buf = io.BytesIO()
                        Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=sub)
                        data = buf.getvalue()
                        ours = _core.decode_image(data)
                        pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                        diff = np.abs(ours.astype(np.int16) - pillow.astype(np.int16))
                        a, b = processor(ours), processor(pillow)
                        assert a["image_grids"] == b["image_grids"]
                        ta = tower.encode(a["pixel_values"], a["image_grids"])
                        tb = tower.encode(b["pixel_values"], b["image_grids"])
                        stats.append((diff.max(), diff.mean(), relative_error(a["pixel_values"], b["pixel_values"]),
                                      relative_error(ta, tb)))
                    s = np.array(stats, dtype=np.float64)
                    worst = max(worst, s[:, 3].max())
                    print(f"{name:>11} {quality:>7} {int(s[:, 0].max()):>12} {s[:, 1].mean():>13.3f} "
                          f"{s[:, 2].max():>16.2e} {s[:, 3].max():>11.2e} {BOUND:>7.0e}")
            print(f"largest token relative error {worst:.2e} vs the bound {BOUND:.0e}: "
                  f"{'within' if worst < BOUND else 'OVER'}")


if __name__ == "__main__":
    main()
