"""The fold table CSV (``results/folds/{dataset}.csv``: ID, fold, trainable) and the training pool it
defines: the images of every training dataset in canonical order with their labels and folds.

``trainable`` is 0 for an image that is predicted out-of-fold like any other but never trained on
(a duplicate of a test image, when the duplicates step drops those)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file
from hpa_pipeline.io.index import read_index
from hpa_pipeline.labels import N_CLASSES, labels_to_matrix, parse_labels


def write_folds(path: str | Path, ids: Sequence[str], folds: np.ndarray, trainable: np.ndarray | None = None) -> None:
    """Write the fold table (columns ``ID``, ``fold``, ``trainable``) atomically: temp file, then rename.

    Args:
        path: destination CSV.
        ids: image IDs.
        folds: (n,) fold index per ID.
        trainable: (n,) bool, False for images never trained on; default all True.
    """
    path = Path(path)
    folds = np.asarray(folds)
    trainable = np.ones(len(folds), bool) if trainable is None else np.asarray(trainable, bool)
    if len(ids) != len(folds) or len(trainable) != len(folds):
        raise InputDataError(f"{path}: {len(ids)} IDs but {len(folds)} fold indices and {len(trainable)} flags")
    table = pd.DataFrame({"ID": list(ids), "fold": folds.astype(np.int64), "trainable": trainable.astype(np.int64)})
    with atomic_file(path, "w", newline="") as handle:
        table.to_csv(handle, index=False)


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a fold table written by ``write_folds``.

    Returns:
        DataFrame with ``ID`` (str), ``fold`` (int64) and ``trainable`` (bool; all True when the file
        has no such column), in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing fold table {path}")
    try:
        table = pd.read_csv(path, dtype={"ID": str}, keep_default_na=False)
    except Exception as exc:
        raise InputDataError(f"cannot read fold table {path}: {exc}") from exc
    missing = [column for column in ("ID", "fold") if column not in table.columns]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {', '.join(missing)}")
    folds = pd.to_numeric(table["fold"], errors="coerce")
    if folds.isna().any() or (folds < 0).any() or (folds != folds.round()).any():
        bad = int(np.flatnonzero(folds.isna() | (folds < 0) | (folds != folds.round()))[0])
        raise InputDataError(f"{path} row {bad + 2}: fold {table['fold'].iloc[bad]!r} is not a fold index")
    if table["ID"].duplicated().any():
        raise InputDataError(f"{path}: duplicate ID {table['ID'][table['ID'].duplicated()].iloc[0]!r}")
    trainable = np.ones(len(table), bool)
    if "trainable" in table.columns:
        flags = pd.to_numeric(table["trainable"], errors="coerce")
        bad = np.flatnonzero(~flags.isin([0, 1]).to_numpy())
        if len(bad):
            raise InputDataError(
                f"{path} row {bad[0] + 2}: trainable {table['trainable'].iloc[bad[0]]!r} is not 0 or 1"
            )
        trainable = flags.to_numpy() == 1
    return pd.DataFrame({"ID": table["ID"].astype(str), "fold": folds.astype(np.int64), "trainable": trainable})


@dataclass
class LabelledImages:
    """The images of all training datasets in canonical order, with labels and folds."""

    ids: list[str]
    datasets: list[str]
    labels: np.ndarray  # (n, n_classes) float32 multi-hot
    folds: np.ndarray  # (n,) int64
    trainable: np.ndarray  # (n,) bool

    def image_keys(self) -> list[tuple[str, str]]:
        """(dataset, image ID) of every image."""
        return list(zip(self.datasets, self.ids, strict=True))


def read_labelled_images(
    index_paths: Sequence[str | Path], folds_paths: Sequence[str | Path], n_classes: int = N_CLASSES
) -> LabelledImages:
    """Join the datasets' index tables (labels) with their fold tables.

    Args:
        index_paths: ``results/{dataset}/index.csv`` of each training dataset, in config order.
        folds_paths: ``results/folds/{dataset}.csv`` of the same datasets.
        n_classes: the task's number of classes (19, or 28 for the 2018 task).
    """
    ids: list[str] = []
    datasets: list[str] = []
    labels: list[list[int]] = []
    folds: list[np.ndarray] = []
    trainable: list[np.ndarray] = []
    for index_path, folds_path in zip(index_paths, folds_paths, strict=True):
        index = read_index(index_path)
        table = read_folds(folds_path)
        if index["ID"].tolist() != table["ID"].tolist():
            raise InputDataError(f"{folds_path} does not list the images of {index_path} in order (rebuild the folds)")
        ids += index["ID"].tolist()
        datasets += index["dataset"].tolist()
        labels += [
            parse_labels(text, f"{index_path} (ID {image_id})", n_classes)
            for image_id, text in zip(index["ID"], index["Label"])
        ]
        folds.append(table["fold"].to_numpy(np.int64))
        trainable.append(table["trainable"].to_numpy(bool))
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(duplicated):
        raise InputDataError(f"image ID(s) {', '.join(duplicated[:5])} occur in more than one training dataset")
    return LabelledImages(
        ids,
        datasets,
        labels_to_matrix(labels, n_classes),
        np.concatenate(folds) if folds else np.zeros(0, np.int64),
        np.concatenate(trainable) if trainable else np.zeros(0, bool),
    )
