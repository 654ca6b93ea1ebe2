"""The submission (rule make_submission, and rule make_stage_submission for what each ensemble and each
submission member alone would submit): combine the members' test predictions, scale by cell area,
encode, write.

With ``ensemble.method`` mean every member's every fold is averaged with equal weights; with rank_mean
or weights each member's folds are averaged first, then the members combined by the method.

Every class score of a cell is multiplied by min(1, area / threshold), with the edge threshold for
cells touching the first or last row or column of the original-size mask and the centre threshold for
the others (area in pixels at the original resolution). Masks are encoded as in the competition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.index import read_index
from hpa_pipeline.io.masks import read_labels
from hpa_pipeline.io.predictions import (
    PredictionSet,
    align_to_cells,
    average_predictions,
    combine_predictions,
    read_predictions,
    store_model,
)
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.io.weights import read_member_weights
from hpa_pipeline.kaggle.submission import encode_cell_masks, format_prediction_string, write_submission
from hpa_pipeline.progress import progress

log = logging.getLogger(__name__)


def make_submission(
    prediction_paths: Sequence[Path],
    cells_paths: Sequence[Path],
    masks_paths: Sequence[Path],
    index_path: Path,
    edge_threshold: float,
    center_threshold: float,
    out_path: Path,
    method: str = "mean",
    weights_path: Path | None = None,
) -> None:
    """Write ``submission.csv`` from the test predictions of every member model and fold.

    Args:
        prediction_paths: ``test.zarr`` of every member and fold.
        cells_paths: the test shards' cell tables (areas and edge contact at original resolution).
        masks_paths: the test shards' segmentation stores (the masks that are encoded).
        index_path: the test index (the row order of the submission).
        edge_threshold, center_threshold: area thresholds (<= 0 disables one).
        out_path: the CSV to write.
        method: how the members are combined (``ensemble.method``: mean, rank_mean or weights).
        weights_path: the members' fitted weights (method ``weights``).
    """
    average = combine_test_predictions(prediction_paths, method, weights_path)
    expected_ids = read_index(index_path)["ID"].tolist()
    rows_by_id: dict[str, tuple[int, int, str]] = {}
    for cells_path, masks_path in zip(cells_paths, masks_paths, strict=True):
        table = read_cell_table(cells_path)
        masks = open_store(masks_path, "masks")
        if read_strings(masks, "ids") != table.ids:
            raise InputDataError(f"{masks_path} and {cells_path} hold different images (rebuild the shard)")
        shard = align_to_cells(average, table, f"averaged test predictions vs {cells_path}")
        scale = area_scale(table.area, table.touches_edge, edge_threshold, center_threshold)
        scores = shard.probs[:, :, 0].astype(np.float64) * scale[:, None]
        for row in progress(range(len(table.ids)), "encode", total=len(table.ids), unit="img"):
            height, width = (int(v) for v in table.source_shape[row])
            cells = slice(table.offsets[row], table.offsets[row + 1])
            instances = table.instance[cells]
            if len(instances):
                # a shard segmented from a resized image goes back to the original size
                encoded = encode_cell_masks(read_labels(masks, row, (height, width)), instances)
            else:
                encoded = []
            rows_by_id[table.ids[row]] = (width, height, format_prediction_string(scores[cells], encoded))
    missing = [image_id for image_id in expected_ids if image_id not in rows_by_id]
    if missing:
        raise InputDataError(f"no cell table covers test image(s) {', '.join(missing[:5])}")
    write_submission(out_path, [(image_id, *rows_by_id[image_id]) for image_id in expected_ids])
    log.info("%d images, %d cells -> %s", len(expected_ids), average.n_cells, out_path)


def combine_test_predictions(
    prediction_paths: Sequence[Path], method: str = "mean", weights_path: Path | None = None
) -> PredictionSet:
    """The members' test predictions combined by ``method``: ``mean`` averages every store (member and
    fold) with equal weights, as always; otherwise each member's folds (stores grouped by their model)
    are averaged, then the members combined by :func:`combine_predictions` (weights from
    ``weights_path`` for method ``weights``)."""
    sources = [str(path) for path in prediction_paths]
    if method == "mean":
        return average_predictions([read_predictions(path) for path in prediction_paths], sources)
    folds: dict[str, list[Path]] = {}
    for path in prediction_paths:
        folds.setdefault(store_model(path), []).append(path)
    members = [
        average_predictions([read_predictions(path) for path in paths], [str(path) for path in paths])
        for paths in folds.values()
    ]
    weights = None if weights_path is None else read_member_weights(weights_path, list(folds))
    log.info("members %s combined by %s", ", ".join(folds), method)
    return combine_predictions(members, [" + ".join(map(str, paths)) for paths in folds.values()], method, weights)


def area_scale(
    area: np.ndarray, touches_edge: np.ndarray, edge_threshold: float, center_threshold: float
) -> np.ndarray:
    """Confidence factor of each cell: ``min(1, area / threshold)``, the original's small-cell penalty.

    Edge cells (``touches_edge``) use ``edge_threshold``, the others ``center_threshold``; a threshold
    ``<= 0`` disables its branch (factor 1). Areas are pixel counts at the original image resolution.

    Returns:
        float64 factors, one per cell.
    """
    area = np.asarray(area, dtype=np.float64)
    edge = np.asarray(touches_edge, dtype=bool)
    if area.shape != edge.shape:
        raise PipelineError(f"area_scale: area {area.shape} and touches_edge {edge.shape} differ in shape")

    def factor(threshold: float) -> np.ndarray:
        if threshold <= 0:
            return np.ones_like(area)
        return np.minimum(1.0, area / float(threshold))

    return np.where(edge, factor(edge_threshold), factor(center_threshold))
