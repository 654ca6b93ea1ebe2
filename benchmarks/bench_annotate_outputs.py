"""Time and size of the annotation outputs for HPA-sized images (2048×2048, 16-bit, ~60 cells).

    python benchmarks/bench_annotate_outputs.py [--images 4] [--side 2048] [--cells 60]

Builds synthetic four-channel images of disc cells, writes them with AnnotationWriter into a temporary
folder and prints the seconds per image for ``add`` (OME-Zarr + overview + table parts), the seconds of
``close`` and the bytes of each output per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hpa_pipeline.annotate.outputs import AnnotationWriter, ImageAnnotation
from hpa_pipeline.labels import CLASS_NAMES


def _image(image_id: str, side: int, n_cells: int, rng: np.random.Generator) -> ImageAnnotation:
    channels = rng.integers(0, 4000, (4, side, side)).astype(np.uint16)
    labels = np.zeros((side, side), np.int32)
    radius = side // 25
    grid = int(np.ceil(np.sqrt(n_cells)))
    step = side // grid
    centres = [(step // 2 + (number // grid) * step, step // 2 + (number % grid) * step) for number in range(n_cells)]
    for number, (cy, cx) in enumerate(centres):
        labels[cy - radius : cy + radius, cx - radius : cx + radius] = number + 1
    instance = np.arange(1, n_cells + 1, dtype=np.int32)
    area = np.bincount(labels.ravel(), minlength=n_cells + 1)[1:].astype(np.int64)
    probabilities = rng.dirichlet(np.ones(len(CLASS_NAMES)), n_cells).astype(np.float32)
    bbox = np.asarray([[cy - radius, cx - radius, cy + radius, cx + radius] for cy, cx in centres], np.int32)
    return ImageAnnotation(
        image_id=image_id,
        channels=channels,
        labels=labels,
        instance=instance,
        bbox=bbox,
        area=area,
        touches_edge=np.zeros(n_cells, bool),
        probabilities=probabilities,
        area_factor=np.minimum(1.0, area / 32000.0),
        image_probabilities=probabilities.max(axis=0),
    )


def _size(path: Path) -> int:
    return (
        sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else path.stat().st_size
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--cells", type=int, default=60)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        writer = AnnotationWriter(
            out,
            task="hpa2021-cells",
            class_names=CLASS_NAMES,
            class_thresholds=[0.5] * len(CLASS_NAMES),
            run_key="bench",
            provenance={"benchmark": "bench_annotate_outputs"},
        )
        seconds = []
        for number in range(args.images):
            image = _image(f"image-{number}", args.side, args.cells, rng)
            start = time.perf_counter()
            writer.add(image)
            seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        writer.close()
        closing = time.perf_counter() - start
        print(f"{args.images} images of {args.side}x{args.side} uint16, {args.cells} cells each")
        print(f"add: {np.mean(seconds):.2f} s per image (min {min(seconds):.2f}, max {max(seconds):.2f})")
        print(f"close: {closing:.2f} s")
        per_image = {
            "OME-Zarr": _size(out / "images" / "image-0.ome.zarr"),
            "overview PNG": _size(out / "overview" / "image-0.png"),
            "raw channels": 4 * args.side * args.side * 2,
        }
        for name, size in per_image.items():
            print(f"{name}: {size / 1e6:.2f} MB per image")
        for name in ("cells.parquet", "cells.csv", "cells.h5ad", "images.csv"):
            print(f"{name}: {_size(out / name) / 1e3:.1f} kB for {args.images * args.cells} cells")


if __name__ == "__main__":
    main()
