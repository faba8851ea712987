"""Data-engine throughput: `eyecare data build` (rules only) on a synthetic manifest of N cases, printed
beside its floor measured in the same run: checking the manifest alone (every row parsed, every image
read, hashed and decoded), which any build must do before it makes a single question.

    python benchmarks/data.py                  # 2000 cases
    python benchmarks/data.py --cases 500
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from eyecare.data import build, load_manifest, load_taxonomies
from eyecare.bench.synthetic import _image
from eyecare.data.synthetic import CASES


def write_manifest(folder: Path, n: int) -> Path:
    """n cases cycling through the example's cases, each with its own image (the modality's drawing shifted
    and darkened by the case number)."""
    import matplotlib.image

    (folder / "images").mkdir(parents=True)
    drawings = {modality: _image(modality) for modality in {c[1] for c in CASES}}   # drawing is the slow part
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "modality", "labels", "report", "patient_id", "eye"])
        for i in range(n):
            case_id, modality, labels, _, eye, report = CASES[i % len(CASES)]
            image = f"images/{i:05d}.png"
            shifted = np.roll(drawings[modality], shift=i % 128, axis=1)
            pixels = (np.clip(shifted * (1.0 - 0.002 * (i // 128)), 0, 1) * 255).round().astype(np.uint8)
            matplotlib.image.imsave(folder / image, pixels)
            writer.writerow([f"b{i:05d}", image, modality, labels, report, f"P{i // 3}", eye])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000)
    args = parser.parse_args()
    taxonomies = load_taxonomies()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_manifest(tmp / "in", args.cases)
        start = time.perf_counter()
        load_manifest(manifest, taxonomies)
        floor = time.perf_counter() - start
        start = time.perf_counter()
        result = build(manifest, tmp / "out", taxonomies=taxonomies, progress=False, log=lambda line: None)
        total = time.perf_counter() - start
    items = result.train + result.test
    print(f"build, rules only: {args.cases} cases -> {items} items, {result.rejected} rejected: {total:.2f} s "
          f"({args.cases / total:.0f} cases/s)")
    print(f"floor, checking the manifest and its images alone: {floor:.2f} s; the build takes {total / floor:.1f}x "
          "the floor")


if __name__ == "__main__":
    main()
