"""Time and size of `hpa-pipeline export-bioimageio` for a model of a given backbone and image size.

    python benchmarks/bench_zoo.py [--backbone densenet121] [--head gap_gmp] [--size 512]

Builds a run in a temporary folder (two synthetic 2018 test images at the model's size, a final.pt of
random weights written by training's own writer), exports it as a zip, and prints the export's time
(package building, bioimageio.spec validation and bioimageio.core's test of both weight formats, all on
the CPU) and the sizes of the package and its weights. No pretrained weights are fetched.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd
import torch

from hpa_pipeline.data.synth2018 import write_demo_dataset_2018
from hpa_pipeline.nets.models import create_model
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.settings import ModelSettings
from hpa_pipeline.train.checkpoints import write_outputs
from hpa_pipeline.zoo.bioimageio import export_bioimageio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="densenet121", help="bestfitting's backbone by default")
    parser.add_argument("--head", default="gap_gmp", choices=("cam", "gap_gmp"))
    parser.add_argument("--size", type=int, default=512, help="the model's image_size (Kaggle 2018 images: 512)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        write_demo_dataset_2018(run / "data", n_train=1, n_test=2, image_size=args.size, progress=False)
        ids = pd.read_csv(run / "data" / "sample_submission.csv")["Id"].tolist()
        resize_shard(run / "data" / "test", ids, [args.size], [run / f"results/test/images_{args.size}/shard-0.zarr"])
        settings = ModelSettings.from_dict(
            dict(name="bench", kind="image", backbone=args.backbone, image_size=args.size, crop_size=args.size,
                 epochs=1, batch_size=1, lr=1e-3, task="hpa2018-images", head=args.head)
        )  # fmt: skip
        model = create_model("image", args.backbone, num_classes=settings.n_classes, head=args.head)
        write_outputs(run / "results/models/bench/fold0", model=model, settings=settings, fold=0,
                      metrics=[{"epoch": 0}], device="cpu", threads=1, inputs=[])  # fmt: skip
        out = Path(scratch) / "bench.zip"
        start = time.perf_counter()
        export_bioimageio("bench", out, run_dir=run)
        seconds = time.perf_counter() - start
        package_bytes = out.stat().st_size
        with zipfile.ZipFile(out) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
    print(f"{args.backbone} ({args.head}) at {args.size} px, torch threads {torch.get_num_threads()}")
    print(f"export with validation and test: {seconds:.1f} s")
    print(f"package (zip): {package_bytes / 1e6:.1f} MB")
    print(f"zip members: {', '.join(f'{name} {size / 1e6:.1f} MB' for name, size in sorted(sizes.items()))}")


if __name__ == "__main__":
    main()
