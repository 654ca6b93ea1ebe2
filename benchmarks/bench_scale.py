"""The data stage at the full run's scale: index table, label parsing, folds (prints figures).

    python benchmarks/bench_scale.py [--rows 21806 80000 100000] [--repeats 2] [--workdir DIR]

A synthetic labelled table of N rows (19 classes, multi-label; each class drawn with its approximate
frequency in the Kaggle 2021 train.csv: Nucleoplasm ~40%, Cytosol ~26%, ... Mitotic spindle ~0.5%,
Negative ~0.2%; Negative alone) is written and read as the index CSV (hpa_pipeline.io.index), its labels
parsed (hpa_pipeline.labels), split into 5 folds (hpa_pipeline.train.folds.make_folds, iterstrat; and
fold_table, what the make_folds rule runs, with 2% of the rows in near-duplicate pairs), the fold table
written, and both read back joined (hpa_pipeline.io.folds.read_labelled_images).

Per step: seconds (best of ``--repeats``), the tracemalloc peak of Python allocations (a separate run:
tracing slows pure-Python code) and the growth of the process's peak RSS during the step (VmHWM,
reset through /proc/self/clear_refs before each step).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_pipeline.io.folds import read_labelled_images, write_folds
from hpa_pipeline.io.index import read_index, write_index
from hpa_pipeline.labels import N_CLASSES, NEGATIVE, labels_to_matrix, parse_labels
from hpa_pipeline.train.folds import fold_table, make_folds

#: Approximate per-image frequency of each class in the Kaggle 2021 train set (21,806 images).
CLASS_FREQUENCY = np.array(
    [0.40, 0.05, 0.13, 0.07, 0.11, 0.12, 0.065, 0.16, 0.07, 0.055, 0.063, 0.005, 0.09, 0.15, 0.10, 0.015, 0.26, 0.115]
)
NEGATIVE_FREQUENCY = 0.002
IMAGES_PER_SHARD = 256
#: Share of the rows in near-duplicate pairs for the fold_table step (the public set has a few %).
DUPLICATE_FRACTION = 0.02


def labelled_table(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """An index table (ID, shard, Label) with multi-label rows drawn from CLASS_FREQUENCY."""
    rng = np.random.default_rng(seed)
    hits = rng.random((n_rows, N_CLASSES - 1)) < CLASS_FREQUENCY
    empty = ~hits.any(axis=1)  # an image shows at least one class: give it its most likely one
    hits[empty, rng.choice(N_CLASSES - 1, size=int(empty.sum()), p=CLASS_FREQUENCY / CLASS_FREQUENCY.sum())] = True
    negative = rng.random(n_rows) < NEGATIVE_FREQUENCY
    labels = ["|".join(map(str, np.flatnonzero(row))) for row in hits]
    labels = [str(NEGATIVE) if neg else text for text, neg in zip(labels, negative)]
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_rows)]
    shards = np.arange(n_rows) // IMAGES_PER_SHARD
    return pd.DataFrame({"ID": ids, "shard": shards, "Label": labels, "dataset": "train"})


def duplicates_table(table: pd.DataFrame, fraction: float = DUPLICATE_FRACTION, seed: int = 0) -> pd.DataFrame:
    """A duplicates table (group, dataset, ID) pairing ``fraction`` of the rows two by two."""
    rows = np.random.default_rng(seed).permutation(len(table))[: int(len(table) * fraction) // 2 * 2]
    return pd.DataFrame(
        {"group": np.arange(len(rows)) // 2, "dataset": table["dataset"].iloc[rows], "ID": table["ID"].iloc[rows]}
    )


def _rss_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def measure(step: Callable[[], object], repeats: int) -> dict:
    """Seconds (best of ``repeats``), tracemalloc peak (MiB) and peak-RSS growth (MiB) of ``step``."""
    seconds = []
    rss_growth = 0.0
    for _ in range(repeats):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS:")
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
        rss_growth = max(rss_growth, (_rss_kib("VmHWM:") - before) / 1024)
    tracemalloc.start()
    step()
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"seconds": min(seconds), "traced_mib": traced, "rss_growth_mib": rss_growth}


def steps(
    table: pd.DataFrame, matrix: np.ndarray, folds: np.ndarray, index_path: Path, folds_path: Path
) -> dict[str, Callable[[], object]]:
    """The measured steps, each a call of the package on the table of one size."""
    duplicates = duplicates_table(table)
    return {
        "write_index (io.index)": lambda: write_index(index_path, table),
        "read_index (io.index)": lambda: read_index(index_path),
        "parse_labels + labels_to_matrix": lambda: labels_to_matrix([parse_labels(t) for t in table["Label"]]),
        "make_folds (iterstrat, 5 folds)": lambda: make_folds(matrix, n_folds=5, seed=0),
        "fold_table (+ 2% duplicate pairs)": lambda: fold_table(table, 5, 0, duplicate_groups=duplicates),
        "write_folds (io.folds)": lambda: write_folds(folds_path, table["ID"].tolist(), folds),
        "read_labelled_images (io.folds)": lambda: read_labelled_images([index_path], [folds_path]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[21806, 80000, 100000])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per step; the best is reported")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/scale"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{'rows':>7s} {'step':34s} {'seconds':>8s} {'traced MiB':>10s} {'RSS +MiB':>9s}")
    for n_rows in args.rows:
        table = labelled_table(n_rows)
        index_path, folds_path = args.workdir / f"index-{n_rows}.csv", args.workdir / f"folds-{n_rows}.csv"
        write_index(index_path, table)
        matrix = labels_to_matrix([parse_labels(text) for text in table["Label"]])
        folds = make_folds(matrix, n_folds=5, seed=0)
        write_folds(folds_path, table["ID"].tolist(), folds)
        for name, step in steps(table, matrix, folds, index_path, folds_path).items():
            result = measure(step, args.repeats)
            print(
                f"{n_rows:7d} {name:34s} {result['seconds']:8.2f} "
                f"{result['traced_mib']:10.1f} {result['rss_growth_mib']:9.1f}",
                flush=True,
            )
        per_fold = np.bincount(folds, minlength=5)
        rare = matrix[:, [11, NEGATIVE]].sum(axis=0)
        print(
            f"{n_rows:7d} (check) labels/image {matrix.sum(1).mean():.2f}; images per fold {per_fold.tolist()}; "
            f"mitotic spindle {int(rare[0])}, negative {int(rare[1])} images; index CSV "
            f"{index_path.stat().st_size / 2**20:.1f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
