"""Per-class thresholds (rule fit_thresholds) that turn image probabilities into labels: fitted on the
out-of-fold image predictions of the submission's members, one per class.

``f1`` maximises each class's F1 on the out-of-fold predictions (as most 2018 solutions did);
``label_ratio`` picks the threshold at which the share of images predicted positive matches the share of
training images carrying the class (bestfitting's method; here set on the out-of-fold predictions);
``fixed`` uses one value for every class. A class without a positive training image keeps 0.5: no
threshold can be fitted to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.folds import read_labelled_images
from hpa_pipeline.io.predictions import average_predictions, read_predictions, select_images
from hpa_pipeline.io.thresholds import write_thresholds
from hpa_pipeline.kaggle.images2018 import per_class_f1
from hpa_pipeline.labels import class_names

log = logging.getLogger(__name__)

METHODS = ("f1", "label_ratio", "fixed")
#: The threshold of a class nothing can be fitted to (no positive training image).
FALLBACK = 0.5


def best_f1_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises F1 of one class (``scores >= threshold`` predicts it).

    Every distinct score is a candidate cut; the threshold lies halfway between the lowest score predicted
    positive and the next lower score (half the lowest score when all are positive). Among equal F1 the
    highest threshold wins (fewer positives).

    Args:
        truth: (n,) booleans.
        scores: (n,) probabilities.

    Returns:
        The threshold, or 0.5 when ``truth`` has no positive.
    """
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not truth.any():
        return FALLBACK
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_truth = scores[order], truth[order]
    # the last position of each run of equal scores: a cut never splits a tie
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(scores) - 1]
    true_positives = np.cumsum(sorted_truth)[ends]
    f1 = 2 * true_positives / (truth.sum() + ends + 1)
    best = int(np.argmax(f1))
    cut = ends[best]
    lower = sorted_scores[cut + 1] if cut + 1 < len(scores) else 0.0
    return float((sorted_scores[cut] + lower) / 2)


def label_ratio_threshold(scores: np.ndarray, ratio: float) -> float:
    """The threshold at which the share of ``scores`` at or above it is closest to ``ratio`` (from above)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if ratio <= 0 or not len(scores):
        return FALLBACK
    k = min(len(scores), max(1, int(round(ratio * len(scores)))))
    lower = scores[k] if k < len(scores) else 0.0
    return float((scores[k - 1] + lower) / 2)


def fit_thresholds(truth: np.ndarray, scores: np.ndarray, method: str = "f1", value: float = 0.5) -> np.ndarray:
    """(C,) thresholds for (n, C) truth and scores by ``method`` (``f1``, ``label_ratio`` or ``fixed``)."""
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape:
        raise InputDataError(f"truth {truth.shape} and scores {scores.shape} differ in shape")
    if method == "fixed":
        return np.full(truth.shape[1], float(value))
    if method == "f1":
        return np.array([best_f1_threshold(truth[:, c], scores[:, c]) for c in range(truth.shape[1])])
    if method == "label_ratio":
        ratios = truth.mean(axis=0) if len(truth) else np.zeros(truth.shape[1])
        return np.array([label_ratio_threshold(scores[:, c], ratios[c]) for c in range(truth.shape[1])])
    raise InputDataError(f"unknown threshold method {method!r} (methods: {', '.join(METHODS)})")


def mean_image_probs(paths: Sequence[Path], keys: Sequence[tuple[str, str]]) -> np.ndarray:
    """(len(keys), C) image probabilities: the equal-weight average of prediction stores (views first),
    in the order of ``keys`` ((dataset, ID) pairs)."""
    sources = [str(path) for path in paths]
    average = average_predictions([read_predictions(path) for path in paths], sources)
    return select_images(average, keys, " + ".join(sources)).image_probs[:, :, 0].astype(np.float64)


def fit_threshold_file(
    oof_paths: Sequence[Path],
    index_paths: Sequence[Path],
    folds_paths: Sequence[Path],
    out_path: Path,
    task: str,
    method: str = "f1",
    value: float = 0.5,
) -> np.ndarray:
    """Fit the thresholds on the average of the members' out-of-fold stores and write them.

    Returns:
        The thresholds.
    """
    names = class_names(task)
    images = read_labelled_images(index_paths, folds_paths, len(names))
    scores = mean_image_probs(oof_paths, images.image_keys())
    truth = images.labels > 0.5
    thresholds = fit_thresholds(truth, scores, method, value)
    f1 = per_class_f1(truth, scores >= thresholds)
    write_thresholds(out_path, thresholds, names, f1, method)
    log.info("%s thresholds of %d classes -> %s", method, len(names), out_path)
    return thresholds
