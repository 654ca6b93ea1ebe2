"""Image-level mean average precision of training's per-epoch validation. Its macro F1 is the project's one
definition, :func:`hpa_pipeline.kaggle.images2018.macro_f1`; the 2021 competition metric lives in
:mod:`hpa_pipeline.kaggle.metric`."""

from __future__ import annotations

import numpy as np


def _average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the step precision-recall curve (sklearn's average_precision_score), ties grouped."""
    order = np.argsort(-scores, kind="mergesort")
    targets, scores = targets[order], scores[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(targets)[last_of_each_score]
    precision = true_positives / (last_of_each_score + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro average precision over the classes that have a positive (NaN if none has)."""
    present = np.flatnonzero(targets.sum(axis=0) > 0)
    if not len(present):
        return float("nan")
    return float(np.mean([_average_precision(targets[:, c], scores[:, c]) for c in present]))
