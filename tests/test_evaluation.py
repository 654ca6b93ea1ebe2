"""Scoring against per-cell truth: out-of-fold predictions joined by cell identity, the chance and
ceiling references, the metrics table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import store_paths

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.predictions import PredictionSet, write_predictions
from hpa_pipeline.io.stores import atomic_store, open_store, read_strings, write_strings
from hpa_pipeline.kaggle.submission import encode_cell_masks, format_prediction_string, write_submission
from hpa_pipeline.labels import N_CLASSES
from hpa_pipeline.submit.evaluation import (
    evaluate_out_of_fold,
    evaluate_references,
    evaluate_run,
    read_truth_classes,
    read_truth_mask,
)


def truth_masks_store(stores: dict, split: str, path: Path) -> Path:
    """A segmentation store whose cells are exactly the true cells of ``split``."""
    shards = store_paths(stores, split, "cells")
    ids = [image_id for shard in shards for image_id in read_strings(open_store(shard, "cells"), "ids")]
    with atomic_store(path, "masks", resolution="original", scale_factor=1.0, backend="truth") as group:
        write_strings(group, "ids", ids)
        labels = group.create_group("labels")
        for row, image_id in enumerate(ids):
            mask = read_truth_mask(stores["data"] / "truth", split, image_id).astype(np.uint16)
            labels.create_array(str(row), shape=mask.shape, dtype="uint16")[...] = mask
    return path


def oracle_predictions(masks_paths: list[Path], truth_dir: Path, reverse_cells: bool) -> PredictionSet:
    """Every segmented cell predicted with the classes of the true cell it overlaps most."""
    classes = read_truth_classes(truth_dir, "train")
    ids, offsets, instance, probs = [], [0], [], []
    for masks_path in masks_paths:
        masks = open_store(masks_path, "masks")
        for row, image_id in enumerate(read_strings(masks, "ids")):
            truth = read_truth_mask(truth_dir, "train", image_id)
            labels = cv2.resize(
                masks["labels"][str(row)][...], truth.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT
            )
            cells = [int(cell) for cell in np.unique(labels) if cell]
            for cell in reversed(cells) if reverse_cells else cells:
                values, counts = np.unique(truth[(labels == cell) & (truth > 0)], return_counts=True)
                score = np.zeros(N_CLASSES, np.float32)
                if values.size:
                    score[classes.get(image_id, {}).get(int(values[np.argmax(counts)]), [])] = 1.0
                instance.append(cell)
                probs.append(score)
            ids.append(image_id)
            offsets.append(len(instance))
    probs_array = np.asarray(probs, np.float32).reshape(-1, N_CLASSES, 1)
    cells = CellTable(ids, np.asarray(offsets, np.int64), np.asarray(instance, np.int32), datasets=["train"] * len(ids))
    return PredictionSet(cells, probs_array, np.zeros((len(ids), N_CLASSES, 1), np.float32))


def test_ceiling_of_the_true_segmentation_is_one(demo_stores, tmp_path):
    masks = truth_masks_store(demo_stores, "train", tmp_path / "truth_masks.zarr")
    references = evaluate_references([masks], demo_stores["data"] / "truth", "train", seed=0)
    assert references["ceiling"].map == 1.0
    assert 0.0 < references["chance"].map < 1.0


def test_references_frame_the_classical_segmentation(demo_stores):
    masks = store_paths(demo_stores, "train", "masks")
    truth_dir = demo_stores["data"] / "truth"
    references = evaluate_references(masks, truth_dir, "train", seed=0)
    assert 0.0 < references["chance"].map < references["ceiling"].map <= 1.0
    assert evaluate_references(masks, truth_dir, "train", seed=0)["chance"].map == references["chance"].map
    assert evaluate_references(masks, truth_dir, "train", seed=1)["chance"].map != references["chance"].map


@pytest.mark.parametrize("reverse_cells", [False, True])
def test_out_of_fold_predictions_are_joined_by_cell_identity(demo_stores, reverse_cells):
    """Perfect classes on the segmented cells score the ceiling, in whatever order the cells come."""
    masks = store_paths(demo_stores, "train", "masks")
    truth_dir = demo_stores["data"] / "truth"
    predictions = oracle_predictions(masks, truth_dir, reverse_cells)
    ceiling = evaluate_references(masks, truth_dir, "train")["ceiling"].map
    assert evaluate_out_of_fold(predictions, masks, truth_dir).map == pytest.approx(ceiling, abs=1e-12)


def test_out_of_fold_predictions_of_other_images_are_refused(demo_stores):
    masks = store_paths(demo_stores, "train", "masks")
    predictions = oracle_predictions(masks[:1], demo_stores["data"] / "truth", reverse_cells=False)
    with pytest.raises(InputDataError, match="out-of-fold predictions"):
        evaluate_out_of_fold(predictions, masks, demo_stores["data"] / "truth")


def test_evaluate_run_writes_models_ensembles_and_references(demo_stores, tmp_path):
    masks = store_paths(demo_stores, "train", "masks")
    truth_dir = demo_stores["data"] / "truth"
    oof = tmp_path / "oof.zarr"
    write_predictions(oof, oracle_predictions(masks, truth_dir, reverse_cells=False))
    evaluate_run(
        {"oracle": (1, oof)},
        {"stage1": (1, oof)},
        None,
        masks,
        truth_dir,
        tmp_path / "metrics.json",
        tmp_path / "metrics.tsv",
        test_masks_paths=store_paths(demo_stores, "test", "masks"),
        seed=0,
    )
    with open(tmp_path / "metrics.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [(row["what"], row["name"], row["stage"], row["scored_on"]) for row in rows] == [
        ("model", "oracle", "1", "out-of-fold (train)"),
        ("ensemble", "stage1", "1", "out-of-fold (train)"),
        ("reference", "chance", "", "train"),
        ("reference", "ceiling", "", "train"),
        ("reference", "chance", "", "test"),
        ("reference", "ceiling", "", "test"),
    ]
    assert rows[0]["cell_map"] == rows[3]["cell_map"]  # the oracle reaches the ceiling
    details = json.loads((tmp_path / "metrics.json").read_text())
    assert set(details["references"]) == {"train", "test"}
    assert details["references"]["train"]["ceiling"]["map"] == details["models"]["oracle"]["out_of_fold"]["map"]


def test_missing_truth_is_named(tmp_path):
    with pytest.raises(InputDataError, match=str(tmp_path / "cells.csv")):
        read_truth_classes(tmp_path, "train")
    with pytest.raises(InputDataError, match="img0_cellmask.png"):
        read_truth_mask(tmp_path, "train", "img0")


def truth_submission(truth_dir: Path, path: Path, score: float | None) -> Path:
    """A submission of the true test cells: their true classes (score None) or ``score`` for every class."""
    classes = read_truth_classes(truth_dir, "test")
    rows = []
    for mask_path in sorted((truth_dir / "test").glob("*_cellmask.png")):
        image_id = mask_path.name[: -len("_cellmask.png")]
        mask = read_truth_mask(truth_dir, "test", image_id)
        cells = [int(cell) for cell in np.unique(mask) if cell]
        scores = np.full((len(cells), N_CLASSES), 0.5 if score is None else score)
        if score is None:
            for row, cell in enumerate(cells):
                scores[row] = 0.0
                scores[row, classes.get(image_id, {}).get(cell, [])] = 1.0
        text = format_prediction_string(scores, encode_cell_masks(mask, cells)) if cells else ""
        rows.append((image_id, mask.shape[1], mask.shape[0], text))
    write_submission(path, rows)
    return path


def test_stage_submissions_are_scored_on_the_test_images_after_the_submission(demo_stores, tmp_path):
    masks = store_paths(demo_stores, "train", "masks")
    truth_dir = demo_stores["data"] / "truth"
    oof = tmp_path / "oof.zarr"
    write_predictions(oof, oracle_predictions(masks, truth_dir, reverse_cells=False))
    perfect = truth_submission(truth_dir, tmp_path / "submission.csv", None)
    flat = truth_submission(truth_dir, tmp_path / "flat.csv", 0.5)
    evaluate_run(
        {"oracle": (1, oof)},
        {},
        perfect,
        masks,
        truth_dir,
        tmp_path / "metrics.json",
        tmp_path / "metrics.tsv",
        stage_submissions={"stage1": (1, flat), "oracle": (1, perfect)},
    )
    with open(tmp_path / "metrics.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [(row["what"], row["name"], row["stage"], row["scored_on"]) for row in rows] == [
        ("model", "oracle", "1", "out-of-fold (train)"),
        ("submission", "submission.csv", "1", "test"),
        ("stage_submission", "stage1", "1", "test"),
        ("stage_submission", "oracle", "1", "test"),
        ("reference", "chance", "", "train"),
        ("reference", "ceiling", "", "train"),
    ]
    assert rows[1]["cell_map"] == rows[3]["cell_map"] == "1.000000"  # the same file scores the same
    details = json.loads((tmp_path / "metrics.json").read_text())
    assert details["stage_submissions"]["oracle"] == {"stage": 1, "test": details["submission"]}
    # a constant score ranks nothing: each class's AP is its share of true detections
    assert 0 < details["stage_submissions"]["stage1"]["test"]["map"] < 1
