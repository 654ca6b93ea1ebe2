"""The 19 HPA-SCC 2021 classes and the image-level label tables (train.csv, sample_submission.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hpa_pipeline.errors import InputDataError

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
N_CLASSES: int = len(CLASS_NAMES)
NEGATIVE: int = 18


def parse_labels(text: str, where: str = "") -> list[int]:
    """Parse a pipe-separated label string such as ``"7|1|2|0"``.

    Args:
        text: the label string.
        where: where the string came from (file and row), for the error message.

    Returns:
        The class indices, in the given order, without duplicates.
    """
    labels: list[int] = []
    for token in str(text).split("|"):
        token = token.strip()
        if not token.isdigit() or int(token) >= N_CLASSES:
            raise InputDataError(f"{where}: unknown label {token!r} in {text!r} (classes are 0..{N_CLASSES - 1})")
        if int(token) not in labels:
            labels.append(int(token))
    return labels


def labels_to_matrix(label_lists: list[list[int]]) -> np.ndarray:
    """Turn per-image class lists into a (n, 19) float32 multi-hot matrix."""
    matrix = np.zeros((len(label_lists), N_CLASSES), dtype=np.float32)
    for row, labels in enumerate(label_lists):
        matrix[row, labels] = 1.0
    return matrix


def _read_id_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(f"missing table {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputDataError(f"cannot read table {path}: {exc}") from exc
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(table.columns)})")
    empty = table.index[table["ID"].str.strip() == ""]
    if len(empty):
        raise InputDataError(f"{path}: empty ID in row {int(empty[0]) + 2}")
    duplicated = table["ID"][table["ID"].duplicated()]
    if len(duplicated):
        raise InputDataError(f"{path}: duplicate ID(s) {', '.join(sorted(set(duplicated))[:5])}")
    return table


def read_train_table(path: str | Path) -> pd.DataFrame:
    """Read a ``train.csv`` (columns ``ID``, ``Label``) and check every row.

    Returns:
        The table in file order with an extra column ``labels`` (list of class indices).
    """
    path = Path(path)
    table = _read_id_table(path, ("ID", "Label"))
    table["labels"] = [
        parse_labels(text, f"{path} row {row + 2} (ID {image_id})")
        for row, (image_id, text) in enumerate(zip(table["ID"], table["Label"]))
    ]
    return table[["ID", "Label", "labels"]]


def read_test_table(path: str | Path) -> pd.DataFrame:
    """Read a ``sample_submission.csv``; only its ``ID`` column matters (sizes come from the images)."""
    return _read_id_table(Path(path), ("ID",))[["ID"]]
