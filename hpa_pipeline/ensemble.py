"""The ensemble stage (rules/ensemble.smk): models' out-of-fold predictions combined by ``ensemble.method``
(the next stage's pseudo labels), and the member weights of method ``weights``.

Members are joined by cell identity (image ID, mask value); two members with different cells are an
error naming the image.

Method ``weights`` fits non-negative weights summing to 1 on the members' OUT-OF-FOLD predictions of the
training images, maximising a score that real data allows too, where only image labels are known: the
mean over classes of the average precision of the cell scores against weak labels (every cell carries
its image's labels). The fitted weights are then applied to the test predictions and scored there, on
images no fit has seen: fit out of fold, score on test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.folds import read_labelled_images
from hpa_pipeline.io.predictions import (
    PredictionSet,
    align_to_cells,
    combine_predictions,
    read_predictions,
    select_images,
    store_model,
    write_predictions,
)
from hpa_pipeline.io.weights import read_member_weights, write_member_weights
from hpa_pipeline.scores import mean_average_precision

log = logging.getLogger(__name__)

#: Coordinate ascent's steps: the share of the weight moved per try, halved until the finest.
WEIGHT_STEPS: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625)
#: Passes over the members per step at most (each pass that improves nothing ends the step).
MAX_PASSES = 20


def average_ensemble(
    member_paths: Sequence[Path], name: str, out_path: Path, method: str = "mean", weights_path: Path | None = None
) -> None:
    """Combine the members' ``oof.zarr`` stores (TTA views first) into the ensemble's store.

    Args:
        member_paths: the members' out-of-fold stores.
        name: the ensemble's name.
        out_path: the store to write.
        method: ``mean``, ``rank_mean`` or ``weights`` (config key ``ensemble.method``).
        weights_path: the members' ``weights.csv`` (method ``weights`` only).
    """
    sources = [str(path) for path in member_paths]
    members = [read_predictions(path) for path in member_paths]
    attrs: dict[str, object] = {"ensemble": name, "members": sources}
    weights = None
    if weights_path is not None:
        weights = read_member_weights(weights_path, [store_model(path) for path in member_paths])
        attrs["weights"] = weights.tolist()
    if method != "mean":  # a mean store stays as it was before the key existed
        attrs["method"] = method
    combined = combine_predictions(members, sources, method, weights)
    write_predictions(out_path, combined, **attrs)
    log.info(
        "ensemble %s (%s): %d members, %d images, %d cells -> %s",
        name,
        method,
        len(sources),
        len(combined.ids),
        combined.n_cells,
        out_path,
    )


@dataclass
class WeightFit:
    """Fitted member weights.

    Attributes:
        weights: (n_members,) non-negative, summing to 1.
        member_scores: (n_members,) each member's out-of-fold score alone.
        mean_score: the equal-weight mean's score.
        score: the weighted combination's score (>= every member's and the mean's).
    """

    weights: np.ndarray
    member_scores: np.ndarray
    mean_score: float
    score: float


def cell_weak_labels(predictions: PredictionSet, image_labels: np.ndarray) -> np.ndarray:
    """(n_cells, C) targets: every cell carries its image's labels (``image_labels`` in the images' order)."""
    return np.repeat(np.asarray(image_labels) > 0.5, np.diff(predictions.offsets), axis=0)


def fit_member_weights(member_scores: Sequence[np.ndarray], targets: np.ndarray, seed: int = 0) -> WeightFit:
    """Non-negative weights summing to 1 that maximise the weighted mean's mean average precision.

    Coordinate ascent on the simplex: it starts from the best of each member alone and the equal weights,
    then for each step of :data:`WEIGHT_STEPS` moves that share of the weight towards or away from one
    member at a time (members in a seeded random order per pass), keeping a move only if it raises the
    score. So the result scores at least as high as every member and the equal mean; it depends on the
    inputs and the seed only.

    Args:
        member_scores: (n, C) scores of each member, rows aligned.
        targets: (n, C) booleans (weak labels: a cell carries its image's labels).
        seed: orders the members within a pass.

    Raises:
        InputDataError: no class has a positive row (nothing to fit on).
    """
    scores = [np.asarray(member, dtype=np.float64) for member in member_scores]
    n_members = len(scores)

    def evaluate(weights: np.ndarray) -> float:
        return mean_average_precision(targets, sum(w * member for w, member in zip(weights, scores) if w > 0))

    starts = [np.eye(n_members)[member] for member in range(n_members)] + [np.full(n_members, 1 / n_members)]
    start_scores = [evaluate(start) for start in starts]
    if np.isnan(start_scores).all():
        raise InputDataError("no class has a positive training image: member weights cannot be fitted")
    best = int(np.nanargmax(start_scores))
    weights, score = starts[best], start_scores[best]
    rng = np.random.default_rng(seed)
    for step in WEIGHT_STEPS:
        for _ in range(MAX_PASSES):
            improved = False
            for member in rng.permutation(n_members):
                for candidate in _moves(weights, int(member), step):
                    candidate_score = evaluate(candidate)
                    if candidate_score > score:
                        weights, score, improved = candidate, candidate_score, True
            if not improved:
                break
    return WeightFit(weights, np.array(start_scores[:n_members]), start_scores[-1], score)


def _moves(weights: np.ndarray, member: int, step: float) -> list[np.ndarray]:
    """``weights`` with ``step`` of the total moved towards ``member``, and with up to ``step`` taken from it."""
    towards = (1 - step) * weights
    towards[member] += step
    moves = [] if np.array_equal(towards, weights) else [towards]
    taken = min(step, weights[member])
    if 0 < taken < 1:
        away = weights.copy()
        away[member] -= taken
        moves.append(away / away.sum())
    return moves


def fit_weights_file(
    member_paths: Sequence[Path],
    index_paths: Sequence[Path],
    folds_paths: Sequence[Path],
    out_path: Path,
    seed: int = 0,
) -> WeightFit:
    """Fit the weights of the members' out-of-fold stores on the training images' labels and write them.

    Args:
        member_paths: the members' ``oof.zarr`` (their models' names label the rows).
        index_paths, folds_paths: ``index.csv`` and the folds CSV of each training dataset (the labels).
        out_path: the weights CSV to write.
        seed: see :func:`fit_member_weights`.
    """
    names = [store_model(path) for path in member_paths]
    if len(set(names)) != len(names):
        raise InputDataError(f"the same model twice among the members {', '.join(names)}")
    images = read_labelled_images(index_paths, folds_paths)
    reference = select_images(read_predictions(member_paths[0]), images.image_keys(), str(member_paths[0]))
    members = [reference.mean_views()] + [
        align_to_cells(read_predictions(path).mean_views(), reference.cells, str(path)) for path in member_paths[1:]
    ]
    targets = cell_weak_labels(reference, images.labels)
    fit = fit_member_weights([member.probs[:, :, 0] for member in members], targets, seed)
    write_member_weights(out_path, names, fit.weights, fit.member_scores, fit.score)
    log.info(
        "weights %s: out-of-fold score %.6f (equal mean %.6f, best member %.6f) -> %s",
        dict(zip(names, np.round(fit.weights, 4).tolist())),
        fit.score,
        fit.mean_score,
        float(np.nanmax(fit.member_scores)),
        out_path,
    )
    return fit
