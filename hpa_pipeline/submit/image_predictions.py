"""Image-level predictions of the test images (rule image_predictions, both tasks): the submission's
members averaged over models and folds, with per-class thresholds applied, in
``results/image_predictions.csv``; and the 2018 task's submission made from it (rule make_submission).

``results/image_predictions.csv`` columns: ``ID``, ``labels`` (space-separated class indices at the
thresholds), then ``prob_0`` .. ``prob_{C-1}`` (the averaged probabilities), one row per test image in
the index's order.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import write_text_atomic
from hpa_pipeline.io.index import index_keys, read_index
from hpa_pipeline.io.thresholds import read_thresholds
from hpa_pipeline.kaggle.images2018 import format_labels, write_submission_2018
from hpa_pipeline.labels import CLASS_TOKEN, class_names, read_label_table
from hpa_pipeline.submit.thresholds import mean_image_probs

log = logging.getLogger(__name__)


def write_image_predictions(path: Path, ids: Sequence[str], probs: np.ndarray, thresholds: np.ndarray) -> None:
    """Write the image predictions CSV atomically (columns in the module docstring)."""
    if probs.shape != (len(ids), len(thresholds)):
        raise InputDataError(f"probabilities {probs.shape} do not fit {len(ids)} images x {len(thresholds)} classes")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["ID", "labels", *(f"prob_{c}" for c in range(len(thresholds)))])
    for image_id, row in zip(ids, probs):
        writer.writerow([image_id, format_labels(row >= thresholds), *(f"{p:.6f}" for p in row)])
    write_text_atomic(path, text.getvalue())


def read_image_predictions(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ``image_predictions.csv``: (ids, (n, C) probabilities, (n, C) boolean labels).

    Raises:
        InputDataError: naming the file and row of the first problem (field count, an ID twice, a label
            that is not a class index, a probability that is not a number in [0, 1]).
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing image predictions {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][:2] != ["ID", "labels"]:
        raise InputDataError(f"{path} row 1: not an image predictions table (columns ID, labels, prob_...)")
    n = len(rows[0]) - 2
    ids, probs, labels = [], np.zeros((len(rows) - 1, n)), np.zeros((len(rows) - 1, n), bool)
    first_row: dict[str, int] = {}
    for position, row in enumerate(rows[1:]):
        number = position + 2
        if len(row) != n + 2:
            raise InputDataError(f"{path} row {number}: {len(row)} fields, expected {n + 2}")
        image_id = row[0]
        if image_id in first_row:
            raise InputDataError(
                f"{path} row {number}: ID {image_id} occurs twice (first in row {first_row[image_id]})"
            )
        first_row[image_id] = number
        ids.append(image_id)
        for column, value in enumerate(row[2:]):
            probability = _probability(value)
            if probability is None:
                raise InputDataError(
                    f"{path} row {number} (ID {image_id}): prob_{column} {value!r} is not a number in [0, 1]"
                )
            probs[position, column] = probability
        for token in row[1].split():
            if not CLASS_TOKEN.fullmatch(token) or int(token) >= n:
                raise InputDataError(
                    f"{path} row {number} (ID {image_id}): label {token!r} is not a class index in 0..{n - 1}"
                )
            labels[position, int(token)] = True
    return ids, probs, labels


def _probability(text: str) -> float | None:
    """The probability a cell holds, or None when it is not a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def make_image_predictions(
    prediction_paths: Sequence[Path], index_path: Path, thresholds_path: Path, out_path: Path, task: str
) -> None:
    """Average the members' test stores (views, then models and folds) and write the thresholded table."""
    index = read_index(index_path)
    ids = index["ID"].tolist()
    probs = mean_image_probs(prediction_paths, index_keys(index))
    thresholds = read_thresholds(thresholds_path, class_names(task))
    if probs.shape[1] != len(thresholds):
        raise InputDataError(f"the predictions have {probs.shape[1]} classes, {thresholds_path} {len(thresholds)}")
    write_image_predictions(out_path, ids, probs, thresholds)
    log.info("%d test images -> %s", len(ids), out_path)


def make_submission_2018(image_predictions: Path, table_path: Path, out_path: Path) -> None:
    """The 2018 submission ``Id,Predicted``, in the sample submission's order, from the thresholded labels."""
    ids, _, labels = read_image_predictions(image_predictions)
    rows = {image_id: row for image_id, row in zip(ids, labels)}
    order = read_label_table(table_path, "test", "hpa2018-images")["ID"].tolist()
    missing = [image_id for image_id in order if image_id not in rows]
    if missing:
        raise InputDataError(f"{image_predictions} lacks test image(s) {', '.join(missing[:5])} of {table_path}")
    write_submission_2018(out_path, order, np.stack([rows[image_id] for image_id in order]))
    log.info("%d images -> %s", len(order), out_path)
