"""The submission stage: average the members' test predictions, scale by cell area, encode, write.

Every class score of a cell is multiplied by min(1, area / threshold), with the edge threshold for
cells touching the first or last row or column of the original-size mask and the centre threshold for
the others (area in pixels at the original resolution). Masks are encoded as in the competition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.ensemble import average_predictions
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import image_shape
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.labels import read_test_table
from hpa_pipeline.predictions import align_to_cells, read_predictions
from hpa_pipeline.preprocess.index import read_index
from hpa_pipeline.preprocess.masks import read_cell_table, resize_labels
from hpa_pipeline.progress import progress
from hpa_pipeline.submission import (
    SubmissionReport,
    area_scale,
    encode_cell_masks,
    format_prediction_string,
    validate_submission,
    write_submission,
)

log = logging.getLogger(__name__)


def make_submission(
    prediction_paths: Sequence[Path],
    cells_paths: Sequence[Path],
    masks_paths: Sequence[Path],
    index_path: Path,
    edge_threshold: float,
    center_threshold: float,
    out_path: Path,
) -> None:
    """Write ``submission.csv`` from the test predictions of every member model and fold.

    Args:
        prediction_paths: ``test.zarr`` of every member and fold (equal weights).
        cells_paths: the test shards' cell tables (areas and edge contact at original resolution).
        masks_paths: the test shards' segmentation stores (the masks that are encoded).
        index_path: the test index (the row order of the submission).
        edge_threshold, center_threshold: area thresholds (<= 0 disables one).
        out_path: the CSV to write.
    """
    members = [read_predictions(path) for path in prediction_paths]
    average = average_predictions(members, [str(path) for path in prediction_paths])
    expected_ids = read_index(index_path)["ID"].tolist()
    rows_by_id: dict[str, tuple[int, int, str]] = {}
    for cells_path, masks_path in zip(cells_paths, masks_paths, strict=True):
        table = read_cell_table(cells_path)
        masks = open_store(masks_path, "masks")
        if read_strings(masks, "ids") != table.ids:
            raise InputDataError(f"{masks_path} and {cells_path} hold different images (rebuild the shard)")
        shard = align_to_cells(average, table.ids, table.offsets, table.instance, f"averaged test predictions vs {cells_path}")
        scale = area_scale(table.area, table.touches_edge, edge_threshold, center_threshold)
        scores = shard.probs[:, :, 0].astype(np.float64) * scale[:, None]
        for row in progress(range(len(table.ids)), "encode", total=len(table.ids), unit="img"):
            height, width = (int(v) for v in table.source_shape[row])
            cells = slice(table.offsets[row], table.offsets[row + 1])
            instances = table.instance[cells]
            if len(instances):
                labels = masks["labels"][str(row)][...]
                if labels.shape != (height, width):  # segmented from a resized image: back to the original size
                    labels = resize_labels(labels, height, width)
                encoded = encode_cell_masks(labels, instances)
            else:
                encoded = []
            rows_by_id[table.ids[row]] = (width, height, format_prediction_string(scores[cells], encoded))
    missing = [image_id for image_id in expected_ids if image_id not in rows_by_id]
    if missing:
        raise InputDataError(f"no cell table covers test image(s) {', '.join(missing[:5])}")
    write_submission(out_path, [(image_id, *rows_by_id[image_id]) for image_id in expected_ids])
    log.info("%d images, %d cells -> %s", len(expected_ids), average.n_cells, out_path)


def expected_sizes(image_dir: Path, table_path: Path) -> dict[str, tuple[int, int]]:
    """Image ID -> (width, height) of every test image of ``sample_submission.csv`` (or an index),
    from the channel files' headers."""
    sizes = {}
    for image_id in read_test_table(table_path)["ID"]:
        height, width = image_shape(image_dir, image_id)
        sizes[image_id] = (width, height)
    return sizes


def check_submission(submission_path: Path, image_dir: Path, table_path: Path) -> SubmissionReport:
    """Validate a submission against the test images listed in ``table_path`` (decodes every mask)."""
    return validate_submission(submission_path, expected_sizes(image_dir, table_path))
