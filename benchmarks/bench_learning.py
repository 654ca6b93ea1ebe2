"""Does the learning core learn, and do pseudo labels help? The workflow on a larger synthetic set.

    python benchmarks/bench_learning.py [--train 96] [--epochs 16] [--cores 2] [--keep DIR]

The demo (24 training images, 2 epochs) only proves the DAG: its models sit near the metric's chance
level. This runs the real workflow (Snakemake, `configs/demo.yaml` as the base) on a larger synthetic
dataset with longer training and two stages:

* stage 1: a CAM model on the image labels, and a cell-crop model whose targets are the image labels
  copied to every cell (the weak-label baseline);
* stage 2: the same two architectures trained on the stage-1 CAM model's out-of-fold cell predictions
  (pseudo labels), as in the original solution.

It prints the wall time and the cell-level competition metric of every model (out-of-fold on the
training images) next to the chance and ceiling references of the same segmentation.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow_config.yaml", "rules", "schemas", "envs", "configs", "profiles", "report")


def learning_config(n_train: int, epochs: int) -> dict:
    """The demo configuration with a larger dataset, longer training and the two-stage comparison."""
    config = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    config["demo_data"].update(n_train=n_train, n_test=4, empty_test_images=0)
    for kind, batch_size in (("image", 8), ("cell", 64)):
        config["model_defaults"][kind].update(epochs=epochs, batch_size=batch_size, lr=0.003, warmup_epochs=1)
    config["models"] = {
        "cam_stage1": {"kind": "image", "backbone": "test_resnet", "image_size": 192},
        "cell_image_labels": {"kind": "cell", "backbone": "test_resnet", "image_size": 192},
        "cam_stage2": {"kind": "image", "backbone": "test_resnet", "image_size": 192, "pseudo_labels": "stage1"},
        "cell_stage2": {"kind": "cell", "backbone": "test_resnet", "image_size": 192, "pseudo_labels": "stage1"},
    }
    config["ensembles"] = {"stage1": ["cam_stage1"]}
    config["submission"]["members"] = ["cam_stage2", "cell_stage2"]
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=96, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    scratch = None if args.keep else tempfile.TemporaryDirectory()
    work = args.keep or Path(scratch.name)
    try:
        work.mkdir(parents=True, exist_ok=True)
        for name in WORKFLOW_FILES:
            source, target = REPO / name, work / name
            if not target.exists():
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        config_path = work / "configs/learning.yaml"
        config_path.write_text(yaml.safe_dump(learning_config(args.train, args.epochs), sort_keys=False))
        snakemake = str(Path(sys.executable).parent / "snakemake")
        command = [snakemake, "results/metrics.tsv", "--configfile", str(config_path), "--cores", str(args.cores)]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=work, capture_output=True, text=True)
        wall_s = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
        with open(work / "results/metrics.tsv", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        print(
            f"{args.train} synthetic training images, {args.epochs} epochs per model, 2 folds, "
            f"--cores {args.cores}: {wall_s:.0f} s wall"
        )
        print(f"{'what':<10} {'name':<18} {'stage':>5}  {'scored on':<20} cell mAP")
        for row in rows:
            print(
                f"{row['what']:<10} {row['name']:<18} {row['stage']:>5}  {row['scored_on']:<20} "
                f"{float(row['cell_map']):.3f}"
            )
    finally:
        if scratch is not None:
            scratch.cleanup()


if __name__ == "__main__":
    main()
