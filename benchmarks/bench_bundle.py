"""Time and size of the bundle of the full configuration's submission (workflow_config.yaml: two
efficientnet_b2 CAM models and two resnest50d cell models, every fold).

    python benchmarks/bench_bundle.py [--folds 5]

Writes one final.pt of random weights per member and fold with training's own writer (a real checkpoint of
the real architecture), then times `write_bundle` (safetensors, sha256, the verification that builds and
loads every model, the zip), `load_bundle` of the folder and of the zip (sha256 of every file) and
`load_member_model` of one member's fold, and prints the sizes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from hpa_pipeline.bundle import load_bundle, load_member_model, write_bundle
from hpa_pipeline.config import resolve_model
from hpa_pipeline.io.index import write_index
from hpa_pipeline.io.thresholds import write_thresholds
from hpa_pipeline.labels import CLASS_NAMES
from hpa_pipeline.nets.models import create_model
from hpa_pipeline.settings import ModelSettings
from hpa_pipeline.train.checkpoints import write_outputs

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    config["folds"]["n_folds"] = args.folds
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch)
        checkpoints = []
        for name in config["submission"]["members"]:
            settings = ModelSettings.from_dict(resolve_model(config, name))
            model = create_model(
                settings.kind, settings.backbone, cosine_head=settings.cosine_head, num_classes=settings.n_classes
            )
            for fold in range(args.folds):
                out = run / f"models/{name}/fold{fold}"
                write_outputs(
                    out, model=model, settings=settings, fold=fold, metrics=[], device="cpu", threads=1, inputs=[]
                )
                checkpoints.append(out / "final.pt")
        write_thresholds(run / "thresholds.csv", np.full(19, 0.5), CLASS_NAMES, np.full(19, np.nan), "f1")
        write_index(run / "index.csv", pd.DataFrame({"ID": ["a"], "shard": 0, "Label": "0", "dataset": "train"}))
        checkpoint_bytes = sum(path.stat().st_size for path in checkpoints)

        start = time.perf_counter()
        write_bundle(
            run / "bundle",
            checkpoints,
            run / "thresholds.csv",
            [run / "index.csv"],
            config["preprocess"]["image_sizes"],
            crop_image_sizes=config["preprocess"]["crop_image_sizes"],
            crop_size=config["preprocess"]["crop_size"],
            segment={"backend": "classical", **config["segment"]["inputs"]["test"]},
            edge_area_threshold=config["submission"]["edge_area_threshold"],
            center_area_threshold=config["submission"]["center_area_threshold"],
            zip_path=run / "bundle.zip",
        )
        written = time.perf_counter() - start
        start = time.perf_counter()
        bundle = load_bundle(run / "bundle")
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        load_bundle(run / "bundle.zip", extract_to=run / "extracted")
        extracted = time.perf_counter() - start
        timings = []
        for member in bundle.members:
            start = time.perf_counter()
            load_member_model(member, 0, torch.device("cpu"))
            timings.append(f"{member.settings.backbone} {time.perf_counter() - start:.2f} s")
        print(f"{len(bundle.members)} members x {args.folds} folds, checkpoints {checkpoint_bytes / 2**20:.0f} MiB")
        print(f"bundle.zip {(run / 'bundle.zip').stat().st_size / 2**20:.0f} MiB")
        print(f"write_bundle (safetensors, sha256, build and load every model, zip): {written:.1f} s")
        print(f"load_bundle of the folder (sha256 of every file): {loaded:.2f} s")
        print(f"load_bundle of the zip (extract, then the same): {extracted:.2f} s")
        print(f"load_member_model, one fold: {', '.join(timings)}")


if __name__ == "__main__":
    main()
