"""Cross-validation folds (rule make_folds): multilabel-stratified and seeded.

The fold table's file format is :mod:`hpa_pipeline.io.folds`'.
"""

from __future__ import annotations

import numpy as np

from hpa_pipeline.errors import ConfigError, InputDataError


def make_folds(label_matrix: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign every row to a fold with ``MultilabelStratifiedKFold(shuffle=True, random_state=seed)``.

    Same splitter and seed as the original, so fold f holds the same rows in every stage.

    Args:
        label_matrix: (n, 19) multi-hot labels, in the canonical row order.
        n_folds: number of folds (>= 2).
        seed: the splitter's random state.

    Returns:
        (n,) int64 fold index per row.
    """
    labels = np.asarray(label_matrix)
    if labels.ndim != 2:
        raise InputDataError(f"label matrix of shape {labels.shape}: expected (n_images, n_classes)")
    if n_folds < 2:
        raise ConfigError(f"n_folds = {n_folds}: expected at least 2")
    if len(labels) < n_folds:
        raise ConfigError(f"n_folds = {n_folds} but only {len(labels)} images: every fold needs at least one image")
    # imported here: scikit-learn behind it costs a second and only the folds job needs it
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, valid) in enumerate(splitter.split(np.arange(len(labels)), labels)):
        folds[valid] = fold
    return folds
