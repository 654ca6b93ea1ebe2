"""Combining predictions: folds into out-of-fold sets, models into ensembles (pseudo labels).

Every combination joins cells by identity (image ID, mask value) and stops with a clear error when
two inputs do not hold the same cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.predictions import (
    PredictionSet,
    align_to_cells,
    concat_predictions,
    read_predictions,
    select_images,
    write_predictions,
)
from hpa_pipeline.preprocess.index import read_index


def concat_folds(parts: Sequence[PredictionSet], ids: Sequence[str], sources: Sequence[str] = ()) -> PredictionSet:
    """Join the held-out predictions of every fold into one set in canonical image order.

    Args:
        parts: one prediction set per fold.
        ids: the canonical order of all training images.
        sources: names of the parts, for messages.

    Returns:
        The out-of-fold predictions of ``ids``.
    """
    seen: dict[str, str] = {}
    for position, part in enumerate(parts):
        name = sources[position] if position < len(sources) else f"part {position}"
        for image_id in part.ids:
            if image_id in seen:
                raise InputDataError(f"image {image_id} is predicted by two folds ({seen[image_id]} and {name})")
            seen[image_id] = name
    missing = [image_id for image_id in ids if image_id not in seen]
    if missing:
        raise InputDataError(f"no fold predicts image(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    return select_images(concat_predictions(parts), ids, "out-of-fold predictions")


def concat_fold_stores(part_paths: Sequence[Path], index_paths: Sequence[Path], out_path: Path, model: str) -> None:
    """Read the folds' ``valid.zarr`` stores and write ``oof.zarr`` in the order of the indexes."""
    ids = [image_id for path in index_paths for image_id in read_index(path)["ID"]]
    parts = [read_predictions(path) for path in part_paths]
    oof = concat_folds(parts, ids, [str(path) for path in part_paths])
    write_predictions(out_path, oof, model=model, split="oof", n_folds=len(parts))


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
        aligned = align_to_cells(member.mean_views(), reference.ids, reference.offsets, reference.instance, source)
        total_cells += aligned.probs
        total_images += aligned.image_probs
    count = len(members)
    return PredictionSet(
        reference.ids, reference.offsets, reference.instance,
        (total_cells / count).astype(np.float32), (total_images / count).astype(np.float32),
    )
