"""Does the learning core learn, do the stages help, and does each ensemble beat its best member on
images no fit has seen? The workflow on larger synthetic sets, several seeds.

    python benchmarks/bench_learning.py [--config learning|demo] [--seeds 0 1 2] [--train 200] [--test 40]
        [--image-size 512] [--epochs 16] [--method mean|rank_mean|weights] [--cores 2] [--keep DIR]

The demo (24 training images, 2 epochs) only proves the DAG: its models sit near the metric's chance
level. This runs the real workflow (Snakemake, `configs/demo.yaml` as the base) on a larger synthetic
dataset with longer training, once per seed (the seed of the data, the folds and the training), with
one of two shapes:

* ``learning`` (default): the shipped design at its smallest. Stage 1 = a CAM model on the image labels
  and a cell-crop model whose targets are the image labels copied to every cell (the weak labels);
  stage 2 = a CAM and a cell model on the stage-1 average; stage 3 = one cell model on the stage-2 average,
  the submission. The cell models of stages 2 and 3 train with the demo's
  ``model_defaults.cell.pseudo_label_weight`` (half pseudo label, half image label) and start from the
  cell model of the stage before (``init_from``: ``cell_stage1`` → ``cell_stage2`` → ``cell_stage3``).
  Every stage-1 and stage-2 model also gets a one-member ensemble (``{model}_alone``), so that each
  model's own submission is scored;
* ``demo``: the demo's three stages (models, ensembles and submission as in configs/demo.yaml).

``--method`` sets ``ensemble.method`` (how every ensemble and the submission combine their members).
The protocol: every fit (training, pseudo labels, member weights, thresholds) sees the training images
only; models and ensembles are scored out of fold on them, and the submission and every stage
submission (what each ensemble and each submission member alone would submit) on the test images.
The test rows are the honest comparison.

The defaults (3 seeds of 200 training and 40 test images at 512 px, 16 epochs) are the protocol of the
README's figures; on 2 cores one seed takes about 16 minutes in the ``learning`` shape and 26 in ``demo``.

It prints the wall time of each seed's run, then per row (every model and ensemble out of fold, every
stage submission and the submission on test, the references) the mean and the sample standard
deviation of the cell-level competition metric over the seeds, as a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow_config.yaml", "rules", "schemas", "envs", "configs", "profiles", "report")
#: The side of the demo's fields, for which its area thresholds are set.
DEMO_IMAGE_SIZE = 512


def learning_config(
    shape: str, n_train: int, n_test: int, image_size: int, epochs: int, seed: int, method: str, cores: int
) -> dict:
    """The demo configuration with a larger dataset, longer training, ``seed`` and ``ensemble.method``;
    shape ``learning`` replaces its stages with the three-stage design at its smallest."""
    config = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    config["seed"] = seed
    # one model job at a time with every core: the float reductions of the README's figures
    config["model_threads"] = cores
    config["ensemble"] = {"method": method}
    config["demo_data"].update(n_train=n_train, n_test=n_test, image_size=image_size, empty_test_images=0)
    area = (image_size / DEMO_IMAGE_SIZE) ** 2  # the thresholds are areas in pixels of the fields
    for key in ("edge_area_threshold", "center_area_threshold"):
        config["submission"][key] = round(config["submission"][key] * area)
    if shape == "demo":
        for kind in ("image", "cell"):
            config["model_defaults"][kind]["epochs"] = epochs
        return config
    for kind, batch_size in (("image", 8), ("cell", 64)):
        config["model_defaults"][kind].update(epochs=epochs, batch_size=batch_size, lr=0.003, warmup_epochs=1)
    cam = {"kind": "image", "backbone": "test_resnet", "image_size": 192}
    cell = {"kind": "cell", "backbone": "test_resnet", "image_size": 192}
    config["models"] = {
        "cam_stage1": cam,
        "cell_stage1": cell,
        "cam_stage2": {**cam, "pseudo_labels": "stage1"},
        "cell_stage2": {**cell, "pseudo_labels": "stage1", "init_from": "cell_stage1"},
        "cell_stage3": {**cell, "pseudo_labels": "stage2", "init_from": "cell_stage2"},
    }
    config["ensembles"] = {"stage1": ["cam_stage1", "cell_stage1"], "stage2": ["cam_stage2", "cell_stage2"]}
    for model in ("cam_stage1", "cell_stage1", "cam_stage2", "cell_stage2"):
        config["ensembles"][f"{model}_alone"] = [model]
    config["submission"]["members"] = ["cell_stage3"]
    return config


def run_seed(work: Path, config: dict, cores: int) -> tuple[list[dict], float]:
    """Run the workflow up to the metrics in ``work``; the metrics rows and the wall time."""
    work.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source, target = REPO / name, work / name
        if not target.exists():
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    config_path = work / "configs/learning.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake = str(Path(sys.executable).parent / "snakemake")
    command = [snakemake, "results/metrics.tsv", "--configfile", str(config_path), "--cores", str(cores)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    with open(work / "results/metrics.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t")), wall_s


def summary_table(runs: list[list[dict]]) -> str:
    """Markdown: one line per row of the metrics table (first run's order), mean and sample SD over runs."""
    lines = ["| what | name | stage | scored on | cell mAP mean | SD | runs |", "|---|---|---|---|---|---|---|"]

    def key(row: dict) -> tuple[str, ...]:
        return row["what"], row["name"], row["stage"], row["scored_on"]

    for row_key in [key(row) for row in runs[0]]:
        values = [float(row["cell_map"]) for rows in runs for row in rows if key(row) == row_key]
        spread = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
        lines.append(f"| {' | '.join(row_key)} | {statistics.mean(values):.3f} | {spread} | {len(values)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("learning", "demo"), default="learning", help="the stages' shape")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one full run per seed")
    parser.add_argument("--train", type=int, default=200, help="synthetic training images")
    parser.add_argument("--test", type=int, default=40, help="synthetic test images")
    parser.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE, help="side of the synthetic fields")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--method", choices=("mean", "rank_mean", "weights"), default="mean", help="ensemble.method")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in DIR/seed-N and keep it (default: temporary folders)")
    args = parser.parse_args()
    runs = []
    print(
        f"shape {args.config}, {args.train} training and {args.test} test images of {args.image_size} px, "
        f"{args.epochs} epochs per model, 2 folds, ensemble.method {args.method}, --cores {args.cores}"
    )
    for seed in args.seeds:
        config = learning_config(
            args.config, args.train, args.test, args.image_size, args.epochs, seed, args.method, args.cores
        )
        scratch = None if args.keep else tempfile.TemporaryDirectory()
        work = args.keep / f"seed-{seed}" if args.keep else Path(scratch.name)
        try:
            rows, wall_s = run_seed(work, config, args.cores)
        finally:
            if scratch is not None:
                scratch.cleanup()
        runs.append(rows)
        print(f"seed {seed}: {wall_s:.0f} s wall", flush=True)
    print()
    print(summary_table(runs))


if __name__ == "__main__":
    main()
