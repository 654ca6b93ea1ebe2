"""Time to build the DAG of the full configuration (workflow_config.yaml) for a Kaggle-sized dataset, and
of the annotate mode (configs/annotate.yaml) for a folder of 10,000 new images.

    python benchmarks/bench_dag.py [--train 21806] [--public 80000] [--test 559]
                                   [--annotate 10000] [--images-per-shard 64] [--only submission|annotations]

Writes a dataset skeleton (train.csv, sample_submission.csv and the public set's kaggle_2021.tsv with
that many rows, empty image folders: a dry run reads no image) and times `snakemake submission -n` on
it, three times. The public set (extra_train_sets.pubhpa) is downloaded by the workflow, so its rows
shape the run, not the DAG: its jobs follow its configured shards.

The annotate mode plans its shards from a listing of the folder: it gets 4 x --annotate empty channel
files and a bundle shaped like the demo's submission (benchmarks/bench_annotate.py: 4 members x 2 folds,
random weights), and `snakemake annotations -n` is timed three times.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=21806)
    parser.add_argument("--public", type=int, default=80000, help="labelled rows of kaggle_2021.tsv")
    parser.add_argument("--test", type=int, default=559)
    parser.add_argument("--annotate", type=int, default=10000, help="images of the annotate mode's folder")
    parser.add_argument("--images-per-shard", type=int, default=64, help="the annotate mode's shard size")
    parser.add_argument("--only", choices=("submission", "annotations"), help="time one of the two DAGs")
    args = parser.parse_args()
    if args.only != "annotations":
        bench_submission(args)
    if args.only != "submission":
        bench_annotations(args)


def copy_workflow(work: Path) -> None:
    for name in ("Snakefile", "workflow_config.yaml", "rules", "schemas", "envs", "profiles", "report"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / name)


def time_dry_run(command: list[str], work: Path) -> tuple[list[float], str]:
    """Wall seconds of three runs of ``command`` in ``work``, and the last one's output."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        result = subprocess.run(command, cwd=work, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            sys.exit(result.stdout[-2000:] + result.stderr[-2000:])
    return times, result.stdout


def bench_annotations(args: argparse.Namespace) -> None:
    from bench_annotate import demo_shaped_bundle

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        copy_workflow(work)
        bundle = demo_shaped_bundle(work / "run")
        images = work / "new"
        images.mkdir()
        for i in range(args.annotate):
            for channel in ("red", "green", "blue", "yellow"):
                (images / f"{i:08x}-bb99-11e8_{channel}.png").touch()
        config = {
            "annotate": {"bundle": str(bundle), "input_dir": str(images), "images_per_shard": args.images_per_shard}
        }
        (work / "annotate.yaml").write_text(yaml.safe_dump(config))
        snakemake = str(Path(sys.executable).parent / "snakemake")
        command = [snakemake, "annotations", "-n", "--cores", "12", "--configfile", "annotate.yaml"]
        times, output = time_dry_run(command, work)
        total = re.search(r"^total\s+(\d+)$", output, re.MULTILINE)
        print(
            f"annotate mode, {args.annotate} images in shards of {args.images_per_shard}: {total.group(1)} jobs; "
            f"`snakemake annotations -n` took {min(times):.2f} s (best of 3; {', '.join(f'{t:.2f}' for t in times)})"
        )


def bench_submission(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        copy_workflow(work)
        data = work / "data"
        (data / "train").mkdir(parents=True)
        (data / "test").mkdir()
        rows = ["ID,Label"] + [
            f"{i:08x}-bb99-11e8-b2b9-ac1f6b6435d0,{'|'.join(map(str, sorted(set(rng.integers(0, 19, 2)))))}"
            for i in range(args.train)
        ]
        (data / "train.csv").write_text("\n".join(rows) + "\n")
        (data / "sample_submission.csv").write_text(
            "ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(f"t{i:07d},2048,2048,\n" for i in range(args.test))
        )
        public = ["Image,Label_idx,in_trainset,Label"] + [
            f"https://images.proteinatlas.org/{10000 + i // 40}/{i}_B2_1,{rng.integers(0, 19)},False,Nucleoplasm"
            for i in range(args.public)
        ]
        (data / "kaggle_2021.tsv").write_text("\n".join(public) + "\n")
        snakemake = str(Path(sys.executable).parent / "snakemake")
        # workflow_config.yaml with its data paths (the public set's list and images too) in the skeleton
        config = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
        config["input_dir"] = str(data)
        public = config["extra_train_sets"]["pubhpa"]
        public["images"] = str(data / "pubhpa")
        public["download"]["tsv"] = str(data / "kaggle_2021.tsv")
        (work / "bench.yaml").write_text(yaml.safe_dump(config))
        command = [snakemake, "submission", "-n", "--cores", "12", "--configfile", "bench.yaml"]
        times, output = time_dry_run(command, work)
        total = re.search(r"^total\s+(\d+)$", output, re.MULTILINE)
        print(
            f"full configuration, {args.train} training, {args.public} public and {args.test} test images: "
            f"{total.group(1)} jobs; "
            f"`snakemake submission -n` took {min(times):.2f} s (best of 3; {', '.join(f'{t:.2f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
