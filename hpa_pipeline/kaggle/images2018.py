"""The 2018 competition's own formats (Human Protein Atlas Image Classification): the submission
``Id,Predicted`` (space-separated class indices 0..27 per test image, possibly none), its validator, and
the project's one macro F1 (:func:`macro_f1`: training's validation, ``evaluate``, the thresholds' report),
with the Kaggle 2018 definition beside it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file
from hpa_pipeline.labels import CLASS_NAMES_2018, CLASS_TOKEN

N_CLASSES_2018 = len(CLASS_NAMES_2018)
SUBMISSION_COLUMNS = ("Id", "Predicted")


def format_labels(labels: np.ndarray) -> str:
    """A (C,) boolean row -> ``"0 5 25"`` (ascending class indices; empty when none)."""
    return " ".join(str(int(c)) for c in np.flatnonzero(labels))


def write_submission_2018(path: str | Path, ids: Sequence[str], labels: np.ndarray) -> None:
    """Write ``Id,Predicted`` atomically, one row per image in the order of ``ids``.

    Args:
        path: the CSV to write.
        ids: the test image IDs (the sample submission's order).
        labels: (n, 28) boolean predicted labels.
    """
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != (len(ids), N_CLASSES_2018):
        raise InputDataError(f"labels of shape {labels.shape}: expected ({len(ids)}, {N_CLASSES_2018})")
    with atomic_file(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        for image_id, row in zip(ids, labels):
            writer.writerow([image_id, format_labels(row)])


@dataclass
class Submission2018Report:
    """What a valid 2018 submission holds."""

    images: int
    labels: int
    empty_images: int
    images_per_class: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def read_submission_2018(path: str | Path) -> dict[str, list[int]]:
    """Read and check an ``Id,Predicted`` CSV row by row.

    Returns:
        Image ID -> predicted classes, in file order.

    Raises:
        InputDataError: naming the file and row of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing submission {path}")
    rows: dict[str, list[int]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(column.strip() for column in header) != SUBMISSION_COLUMNS:
            raise InputDataError(f"{path} row 1: header {header!r}, expected {','.join(SUBMISSION_COLUMNS)}")
        for number, row in enumerate(reader, start=2):
            where = f"{path} row {number}"
            if len(row) != 2:
                raise InputDataError(f"{where}: {len(row)} fields, expected 2 (Id,Predicted)")
            image_id, text = row[0].strip(), row[1]
            if not image_id:
                raise InputDataError(f"{where}: empty Id")
            if image_id in rows:
                raise InputDataError(f"{where}: Id {image_id} occurs twice")
            classes = []
            for token in text.split():
                if not CLASS_TOKEN.fullmatch(token) or int(token) >= N_CLASSES_2018:
                    raise InputDataError(
                        f"{where} (Id {image_id}): class {token!r} is not an integer in 0..{N_CLASSES_2018 - 1}"
                    )
                if int(token) in classes:
                    raise InputDataError(f"{where} (Id {image_id}): class {token} occurs twice")
                classes.append(int(token))
            rows[image_id] = classes
    return rows


def validate_submission_2018(path: str | Path, expected_ids: Sequence[str]) -> Submission2018Report:
    """Check a 2018 submission against the sample submission's IDs (every one exactly once, no others)."""
    rows = read_submission_2018(path)
    missing = [image_id for image_id in expected_ids if image_id not in rows]
    if missing:
        raise InputDataError(
            f"{path}: no row for test image(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    expected = set(expected_ids)
    extra = [image_id for image_id in rows if image_id not in expected]
    if extra:
        raise InputDataError(f"{path}: Id(s) not in the sample submission: {', '.join(extra[:5])}")
    per_class = np.zeros(N_CLASSES_2018, dtype=int)
    for classes in rows.values():
        per_class[classes] += 1
    return Submission2018Report(
        images=len(rows),
        labels=int(per_class.sum()),
        empty_images=sum(1 for classes in rows.values() if not classes),
        images_per_class=per_class.tolist(),
    )


def labels_matrix(rows: Mapping[str, Sequence[int]], ids: Sequence[str], n_classes: int) -> np.ndarray:
    """(len(ids), n_classes) boolean matrix of the classes of ``ids`` (each must be in ``rows``)."""
    matrix = np.zeros((len(ids), n_classes), dtype=bool)
    for position, image_id in enumerate(ids):
        if image_id not in rows:
            raise InputDataError(f"no labels for image {image_id}")
        matrix[position, list(rows[image_id])] = True
    return matrix


def per_class_f1(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(C,) F1 of each class; NaN where the class occurs neither in the truth nor in the predictions."""
    truth, predicted = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    if truth.shape != predicted.shape:
        raise InputDataError(f"truth {truth.shape} and predictions {predicted.shape} differ in shape")
    true_positives = (truth & predicted).sum(axis=0)
    denominator = truth.sum(axis=0) + predicted.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positives / np.maximum(denominator, 1), np.nan)


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The project's macro F1: the mean F1 over the classes with at least one positive in ``truth``.

    One definition everywhere: training's ``valid_image_macro_f1``, rule ``evaluate`` of the 2018 task
    and the fitted thresholds' report. NaN when no class has a positive.

    Kaggle 2018 scored scikit-learn's ``f1_score(average="macro")`` over all 28 classes. There a class
    without positives in the truth scores 0 whatever is predicted (it can have no true positive), so
    Kaggle's figure is this one times (classes with positives) / 28: the same order of any two
    predictions of the same images, and the same figure when every class occurs (the full test set).
    Averaging over the classes present keeps small splits (a validation fold, the demo's 24 test images)
    from being scaled down by the classes they lack. Averaging over the classes in the truth *or* the
    predictions would charge a prediction of an absent class, which Kaggle does not, and order
    predictions differently from Kaggle.

    Args:
        truth: (n, C) boolean true labels.
        predicted: (n, C) boolean predicted labels.
    """
    scores = per_class_f1(truth, predicted)
    present = np.asarray(truth, dtype=bool).sum(axis=0) > 0
    return float(scores[present].mean()) if present.any() else float("nan")
