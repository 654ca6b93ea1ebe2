"""Prediction stores: per-cell and per-image probabilities with the cell identity that indexes them.

Cell identity is (dataset, image ID, mask value). Everything that combines predictions (folds, models,
ensembles, pseudo labels, the submission) joins on that identity and reports any mismatch, never
relying on positions alone. How members are combined is config key ``ensemble.method``
(:func:`combine_predictions`): ``mean``, ``rank_mean`` or ``weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.cells import CellTable, concat_cell_tables
from hpa_pipeline.io.stores import (
    TABLE_COMPRESSORS,
    atomic_store,
    open_store,
    read_strings,
    write_strings,
    write_table,
)


@dataclass
class PredictionSet:
    """Predictions for the cells of a sequence of images.

    Attributes:
        cells: the images and their cells (identity only).
        probs: (n_cells, 19, n_views) float32 cell probabilities (views = TTA, or 1 after averaging).
        image_probs: (n, 19, n_views) float32 image probabilities.
    """

    cells: CellTable
    probs: np.ndarray
    image_probs: np.ndarray

    @property
    def ids(self) -> list[str]:
        return self.cells.ids

    @property
    def offsets(self) -> np.ndarray:
        return self.cells.offsets

    @property
    def instance(self) -> np.ndarray:
        return self.cells.instance

    @property
    def n_cells(self) -> int:
        return self.cells.n_cells

    def mean_views(self) -> PredictionSet:
        """Average the TTA views away (keeps a views axis of length 1)."""
        return PredictionSet(
            self.cells,
            self.probs.mean(axis=2, keepdims=True, dtype=np.float64).astype(np.float32),
            self.image_probs.mean(axis=2, keepdims=True, dtype=np.float64).astype(np.float32),
        )

    def image_rows(self) -> dict[tuple[str, str], int]:
        """Row of every image, by (dataset, image ID)."""
        return {key: row for row, key in enumerate(self.cells.image_keys())}


def write_predictions(path: str | Path, predictions: PredictionSet, **attrs: object) -> None:
    """Write a prediction store atomically."""
    with atomic_store(path, "predictions", **attrs) as group:
        write_strings(group, "ids", predictions.ids)
        write_strings(group, "datasets", predictions.cells.datasets)
        write_table(group, "offsets", predictions.offsets.astype(np.int64))
        write_table(group, "instance", predictions.instance.astype(np.int32))
        for name in ("probs", "image_probs"):
            values = np.ascontiguousarray(getattr(predictions, name), dtype=np.float32)
            chunk_rows = max(1, min(len(values), 65536))
            array = group.create_array(
                name,
                shape=values.shape,
                dtype="float32",
                chunks=(chunk_rows, *values.shape[1:]),
                compressors=TABLE_COMPRESSORS,
            )
            if values.size:
                array[...] = values


def read_predictions(path: str | Path) -> PredictionSet:
    """Read a prediction store."""
    group = open_store(path, "predictions")
    if "datasets" not in group:
        raise InputDataError(f"{path} was written by hpa-pipeline < 0.3 (no dataset of its images): rebuild it")
    cells = CellTable(
        read_strings(group, "ids"),
        group["offsets"][...],
        group["instance"][...],
        datasets=read_strings(group, "datasets"),
    )
    return PredictionSet(cells, group["probs"][...], group["image_probs"][...])


def concat_predictions(parts: Sequence[PredictionSet]) -> PredictionSet:
    """Concatenate prediction sets image-wise (same number of views)."""
    if not parts:
        raise InputDataError("nothing to concatenate")
    views = {part.probs.shape[2] for part in parts}
    if len(views) > 1:
        raise InputDataError(f"prediction sets with different numbers of views {sorted(views)}")
    return PredictionSet(
        concat_cell_tables([part.cells for part in parts]),
        np.concatenate([part.probs for part in parts]),
        np.concatenate([part.image_probs for part in parts]),
    )


def image_name(key: tuple[str, str]) -> str:
    """``dataset/ID``, how messages name an image."""
    return "/".join(key)


def select_images(
    predictions: PredictionSet, keys: Sequence[tuple[str, str]], source: str = "predictions"
) -> PredictionSet:
    """The predictions of the images ``keys`` ((dataset, ID) pairs), in that order (each present exactly once)."""
    rows = predictions.image_rows()
    if len(rows) != len(predictions.ids):
        raise InputDataError(f"{source}: an image occurs more than once")
    missing = [image_name(key) for key in keys if key not in rows]
    if missing:
        raise InputDataError(f"{source} lacks image(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    order = np.array([rows[key] for key in keys], dtype=np.int64)
    return PredictionSet(
        predictions.cells.subset(order),
        predictions.probs[predictions.cells.cell_rows(order)],
        predictions.image_probs[order],
    )


def check_same_cells(predictions: PredictionSet, cells: CellTable, source: str) -> None:
    """Raise unless ``predictions`` holds exactly the images and cells of ``cells``, in the same order."""
    ids, offsets, instance = cells.ids, cells.offsets, cells.instance
    if predictions.cells.image_keys() != cells.image_keys():
        raise InputDataError(
            f"{source}: its images differ from the expected ones (first difference at "
            f"{_first_difference(predictions.cells.image_keys(), cells.image_keys())})"
        )
    if not np.array_equal(predictions.offsets, offsets) or not np.array_equal(predictions.instance, instance):
        counts = np.diff(predictions.offsets)
        expected = np.diff(offsets)
        for row, image_id in enumerate(ids):
            mine = predictions.instance[predictions.offsets[row] : predictions.offsets[row + 1]]
            theirs = instance[offsets[row] : offsets[row + 1]]
            if counts[row] != expected[row] or not np.array_equal(mine, theirs):
                raise InputDataError(
                    f"{source}: the cells of image {image_id} differ ({len(mine)} cells {mine[:8].tolist()} vs "
                    f"{len(theirs)} expected {theirs[:8].tolist()}); were the stores built from different masks?"
                )


def align_to_cells(predictions: PredictionSet, cells: CellTable, source: str) -> PredictionSet:
    """Reorder ``predictions`` to the images of ``cells`` and check that every image has the same cells."""
    aligned = select_images(predictions, cells.image_keys(), source)
    check_same_cells(aligned, cells, source)
    return aligned


def average_predictions(members: Sequence[PredictionSet], sources: Sequence[str]) -> PredictionSet:
    """Equal-weight average of several prediction sets over the same cells (TTA views averaged first).

    The first member fixes the image order; every other member is aligned to it by identity.
    """
    if not members:
        raise InputDataError("an ensemble needs at least one member")
    reference = members[0].mean_views()
    total_cells = reference.probs.astype(np.float64)
    total_images = reference.image_probs.astype(np.float64)
    for member, source in zip(members[1:], sources[1:]):
        aligned = align_to_cells(member.mean_views(), reference.cells, source)
        total_cells += aligned.probs
        total_images += aligned.image_probs
    count = len(members)
    return PredictionSet(
        reference.cells, (total_cells / count).astype(np.float32), (total_images / count).astype(np.float32)
    )


#: The values of config key ``ensemble.method``: how an ensemble or the submission combines its members.
COMBINE_METHODS: tuple[str, ...] = ("mean", "rank_mean", "weights")


def store_model(path: str | Path) -> str:
    """The model whose predictions a store holds (its ``model`` attribute: predict and concat write it)."""
    model = open_store(path, "predictions").attrs.get("model")
    if not model:
        raise InputDataError(f"{path}: a prediction store without its model's name (rebuild it)")
    return str(model)


def rank_matched(members: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Order from the members' ranks, scale from their plain mean: the ``rank_mean`` combination.

    Per class (column), each member's scores become normalised ranks over all rows (ties averaged,
    0 = lowest, 1 = highest), and the ranks are averaged with ``weights``. The row with the k-th smallest
    averaged rank then receives the k-th smallest value of the plain (equal-weight) mean of the members;
    equal averaged ranks are ordered by the plain mean, then by row. So each class keeps exactly the
    plain mean's values, only reassigned.

    Why: the competition metric ranks each class's cells across all images, so averaging the
    probabilities of differently calibrated models lets the model with the widest spread decide the
    order. Averaging ranks gives every member its weight in the order, whatever its scale. Pseudo labels
    and per-class thresholds need probability-like values, hence the values of the mean.

    Args:
        members: (n, C) scores of each member, rows aligned.
        weights: (len(members),) non-negative weights summing to 1.

    Returns:
        (n, C) float64 combined scores.
    """
    from scipy.stats import rankdata  # scipy.stats takes most of a second to import: only here

    weights = np.asarray(weights, dtype=np.float64)
    n_rows, n_classes = np.shape(members[0])
    rows = np.arange(n_rows)
    combined = np.empty((n_rows, n_classes))
    for c in range(n_classes):  # one class at a time: a split's cells times members fit in memory
        scores = np.stack([np.asarray(member)[:, c] for member in members]).astype(np.float64)
        plain = scores.mean(axis=0)
        if n_rows < 2:
            combined[:, c] = plain
            continue
        average_rank = weights @ ((rankdata(scores, method="average", axis=1) - 1) / (n_rows - 1))
        combined[np.lexsort((rows, plain, average_rank)), c] = np.sort(plain)
    return combined


def combine_predictions(
    members: Sequence[PredictionSet],
    sources: Sequence[str],
    method: str = "mean",
    weights: Sequence[float] | None = None,
) -> PredictionSet:
    """Combine members' predictions of the same cells by ``method`` (TTA views averaged first).

    ``mean`` is exactly :func:`average_predictions`. ``weights`` is the mean weighted by ``weights``
    (non-negative, normalised to sum 1). ``rank_mean`` is :func:`rank_matched` (with ``weights`` if
    given, else equal), applied to the cells' and, separately, to the images' probabilities of the whole
    split. The first member fixes the image order; every other member is aligned to it by identity.

    Raises:
        ConfigError: an unknown method, weights with ``mean``, or ``weights`` without them.
        InputDataError: members with different cells (naming the image), or weights of another length.
    """
    if method not in COMBINE_METHODS:
        raise ConfigError(f"ensemble.method: unknown method {method!r} (methods: {', '.join(COMBINE_METHODS)})")
    if method == "mean":
        if weights is not None:
            raise ConfigError("ensemble.method mean averages with equal weights: no weights expected")
        return average_predictions(members, sources)
    if method == "weights" and weights is None:
        raise ConfigError("ensemble.method weights needs the members' fitted weights")
    if not members:
        raise InputDataError("an ensemble needs at least one member")
    shares = np.full(len(members), 1 / len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    if shares.shape != (len(members),) or (shares < 0).any() or not shares.sum() > 0:
        raise InputDataError(
            f"weights {np.asarray(weights).tolist()} do not fit {len(members)} members (non-negative, not all 0)"
        )
    shares = shares / shares.sum()
    reference = members[0].mean_views()
    aligned = [reference] + [
        align_to_cells(member.mean_views(), reference.cells, source) for member, source in zip(members[1:], sources[1:])
    ]

    def combine(name: str) -> np.ndarray:
        values = [getattr(member, name)[:, :, 0] for member in aligned]
        if method == "weights":
            combined = sum(share * value.astype(np.float64) for share, value in zip(shares, values))
        else:
            combined = rank_matched(values, shares)
        return np.asarray(combined, dtype=np.float32)[:, :, None]

    return PredictionSet(reference.cells, combine("probs"), combine("image_probs"))


def _first_difference(left: Sequence[tuple[str, str]], right: Sequence[tuple[str, str]]) -> str:
    for position, (a, b) in enumerate(zip(left, right)):
        if a != b:
            return f"position {position}: {image_name(a)!r} vs {image_name(b)!r}"
    return f"lengths {len(left)} vs {len(right)}"
