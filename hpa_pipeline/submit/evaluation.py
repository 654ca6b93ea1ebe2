"""Scoring the workflow's predictions against per-cell truth (rule evaluate; the demo data carries it).

The competition metric (:mod:`hpa_pipeline.kaggle.metric`) is applied to each model's and each ensemble's
out-of-fold predictions on the training images (predicted cells = the segmentation's cells, truth =
the true cells), and to the submission and the stage submissions (what each ensemble and each
submission member alone would submit) on the test images, so one can see whether a later stage beats
an earlier one, and an ensemble its members, on images no fit has seen.

Two reference rows per split frame those figures. Because the metric discards the detections of classes
an image does not contain, random scores already reach a high mAP when most cells carry their image's
labels: ``chance`` (seeded uniform random scores for every segmented cell) is the floor a model must
beat. ``ceiling`` gives every segmented cell the true classes of the true cell it overlaps most: what a
perfect classifier reaches on this segmentation, so the gap to it is the classifiers' to close.
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
from hpa_pipeline.io.masks import read_labels
from hpa_pipeline.io.predictions import PredictionSet, read_predictions, select_images
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.kaggle.metric import (
    ImageEval,
    MetricResult,
    evaluate_label_masks,
    evaluate_submission,
)
from hpa_pipeline.labels import N_CLASSES, parse_labels


def read_truth_classes(truth_dir: Path, split: str) -> dict[str, dict[int, list[int]]]:
    """Image ID -> (cell value -> true classes) from ``truth/cells.csv`` (columns split, ID, instance, Label)."""
    path = truth_dir / "cells.csv"
    if not path.is_file():
        raise InputDataError(f"missing per-cell truth table {path}")
    classes: dict[str, dict[int, list[int]]] = {}
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if row["split"] == split:
                classes.setdefault(row["ID"], {})[int(row["instance"])] = parse_labels(
                    row["Label"], f"{path} row {line}"
                )
    return classes


def read_truth_mask(truth_dir: Path, split: str, image_id: str) -> np.ndarray:
    path = truth_dir / split / f"{image_id}_cellmask.png"
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputDataError(f"missing or unreadable truth mask {path}")
    return mask


def _segmented_images(
    masks_paths: Sequence[Path], truth_dir: Path, split: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image ID, truth mask, segmentation labels at the truth's resolution) of every image of the stores."""
    for masks_path in masks_paths:
        masks = open_store(masks_path, "masks")
        for row, image_id in enumerate(read_strings(masks, "ids")):
            truth = read_truth_mask(truth_dir, split, image_id)
            yield image_id, truth, read_labels(masks, row, truth.shape)


def _oof_items(predictions: PredictionSet, masks_paths: Sequence[Path], truth_dir: Path) -> Iterator[ImageEval]:
    classes = read_truth_classes(truth_dir, "train")
    ids = [image_id for path in masks_paths for image_id in read_strings(open_store(path, "masks"), "ids")]
    # the truth covers the Kaggle train set; extra sets are trained on but not scored
    selected = select_images(predictions, [("train", image_id) for image_id in ids], "out-of-fold predictions")
    for row, (image_id, truth, labels) in enumerate(_segmented_images(masks_paths, truth_dir, "train")):
        cells = slice(selected.offsets[row], selected.offsets[row + 1])
        scores = selected.probs[cells].mean(axis=2)
        yield ImageEval(
            truth,
            classes.get(image_id, {}),
            labels,
            {int(k): score for k, score in zip(selected.instance[cells], scores)},
            image_id,
        )


def evaluate_out_of_fold(predictions: PredictionSet, masks_paths: Sequence[Path], truth_dir: Path) -> MetricResult:
    """The competition metric of out-of-fold predictions on the training images."""
    return evaluate_label_masks(_oof_items(predictions, masks_paths, truth_dir))


def _ceiling_scores(
    labels: np.ndarray, truth: np.ndarray, truth_classes: dict[int, list[int]]
) -> dict[int, np.ndarray]:
    """Every segmented cell scored 1 for the classes of the true cell it overlaps most, 0 elsewhere."""
    overlap = (labels > 0) & (truth > 0)
    pairs, counts = np.unique(
        np.stack([labels[overlap].astype(np.int64), truth[overlap].astype(np.int64)]), axis=1, return_counts=True
    )
    best: dict[int, tuple[int, int]] = {}
    for cell, true_cell, count in zip(pairs[0].tolist(), pairs[1].tolist(), counts.tolist()):
        if count > best.get(cell, (0, 0))[0]:
            best[cell] = (count, true_cell)
    scores = {}
    for cell in np.unique(labels[labels > 0]).tolist():
        score = np.zeros(N_CLASSES)
        if cell in best:
            score[truth_classes.get(best[cell][1], [])] = 1.0
        scores[cell] = score
    return scores


def _reference_items(
    reference: str, masks_paths: Sequence[Path], truth_dir: Path, split: str, seed: int
) -> Iterator[ImageEval]:
    """The segmented cells of ``split`` with the scores of a reference (``chance`` or ``ceiling``)."""
    classes = read_truth_classes(truth_dir, split)
    rng = np.random.default_rng(seed)
    for image_id, truth, labels in _segmented_images(masks_paths, truth_dir, split):
        truth_classes = classes.get(image_id, {})
        if reference == "ceiling":
            scores = _ceiling_scores(labels, truth, truth_classes)
        else:
            scores = {cell: rng.random(N_CLASSES) for cell in np.unique(labels[labels > 0]).tolist()}
        yield ImageEval(truth, truth_classes, labels, scores, image_id)


def read_test_truth(truth_dir: Path) -> dict[str, tuple[np.ndarray, dict[int, list[int]]]]:
    """Image ID -> (truth mask, cell value -> classes) of every test image, images without cells too."""
    classes = read_truth_classes(truth_dir, "test")
    truth = {image_id: (read_truth_mask(truth_dir, "test", image_id), cells) for image_id, cells in classes.items()}
    for image_path in sorted((truth_dir / "test").glob("*_cellmask.png")):
        image_id = image_path.name[: -len("_cellmask.png")]
        truth.setdefault(image_id, (read_truth_mask(truth_dir, "test", image_id), {}))
    return truth


#: The reference rows of the metrics table, in order.
REFERENCES: tuple[str, ...] = ("chance", "ceiling")


def evaluate_references(
    masks_paths: Sequence[Path], truth_dir: Path, split: str, seed: int = 0
) -> dict[str, MetricResult]:
    """The metric of the ``chance`` and ``ceiling`` references on the segmentation of one split."""
    return {
        reference: evaluate_label_masks(_reference_items(reference, masks_paths, truth_dir, split, seed))
        for reference in REFERENCES
    }


def evaluate_run(
    models: dict[str, tuple[int, Path]],
    ensembles: dict[str, tuple[int, Path]],
    submission: Path | None,
    masks_paths: Sequence[Path],
    truth_dir: Path,
    out_json: Path,
    out_tsv: Path,
    test_masks_paths: Sequence[Path] = (),
    seed: int = 0,
    stage_submissions: dict[str, tuple[int, Path]] | None = None,
) -> None:
    """Score every model, ensemble, the submission and the stage submissions; write the details (JSON)
    and a summary (TSV).

    Args:
        models, ensembles: name -> (stage, out-of-fold store).
        submission: the submission CSV, or None.
        masks_paths: the training datasets' segmentation stores.
        truth_dir: folder with ``cells.csv`` and ``{split}/{ID}_cellmask.png``.
        test_masks_paths: the test set's segmentation stores (for its reference rows), if any.
        seed: seed of the ``chance`` reference's random scores.
        stage_submissions: name -> (stage, submission CSV) of what each ensemble and each submission
            member alone would submit (rule make_stage_submission), scored on the test images.

    The TSV has one row per model, ensemble and submission (``stage`` = its stage), one per stage
    submission (``what`` = stage_submission, ``scored_on`` = test), then the reference rows (``what`` =
    reference, empty ``stage``, ``scored_on`` = the split).
    """
    stage_submissions = stage_submissions or {}
    results: dict[str, dict] = {"models": {}, "ensembles": {}, "references": {}}
    summary = []
    for group, entries in (("models", models), ("ensembles", ensembles)):
        for name, (stage, path) in entries.items():
            result = evaluate_out_of_fold(read_predictions(path), masks_paths, truth_dir)
            results[group][name] = {"stage": stage, "out_of_fold": result.to_dict()}
            summary.append((group[:-1], name, stage, "out-of-fold (train)", result.map))
    if submission is not None or stage_submissions:
        truth = read_test_truth(truth_dir)
    if submission is not None:
        result = evaluate_submission(submission, truth)
        results["submission"] = result.to_dict()
        summary.append(
            ("submission", submission.name, max([s for s, _ in models.values()], default=0), "test", result.map)
        )
    if stage_submissions:
        results["stage_submissions"] = {}
    for name, (stage, path) in stage_submissions.items():
        result = evaluate_submission(path, truth)
        results["stage_submissions"][name] = {"stage": stage, "test": result.to_dict()}
        summary.append(("stage_submission", name, stage, "test", result.map))
    for split, paths in (("train", masks_paths), ("test", test_masks_paths)):
        if not paths:
            continue
        references = evaluate_references(paths, truth_dir, split, seed)
        results["references"][split] = {name: result.to_dict() for name, result in references.items()}
        summary += [("reference", name, "", split, result.map) for name, result in references.items()]
    write_text_atomic(out_json, json.dumps(results, indent=2, sort_keys=True) + "\n")
    with atomic_file(out_tsv, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["what", "name", "stage", "scored_on", "cell_map"])
        for row in summary:
            writer.writerow([*row[:4], f"{row[4]:.6f}"])
