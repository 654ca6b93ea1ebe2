"""Member weights of an ensemble or of the submission (``ensemble.method: weights``): one CSV per
combination, ``results/ensembles/{name}/weights.csv`` and ``results/submission_weights.csv``.

Columns: ``member`` (a model name), ``weight`` (non-negative, summing to 1 over the rows, written so that
it reads back exactly), ``member_oof_score`` (the member's out-of-fold score alone) and
``combined_oof_score`` (the weighted combination's, the same on every row).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import write_text_atomic

WEIGHT_COLUMNS: tuple[str, ...] = ("member", "weight", "member_oof_score", "combined_oof_score")


def write_member_weights(
    path: str | Path, members: Sequence[str], weights: np.ndarray, member_scores: np.ndarray, combined_score: float
) -> None:
    """Write the weights CSV atomically (see the module docstring for its columns)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(WEIGHT_COLUMNS)
    for member, weight, score in zip(members, weights, member_scores, strict=True):
        # repr: the shortest text that reads back as the same float, so the fitted combination is reproduced
        writer.writerow([member, repr(float(weight)), f"{score:.6f}", f"{combined_score:.6f}"])
    write_text_atomic(path, text.getvalue())


def read_member_weights(path: str | Path, members: Sequence[str]) -> np.ndarray:
    """The weights of ``members``, in that order, from a CSV that :func:`write_member_weights` wrote.

    Raises:
        InputDataError: a missing file or column, a row without a non-negative number, or members that
            differ from the file's (fitted for another set of models: rerun the fit).
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing member weights {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"member", "weight"} <= set(reader.fieldnames):
            raise InputDataError(f"{path}: expected the columns {', '.join(WEIGHT_COLUMNS)}")
        found: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            try:
                weight = float(row["weight"])
            except (TypeError, ValueError) as exc:
                raise InputDataError(f"{path} row {line}: weight {row['weight']!r} is not a number") from exc
            if not weight >= 0:
                raise InputDataError(f"{path} row {line}: weight {weight} is negative")
            found[row["member"]] = weight
    if sorted(found) != sorted(members):
        raise InputDataError(
            f"{path} holds the weights of {', '.join(found) or 'no member'}, not of {', '.join(members)} "
            "(fitted for other members: rerun fit_weights)"
        )
    return np.array([found[member] for member in members])
