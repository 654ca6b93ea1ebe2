"""Time to build the DAG of the full configuration (workflow_config.yaml) for a Kaggle-sized dataset.

    python benchmarks/bench_dag.py [--train 21806] [--public 80000] [--test 559]

Writes a dataset skeleton (train.csv, sample_submission.csv and the public set's kaggle_2021.tsv with
that many rows, empty image folders: a dry run reads no image) and times `snakemake submission -n` on
it, three times. The public set (extra_train_sets.pubhpa) is downloaded by the workflow, so its rows
shape the run, not the DAG: its jobs follow its configured shards.
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
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name in ("Snakefile", "workflow_config.yaml", "rules", "schemas", "envs", "profiles", "report"):
            source = REPO / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / name)
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
        times = []
        for _ in range(3):
            started = time.perf_counter()
            result = subprocess.run(command, cwd=work, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if result.returncode != 0:
                sys.exit(result.stdout[-2000:] + result.stderr[-2000:])
        total = re.search(r"^total\s+(\d+)$", result.stdout, re.MULTILINE)
        print(
            f"full configuration, {args.train} training, {args.public} public and {args.test} test images: "
            f"{total.group(1)} jobs; "
            f"`snakemake submission -n` took {min(times):.2f} s (best of 3; {', '.join(f'{t:.2f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
