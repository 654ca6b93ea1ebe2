import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.folds import write_folds
from hpa_pipeline.io.index import write_index
from hpa_pipeline.io.predictions import PredictionSet, write_predictions
from hpa_pipeline.io.thresholds import write_thresholds
from hpa_pipeline.labels import TASK_IMAGES, class_names
from hpa_pipeline.submit.evaluation_images import evaluate_images_run, reference_labels
from hpa_pipeline.submit.image_predictions import write_image_predictions


def test_references_draw_chance_by_frequency_and_the_most_frequent_classes():
    truth = np.zeros((4, 3), dtype=bool)
    truth[:, 2] = True  # every image: class 2
    truth[:2, 0] = True  # half: class 0
    references = reference_labels(truth, 1000, seed=0)
    # 1.5 labels per image -> the 2 most frequent classes (2, then 0) for every image
    assert (
        references["most_frequent"][0].tolist() == [True, False, True]
        and references["most_frequent"].all(0)[[0, 2]].all()
    )
    chance = references["chance"].mean(axis=0)
    assert chance[1] == 0 and chance[2] == 1 and 0.45 < chance[0] < 0.55


def _oof(path, ids, probs):
    n = len(ids)
    cells = CellTable(ids, np.zeros(n + 1, np.int64), np.zeros(0, np.int32), datasets=["train"] * n)
    write_predictions(
        path, PredictionSet(cells, np.zeros((0, 28, 1), np.float32), probs[:, :, None].astype(np.float32))
    )


def test_macro_f1_rows_with_and_without_thresholds(tmp_path):
    ids = ["a", "b", "c", "d"]
    write_index(
        tmp_path / "index.csv",
        pd.DataFrame({"ID": ids, "shard": 0, "Label": ["0", "0|1", "1", "0"], "dataset": "train"}),
    )
    write_folds(tmp_path / "folds.csv", ids, np.array([0, 1, 0, 1]))
    probs = np.zeros((4, 28))
    probs[:, 0] = [0.4, 0.45, 0.1, 0.3]  # below 0.5 but ranked right: a fitted threshold finds class 0
    probs[:, 1] = [0.2, 0.9, 0.8, 0.1]
    _oof(tmp_path / "m.zarr", ids, probs)
    thresholds = np.full(28, 0.5)
    thresholds[0] = 0.2
    write_thresholds(tmp_path / "t.csv", thresholds, class_names(TASK_IMAGES), np.full(28, np.nan), "f1")
    test_probs = np.zeros((2, 28))
    test_probs[0, 0], test_probs[1, 1] = 0.3, 0.7
    write_image_predictions(tmp_path / "p.csv", ["x", "y"], test_probs, thresholds)
    # the submitted file, in the sample submission's order: y right, x's class 0 missed
    (tmp_path / "submission.csv").write_text("Id,Predicted\ny,1\nx,\n")
    (tmp_path / "truth.csv").write_text("Id,Target\nx,0\ny,1\n")
    evaluate_images_run(
        {"m": (1, tmp_path / "m.zarr")},
        {},
        [tmp_path / "m.zarr"],
        [tmp_path / "index.csv"],
        [tmp_path / "folds.csv"],
        tmp_path / "t.csv",
        tmp_path / "p.csv",
        tmp_path / "submission.csv",
        tmp_path / "truth.csv",
        tmp_path / "metrics.json",
        tmp_path / "metrics.tsv",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # out of fold at 0.5: class 0 never predicted (F1 0), class 1 perfect -> 0.5; fitted: both perfect
    assert metrics["models"]["m"]["out_of_fold"]["macro_f1"] == pytest.approx(0.5)
    assert metrics["models"]["m"]["out_of_fold"]["macro_f1_fitted"] == pytest.approx(1.0)
    # test probabilities: at 0.5 only y's class 1 -> class 0 F1 0, class 1 F1 1; at the thresholds both right
    assert metrics["image_predictions"]["macro_f1"] == pytest.approx(0.5)
    assert metrics["image_predictions"]["macro_f1_fitted"] == pytest.approx(1.0)
    # the submission is scored from its own file (x's class 0 missed), not from image_predictions.csv
    assert metrics["submission"]["macro_f1"] == pytest.approx(0.5)
    assert metrics["submission"]["per_class_f1"][:2] == [0.0, 1.0]
    rows = [row.split("\t") for row in (tmp_path / "metrics.tsv").read_text().splitlines()[1:]]
    assert [row[:2] + row[3:] for row in rows[:4]] == [
        ["model", "m", "out-of-fold (train)", "0.500000", "1.000000"],
        ["ensemble", "submission members", "out-of-fold (train)", "0.500000", "1.000000"],
        ["ensemble", "p.csv", "test", "0.500000", "1.000000"],
        ["submission", "submission.csv", "test", "", "0.500000"],
    ]
    assert [row[1] for row in rows[4:]] == ["chance", "most_frequent", "chance", "most_frequent"]


def test_a_submission_without_a_truth_image_is_named(tmp_path):
    from hpa_pipeline.errors import InputDataError
    from hpa_pipeline.submit.evaluation_images import _submission_labels

    (tmp_path / "submission.csv").write_text("Id,Predicted\nx,0\n")
    with pytest.raises(InputDataError, match=f"{tmp_path / 'submission.csv'} has no row for image\\(s\\) y of t.csv"):
        _submission_labels(tmp_path / "submission.csv", {"x": [0], "y": [1]}, Path("t.csv"), 28)
