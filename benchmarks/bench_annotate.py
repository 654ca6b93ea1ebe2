"""Images per second of ``hpa-pipeline annotate`` end to end on the CPU, seconds per image per stage, and peak
memory for two folder sizes (memory must not grow with the number of images: shards are streamed).

The input is synthetic HPA-style fields at ``--size`` px (the demo generator); the bundle is ``--bundle`` or,
by default, one shaped like the demo's submission (two CAM models at 192 px, two cell models at 192/384 px,
two folds each, random weights: the speed does not depend on what the weights learned).

Usage: python benchmarks/bench_annotate.py [--images 4] [--size 2048] [--threads 2] [--images-per-shard 4]
                                           [--bundle B]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hpa_pipeline.annotate.engine import annotate_folder
from hpa_pipeline.bundle import load_bundle, write_bundle
from hpa_pipeline.data.synth import write_demo_dataset
from hpa_pipeline.io.index import write_index
from hpa_pipeline.io.thresholds import write_thresholds
from hpa_pipeline.labels import CLASS_NAMES
from hpa_pipeline.nets.models import create_model
from hpa_pipeline.settings import ModelSettings
from hpa_pipeline.train.checkpoints import write_outputs

COMMON = dict(epochs=1, batch_size=8, lr=1e-3, n_folds=2, seed=0)
DEMO_MEMBERS = (
    ModelSettings(name="cam_effnet", kind="image", backbone="test_efficientnet", image_size=192, crop_size=128,
                  **COMMON),
    ModelSettings(name="cam_effnet_cos", kind="image", backbone="test_efficientnet", image_size=192, crop_size=128,
                  cosine_head=True, **COMMON),
    ModelSettings(name="cell_resnet_192", kind="cell", backbone="test_resnet", image_size=192, **COMMON),
    ModelSettings(name="cell_resnet_384", kind="cell", backbone="test_resnet", image_size=384, cosine_head=True,
                  **COMMON),
)  # fmt: skip


def demo_shaped_bundle(root: Path) -> Path:
    checkpoints = []
    for settings in DEMO_MEMBERS:
        for fold in range(2):
            torch.manual_seed(fold)
            model = create_model(
                settings.kind, settings.backbone, cosine_head=settings.cosine_head, num_classes=settings.n_classes
            )
            out = root / f"models/{settings.name}/fold{fold}"
            write_outputs(
                out, model=model, settings=settings, fold=fold, metrics=[], device="cpu", threads=1, inputs=[]
            )
            checkpoints.append(out / "final.pt")
    write_thresholds(root / "thresholds.csv", np.full(19, 0.5), CLASS_NAMES, np.full(19, np.nan), "f1")
    write_index(root / "index.csv", pd.DataFrame({"ID": ["a"], "shard": 0, "Label": "0", "dataset": "train"}))
    write_bundle(
        root / "bundle", checkpoints, root / "thresholds.csv", [root / "index.csv"], [192, 384],
        crop_image_sizes=[192, 384], crop_size=48,
        segment={"backend": "classical", "source": "original", "scale_factor": 0.25},
        edge_area_threshold=5000, center_area_threshold=2000,
    )  # fmt: skip
    return root / "bundle"


def one_run(args: argparse.Namespace) -> dict:
    """Annotate ``args.images`` fresh images in this process; its figures as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo_dataset(
            tmp / "data", n_train=1, n_test=args.images, image_size=args.size, cells_per_image=(10, 20), seed=1,
            progress=False,
        )  # fmt: skip
        bundle = load_bundle(Path(args.bundle) if args.bundle else demo_shaped_bundle(tmp / "run"))
        start = time.perf_counter()
        summary = annotate_folder(
            bundle, tmp / "data/test", tmp / "out", images_per_shard=args.images_per_shard, threads=args.threads
        )
        wall = time.perf_counter() - start
        cells = len(pd.read_parquet(tmp / "out/cells.parquet"))
    return {
        "images": summary.annotated,
        "cells": cells,
        "wall_s": wall,
        "seconds": dict(summary.seconds),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images-per-shard", type=int, default=4)
    parser.add_argument("--bundle", help="a bundle folder or zip (default: one shaped like the demo's)")
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        print(json.dumps(one_run(args)))
        return
    # each folder size in its own process, so that each peak memory is its own
    results = []
    for n_images in (args.images, 2 * args.images):
        command = [sys.executable, __file__, "--one-run", "--images", str(n_images), "--size", str(args.size),
                   "--threads", str(args.threads), "--images-per-shard", str(args.images_per_shard)]  # fmt: skip
        if args.bundle:
            command += ["--bundle", args.bundle]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    print(f"annotate, {args.size} px, {args.threads} threads, {args.images_per_shard} images per shard, CPU")
    for result in results:
        n = result["images"]
        stages = ", ".join(f"{stage} {seconds / n:.2f}" for stage, seconds in result["seconds"].items())
        print(
            f"  {n} images ({result['cells']} cells): {n / result['wall_s']:.3f} images/s "
            f"({result['wall_s'] / n:.1f} s/image); s/image per stage: {stages}; "
            f"peak memory {result['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
