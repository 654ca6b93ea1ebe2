"""Cross-validation folds (rule make_folds): multilabel-stratified, seeded, duplicates kept together.

Each training dataset gets its own folds, as in the original. Images that the duplicates step put in one
group (the same field, perhaps resized or re-encoded) are one unit of the split, so that no held-out
prediction, and hence no pseudo label, comes from a model that trained on the same field. A group that
spans datasets takes, in a later dataset, the fold that an earlier dataset gave it.

The fold table's file format is :mod:`hpa_pipeline.io.folds`'.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.labels import N_CLASSES, labels_to_matrix, parse_labels


def make_folds(
    label_matrix: np.ndarray,
    n_folds: int,
    seed: int,
    groups: np.ndarray | None = None,
    fixed: np.ndarray | None = None,
) -> np.ndarray:
    """Assign every row to a fold with ``MultilabelStratifiedKFold(shuffle=True, random_state=seed)``.

    Without groups, the same splitter and seed as the original, so fold f holds the same rows in every
    stage. With groups, the splitter stratifies units (a group, or a row outside every group) by the
    union of their rows' labels.

    Args:
        label_matrix: (n, 19) multi-hot labels, in the canonical row order.
        n_folds: number of folds (>= 2).
        seed: the splitter's random state.
        groups: (n,) int group of each row, -1 for a row in no group; rows of a group share a fold.
        fixed: (n,) int fold a row must take (its group's fold in an earlier dataset), -1 for free rows.

    Returns:
        (n,) int64 fold index per row.
    """
    labels = np.asarray(label_matrix)
    if labels.ndim != 2:
        raise InputDataError(f"label matrix of shape {labels.shape}: expected (n_images, n_classes)")
    if n_folds < 2:
        raise ConfigError(f"n_folds = {n_folds}: expected at least 2")
    n = len(labels)
    groups = np.full(n, -1, np.int64) if groups is None else np.asarray(groups, np.int64)
    fixed = np.full(n, -1, np.int64) if fixed is None else np.asarray(fixed, np.int64)
    # a row outside every group is a unit of its own; units are numbered in order of their first row
    keys = np.where(groups >= 0, groups, groups.max(initial=-1) + 1 + np.arange(n))
    _, first_rows, unit_of_row = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first_rows, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unit_of_row = rank[unit_of_row]
    n_units = len(order)
    unit_labels = np.zeros((n_units, labels.shape[1]), labels.dtype)
    np.maximum.at(unit_labels, unit_of_row, labels)
    unit_fixed = np.full(n_units, -1, np.int64)
    np.maximum.at(unit_fixed, unit_of_row, fixed)
    free = np.flatnonzero(unit_fixed < 0)
    if len(free) < n_folds:
        raise ConfigError(
            f"n_folds = {n_folds} but only {len(free)} images (or duplicate groups) to split: "
            "every fold needs at least one"
        )
    # imported here: scikit-learn behind it costs a second and only the folds job needs it
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    unit_folds = unit_fixed.copy()
    for fold, (_, valid) in enumerate(splitter.split(free, unit_labels[free])):
        unit_folds[free[valid]] = fold
    return unit_folds[unit_of_row]


def duplicate_constraints(
    dataset: str,
    ids: list[str],
    duplicate_groups: pd.DataFrame | None,
    earlier_folds: Mapping[str, pd.DataFrame],
    drop_test_duplicates: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The group, forced fold and trainable flag of each image of ``dataset`` from the duplicate groups.

    Args:
        dataset: the dataset being split.
        ids: its image IDs in index order.
        duplicate_groups: the duplicates table (columns group, dataset, ID), or None.
        earlier_folds: fold tables (ID, fold) of the training datasets split before this one, by name.
        drop_test_duplicates: mark images that share a group with a test image as not trainable.

    Returns:
        (groups, fixed, trainable) arrays of length ``len(ids)`` as :func:`make_folds` takes them.
    """
    n = len(ids)
    groups = np.full(n, -1, np.int64)
    fixed = np.full(n, -1, np.int64)
    trainable = np.ones(n, bool)
    if duplicate_groups is None or not len(duplicate_groups):
        return groups, fixed, trainable
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    mine = duplicate_groups[duplicate_groups["dataset"] == dataset]
    for image_id, group in zip(mine["ID"], mine["group"]):
        if image_id not in row_of:
            raise InputDataError(f"the duplicates table lists {dataset}/{image_id}, which the index of {dataset} lacks")
        groups[row_of[image_id]] = int(group)
    fold_of_group: dict[int, int] = {}
    for name, table in earlier_folds.items():
        fold_of = dict(zip(table["ID"], table["fold"]))
        members = duplicate_groups[duplicate_groups["dataset"] == name]
        for image_id, group in zip(members["ID"], members["group"]):
            if image_id in fold_of:
                fold_of_group.setdefault(int(group), int(fold_of[image_id]))
    for row in np.flatnonzero(groups >= 0):
        fixed[row] = fold_of_group.get(int(groups[row]), -1)
    if drop_test_duplicates:
        test_groups = set(duplicate_groups.loc[duplicate_groups["dataset"] == "test", "group"].astype(int))
        trainable = ~np.isin(groups, list(test_groups))
    return groups, fixed, trainable


def fold_table(
    index: pd.DataFrame,
    n_folds: int,
    seed: int,
    duplicate_groups: pd.DataFrame | None = None,
    earlier_folds: Mapping[str, pd.DataFrame] | None = None,
    drop_test_duplicates: bool = False,
    source: str = "index",
    n_classes: int = N_CLASSES,
) -> pd.DataFrame:
    """The fold table of one training dataset (rule make_folds).

    Args:
        index: the dataset's image index (ID, Label, dataset).
        n_folds, seed: as :func:`make_folds`.
        duplicate_groups, earlier_folds, drop_test_duplicates: as :func:`duplicate_constraints`.
        source: the index's path, for messages.
        n_classes: the task's number of classes.

    Returns:
        Columns ID, fold, trainable in index order.
    """
    ids = index["ID"].tolist()
    dataset = str(index["dataset"].iloc[0]) if len(index) else ""
    labels = labels_to_matrix(
        [parse_labels(text, f"{source} (ID {i})", n_classes) for i, text in zip(ids, index["Label"])], n_classes
    )
    groups, fixed, trainable = duplicate_constraints(
        dataset, ids, duplicate_groups, earlier_folds or {}, drop_test_duplicates
    )
    folds = make_folds(labels, n_folds, seed, groups=groups, fixed=fixed)
    return pd.DataFrame({"ID": ids, "fold": folds, "trainable": trainable})
