"""The per-class thresholds file (``results/thresholds.csv``, rule fit_thresholds): where an image or cell
probability makes a label. Written by the submit stage, read by the submit and bundle stages."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import write_text_atomic


def write_thresholds(path: Path, thresholds: np.ndarray, names: Sequence[str], f1: np.ndarray, method: str) -> None:
    """The thresholds CSV: ``class``, ``name``, ``threshold``, ``oof_f1`` (F1 at it on the OOF), ``method``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["class", "name", "threshold", "oof_f1", "method"])
    for c, (threshold, name) in enumerate(zip(thresholds, names)):
        writer.writerow([c, name, f"{threshold:.6f}", "" if np.isnan(f1[c]) else f"{f1[c]:.6f}", method])
    write_text_atomic(path, text.getvalue())


def read_thresholds(path: str | Path, names: Sequence[str]) -> np.ndarray:
    """The thresholds of a CSV written by :func:`write_thresholds`, in class order.

    Args:
        path: the thresholds CSV.
        names: the task's class names; row k must name class k.

    Raises:
        InputDataError: naming the file (and row): missing, another number of classes, a row of another
            class, a threshold that is no number in 0..1.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing thresholds {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != len(names):
        raise InputDataError(f"{path}: {len(rows)} thresholds, the task has {len(names)} classes")
    values = []
    for number, (row, name) in enumerate(zip(rows, names), start=2):
        if row.get("name") != name:
            raise InputDataError(f"{path} row {number}: class {row.get('name')!r}, expected {name!r}")
        try:
            value = float(row["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputDataError(f"{path} row {number}: no numeric threshold") from exc
        if not 0 <= value <= 1:
            raise InputDataError(f"{path} row {number}: threshold {value} outside 0..1")
        values.append(value)
    return np.array(values)
