"""The label sets of the two HPA tasks and their image-level label tables (train.csv, sample_submission.csv).

``hpa2021-cells`` (HPA Single Cell Classification 2021, the default): 19 classes, ``ID,Label`` with
pipe-separated labels. ``hpa2018-images`` (Human Protein Atlas Image Classification 2018): 28 classes,
``Id,Target`` with space-separated labels. Both tables are read into the same form (``ID``, a
pipe-separated ``Label``, ``labels``), so every later stage reads one index format.
"""

from __future__ import annotations

import re
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
#: A class index as the tables write it: ASCII digits only (``str.isdigit`` also takes "²", which ``int`` refuses).
CLASS_TOKEN = re.compile(r"[0-9]+")
NEGATIVE: int = 18


#: The task of HPA-SCC 2021 (per-cell predictions, the default) and of the 2018 image competition.
TASK_CELLS = "hpa2021-cells"
TASK_IMAGES = "hpa2018-images"
TASKS: tuple[str, ...] = (TASK_CELLS, TASK_IMAGES)

#: The 28 classes of Human Protein Atlas Image Classification (Kaggle 2018), by index.
CLASS_NAMES_2018: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Peroxisomes",
    "Endosomes",
    "Lysosomes",
    "Intermediate filaments",
    "Actin filaments",
    "Focal adhesion sites",
    "Microtubules",
    "Microtubule ends",
    "Cytokinetic bridge",
    "Mitotic spindle",
    "Microtubule organizing center",
    "Centrosome",
    "Lipid droplets",
    "Plasma membrane",
    "Cell junctions",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Cytoplasmic bodies",
    "Rods & rings",
)


def class_names(task: str = TASK_CELLS) -> tuple[str, ...]:
    """The class names of ``task``, by index."""
    if task == TASK_CELLS:
        return CLASS_NAMES
    if task == TASK_IMAGES:
        return CLASS_NAMES_2018
    raise InputDataError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")


def n_classes(task: str = TASK_CELLS) -> int:
    """The number of classes of ``task`` (19 or 28)."""
    return len(class_names(task))


def parse_labels(text: str, where: str = "", n_classes: int = N_CLASSES, separator: str = "|") -> list[int]:
    """Parse a label string such as ``"7|1|2|0"`` (or ``"7 1 2 0"`` with ``separator=" "``).

    Args:
        text: the label string.
        where: where the string came from (file and row), for the error message.
        n_classes: the task's number of classes (labels are 0..n_classes - 1).
        separator: ``"|"`` (the index and the 2021 tables) or ``" "`` (the 2018 tables).

    Returns:
        The class indices, in the given order, without duplicates.
    """
    labels: list[int] = []
    tokens = str(text).split() if separator == " " else str(text).split(separator)
    if not tokens:
        tokens = [""]  # an empty label is reported like any other unknown label
    for token in tokens:
        token = token.strip()
        if not CLASS_TOKEN.fullmatch(token) or int(token) >= n_classes:
            raise InputDataError(f"{where}: unknown label {token!r} in {text!r} (classes are 0..{n_classes - 1})")
        if int(token) not in labels:
            labels.append(int(token))
    return labels


def labels_to_matrix(label_lists: list[list[int]], n_classes: int = N_CLASSES) -> np.ndarray:
    """Turn per-image class lists into a (n, n_classes) float32 multi-hot matrix."""
    matrix = np.zeros((len(label_lists), n_classes), dtype=np.float32)
    for row, labels in enumerate(label_lists):
        matrix[row, labels] = 1.0
    return matrix


def _read_id_table(path: Path, required: tuple[str, ...], id_column: str = "ID") -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(f"missing table {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputDataError(f"cannot read table {path}: {exc}") from exc
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(table.columns)})")
    empty = table.index[table[id_column].str.strip() == ""]
    if len(empty):
        raise InputDataError(f"{path}: empty {id_column} in row {int(empty[0]) + 2}")
    duplicated = table[id_column][table[id_column].duplicated()]
    if len(duplicated):
        raise InputDataError(f"{path}: duplicate {id_column}(s) {', '.join(sorted(set(duplicated))[:5])}")
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


def read_train_table_2018(path: str | Path) -> pd.DataFrame:
    """Read a 2018 ``train.csv`` (columns ``Id``, ``Target``: space-separated classes 0..27) and check every row.

    Returns:
        The table in the form of :func:`read_train_table`: ``ID``, ``Label`` (pipe-separated), ``labels``.
    """
    path = Path(path)
    table = _read_id_table(path, ("Id", "Target"), "Id")
    n = len(CLASS_NAMES_2018)
    labels = [
        parse_labels(text, f"{path} row {row + 2} (Id {image_id})", n, " ")
        for row, (image_id, text) in enumerate(zip(table["Id"], table["Target"]))
    ]
    return pd.DataFrame({"ID": table["Id"], "Label": ["|".join(map(str, item)) for item in labels], "labels": labels})


def read_test_table_2018(path: str | Path) -> pd.DataFrame:
    """Read a 2018 ``sample_submission.csv`` (``Id``, ``Predicted``); returns its IDs as column ``ID``."""
    table = _read_id_table(Path(path), ("Id",), "Id")
    return pd.DataFrame({"ID": table["Id"]})


def read_label_table(path: str | Path, kind: str, task: str = TASK_CELLS) -> pd.DataFrame:
    """A task's ``train.csv`` (kind ``train``) or ``sample_submission.csv`` (kind ``test``), in one form."""
    class_names(task)  # an unknown task is an error naming it
    if task == TASK_IMAGES:
        return read_train_table_2018(path) if kind == "train" else read_test_table_2018(path)
    return read_train_table(path) if kind == "train" else read_test_table(path)
