"""Scoring the image-level task (rule evaluate of task hpa2018-images): macro F1
(:func:`hpa_pipeline.kaggle.images2018.macro_f1`) of every model's and ensemble's out-of-fold predictions,
of the submission's members' average, and of the submission file itself.

Each row has two figures: ``macro_f1`` at the plain 0.5 threshold and ``macro_f1_fitted`` at per-class
thresholds. For out-of-fold rows the thresholds are fitted on the same predictions (the best they can
reach: optimistic). On the test images, the members' averaged probabilities (``image_predictions.csv``)
are scored at 0.5 and at the thresholds the workflow fitted on the training images; the submission row
scores the labels of ``submission.csv``, the file that is submitted, which carries labels only: its
``macro_f1_fitted`` is its score and its ``macro_f1`` is empty. Two references per split frame them:
``chance`` (each class drawn with its training frequency, seeded) and ``most_frequent`` (every image
gets the k most frequent training classes, k = the mean number of labels per training image).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file, write_text_atomic
from hpa_pipeline.io.folds import read_labelled_images
from hpa_pipeline.io.thresholds import read_thresholds
from hpa_pipeline.kaggle.images2018 import labels_matrix, macro_f1, per_class_f1, read_submission_2018
from hpa_pipeline.labels import class_names, read_train_table_2018
from hpa_pipeline.submit.image_predictions import read_image_predictions
from hpa_pipeline.submit.thresholds import fit_thresholds, mean_image_probs


def reference_labels(train_truth: np.ndarray, n_images: int, seed: int) -> dict[str, np.ndarray]:
    """The ``chance`` and ``most_frequent`` predictions for ``n_images`` images from the training labels."""
    frequency = train_truth.mean(axis=0)
    rng = np.random.default_rng([seed, 2018])
    chance = rng.random((n_images, train_truth.shape[1])) < frequency
    k = max(1, int(round(train_truth.sum(axis=1).mean())))
    most = np.zeros((n_images, train_truth.shape[1]), dtype=bool)
    most[:, np.argsort(-frequency, kind="mergesort")[:k]] = True
    return {"chance": chance, "most_frequent": most}


def _per_class(truth: np.ndarray, predicted: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in per_class_f1(truth, predicted)]


def _scores(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None) -> dict:
    fitted = fit_thresholds(truth, probs, "f1") if thresholds is None else thresholds
    return {
        "macro_f1": macro_f1(truth, probs >= 0.5),
        "macro_f1_fitted": macro_f1(truth, probs >= fitted),
        "per_class_f1_fitted": _per_class(truth, probs >= fitted),
    }


def _submission_labels(submission: Path, truth_rows: dict[str, list[int]], test_truth: Path, n: int) -> np.ndarray:
    """The submitted labels, one row per image of the truth (every truth image must have its row)."""
    rows = read_submission_2018(submission)
    missing = [image_id for image_id in truth_rows if image_id not in rows]
    if missing:
        raise InputDataError(
            f"{submission} has no row for image(s) {', '.join(missing[:5])} of {test_truth}"
            + (" ..." if len(missing) > 5 else "")
        )
    return labels_matrix(rows, list(truth_rows), n)


def evaluate_images_run(
    models: dict[str, tuple[int, Path]],
    ensembles: dict[str, tuple[int, Path]],
    members: Sequence[Path],
    index_paths: Sequence[Path],
    folds_paths: Sequence[Path],
    thresholds_path: Path,
    image_predictions: Path,
    submission: Path,
    test_truth: Path,
    out_json: Path,
    out_tsv: Path,
    seed: int = 0,
    task: str = "hpa2018-images",
) -> None:
    """Score models, ensembles, the members' average and the submission; write JSON details and a TSV.

    Args:
        models, ensembles: name -> (stage, out-of-fold store).
        members: the submission members' out-of-fold stores.
        index_paths, folds_paths: the training datasets' index and fold tables (the labels).
        thresholds_path: the fitted thresholds (results/thresholds.csv).
        image_predictions: results/image_predictions.csv (the test images' averaged probabilities).
        submission: results/submission.csv (``Id,Predicted``), the file that is submitted.
        test_truth: the test images' labels (``Id,Target``, as train.csv).
        out_json, out_tsv: where to write.
        seed: seed of the chance reference.
        task: the label set.
    """
    n = len(class_names(task))
    images = read_labelled_images(index_paths, folds_paths, n)
    train_truth = images.labels > 0.5
    results: dict[str, dict] = {"models": {}, "ensembles": {}, "references": {}}
    summary = []
    for group, entries in (("models", models), ("ensembles", ensembles)):
        for name, (stage, path) in entries.items():
            scores = _scores(train_truth, mean_image_probs([path], images.image_keys()))
            results[group][name] = {"stage": stage, "out_of_fold": scores}
            summary.append((group[:-1], name, stage, "out-of-fold (train)", scores))
    stage = max([s for s, _ in models.values()], default=1)
    thresholds = read_thresholds(thresholds_path, class_names(task))
    if members:
        scores = _scores(train_truth, mean_image_probs(members, images.image_keys()), thresholds)
        results["members_average"] = scores
        summary.append(("ensemble", "submission members", stage, "out-of-fold (train)", scores))
    table = read_train_table_2018(test_truth)
    truth_rows = dict(zip(table["ID"], table["labels"]))
    ids, probs, _ = read_image_predictions(image_predictions)
    test_truth_matrix = labels_matrix(truth_rows, ids, n)
    scores = _scores(test_truth_matrix, probs, thresholds)
    results["image_predictions"] = scores
    summary.append(("ensemble", image_predictions.name, stage, "test", scores))
    submitted = _submission_labels(submission, truth_rows, test_truth, n)
    submission_truth = labels_matrix(truth_rows, list(truth_rows), n)
    results["submission"] = {
        "file": str(submission),
        "macro_f1": macro_f1(submission_truth, submitted),
        "per_class_f1": _per_class(submission_truth, submitted),
    }
    summary.append(
        (
            "submission",
            submission.name,
            stage,
            "test",
            {"macro_f1": None, "macro_f1_fitted": results["submission"]["macro_f1"]},
        )
    )
    for split, truth in (("train", train_truth), ("test", test_truth_matrix)):
        references = reference_labels(train_truth, len(truth), seed)
        results["references"][split] = {}
        for name, predicted in references.items():
            value = macro_f1(truth, predicted)
            results["references"][split][name] = {"macro_f1": value}
            summary.append(("reference", name, "", split, {"macro_f1": value, "macro_f1_fitted": value}))
    write_text_atomic(out_json, json.dumps(results, indent=2, sort_keys=True) + "\n")
    with atomic_file(out_tsv, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["what", "name", "stage", "scored_on", "macro_f1", "macro_f1_fitted"])
        for what, name, row_stage, scored_on, values in summary:
            figures = [_figure(values["macro_f1"]), _figure(values["macro_f1_fitted"])]
            writer.writerow([what, name, row_stage, scored_on, *figures])


def _figure(value: float | None) -> str:
    """A TSV cell: six decimals, empty where the row has no such figure."""
    return "" if value is None else f"{value:.6f}"
