"""The image index CSV (``results/{dataset}/index.csv``): a dataset's IDs in canonical order, their
labels, their shard and the dataset's name. Written by the data stage, read by every later stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file

INDEX_COLUMNS = ("ID", "shard", "Label", "dataset")


def write_index(path: str | Path, index: pd.DataFrame) -> None:
    """Write the index CSV atomically."""
    with atomic_file(path, "w", newline="") as handle:
        index.to_csv(handle, index=False)


def read_index(path: str | Path) -> pd.DataFrame:
    """Read an index written by :func:`write_index`."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing image index {path}")
    index = pd.read_csv(path, dtype={"ID": str, "shard": int, "Label": str, "dataset": str}, keep_default_na=False)
    missing = [column for column in INDEX_COLUMNS if column not in index.columns]
    if missing == ["dataset"]:
        raise InputDataError(f"{path} was written by hpa-pipeline < 0.3 (no dataset column): rerun index_images")
    if missing:
        raise InputDataError(f"{path}: not an image index (missing column(s) {', '.join(missing)})")
    return index


def index_keys(index: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, ID) of every image, the key that joins cells and predictions."""
    return list(zip(index["dataset"], index["ID"], strict=True))


def shard_ids(index: pd.DataFrame, shard: int) -> list[str]:
    """IDs of one shard, in canonical order."""
    return index.loc[index["shard"] == shard, "ID"].tolist()
