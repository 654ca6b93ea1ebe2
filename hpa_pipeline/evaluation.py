"""Scoring the workflow's predictions against per-cell truth (the demo data carries it).

The competition metric (:mod:`hpa_pipeline.metrics`) is applied to each model's and each ensemble's
out-of-fold predictions on the training images (predicted cells = the segmentation's cells, truth =
the true cells) and to the submission on the test images, so one can see whether a later stage beats
an earlier one.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file, write_text_atomic
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.labels import parse_labels
from hpa_pipeline.metrics import (
    ImageEval,
    MetricResult,
    evaluate_label_masks,
    evaluate_submission,
)
from hpa_pipeline.predictions import PredictionSet, read_predictions, select_images
from hpa_pipeline.preprocess.masks import resize_labels


def read_truth_classes(truth_dir: Path, split: str) -> dict[str, dict[int, list[int]]]:
    """Image ID -> (cell value -> true classes) from ``truth/cells.csv`` (columns split, ID, instance, Label)."""
    path = truth_dir / "cells.csv"
    if not path.is_file():
        raise InputDataError(f"missing per-cell truth table {path}")
    classes: dict[str, dict[int, list[int]]] = {}
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if row["split"] == split:
                classes.setdefault(row["ID"], {})[int(row["instance"])] = parse_labels(row["Label"], f"{path} row {line}")
    return classes


def read_truth_mask(truth_dir: Path, split: str, image_id: str) -> np.ndarray:
    path = truth_dir / split / f"{image_id}_cellmask.png"
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputDataError(f"missing or unreadable truth mask {path}")
    return mask


def _oof_items(predictions: PredictionSet, masks_paths: Sequence[Path], truth_dir: Path) -> Iterator[ImageEval]:
    classes = read_truth_classes(truth_dir, "train")
    for masks_path in masks_paths:
        masks = open_store(masks_path, "masks")
        ids = read_strings(masks, "ids")
        shard = select_images(predictions, ids, "out-of-fold predictions")
        for row, image_id in enumerate(ids):
            truth = read_truth_mask(truth_dir, "train", image_id)
            labels = masks["labels"][str(row)][...]
            if labels.shape != truth.shape:
                labels = resize_labels(labels, *truth.shape)
            cells = slice(shard.offsets[row], shard.offsets[row + 1])
            scores = shard.probs[cells].mean(axis=2)
            yield ImageEval(truth, classes.get(image_id, {}), labels,
                            {int(k): score for k, score in zip(shard.instance[cells], scores)}, image_id)


def evaluate_out_of_fold(predictions: PredictionSet, masks_paths: Sequence[Path], truth_dir: Path) -> MetricResult:
    """The competition metric of out-of-fold predictions on the training images."""
    return evaluate_label_masks(_oof_items(predictions, masks_paths, truth_dir))


def evaluate_run(
    models: dict[str, tuple[int, Path]],
    ensembles: dict[str, tuple[int, Path]],
    submission: Path | None,
    masks_paths: Sequence[Path],
    truth_dir: Path,
    out_json: Path,
    out_tsv: Path,
) -> None:
    """Score every model, ensemble and the submission; write the details (JSON) and a summary (TSV).

    Args:
        models, ensembles: name -> (stage, out-of-fold store).
        submission: the submission CSV, or None.
        masks_paths: the training datasets' segmentation stores.
        truth_dir: folder with ``cells.csv`` and ``{split}/{ID}_cellmask.png``.
    """
    results: dict[str, dict] = {"models": {}, "ensembles": {}}
    summary = []
    for group, entries in (("models", models), ("ensembles", ensembles)):
        for name, (stage, path) in entries.items():
            result = evaluate_out_of_fold(read_predictions(path), masks_paths, truth_dir)
            results[group][name] = {"stage": stage, "out_of_fold": result.to_dict()}
            summary.append((group[:-1], name, stage, "out-of-fold (train)", result.map))
    if submission is not None:
        classes = read_truth_classes(truth_dir, "test")
        truth = {image_id: (read_truth_mask(truth_dir, "test", image_id), cells) for image_id, cells in classes.items()}
        for image_path in sorted((truth_dir / "test").glob("*_cellmask.png")):  # images without cells too
            image_id = image_path.name[: -len("_cellmask.png")]
            truth.setdefault(image_id, (read_truth_mask(truth_dir, "test", image_id), {}))
        result = evaluate_submission(submission, truth)
        results["submission"] = result.to_dict()
        summary.append(("submission", submission.name, max([s for s, _ in models.values()], default=0), "test", result.map))
    write_text_atomic(out_json, json.dumps(results, indent=2, sort_keys=True) + "\n")
    with atomic_file(out_tsv, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["what", "name", "stage", "scored_on", "cell_map"])
        for row in summary:
            writer.writerow([*row[:4], f"{row[4]:.6f}"])
