import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.index import write_index
from hpa_pipeline.io.predictions import PredictionSet, write_predictions
from hpa_pipeline.io.thresholds import write_thresholds
from hpa_pipeline.labels import TASK_IMAGES, class_names
from hpa_pipeline.submit.image_predictions import (
    make_image_predictions,
    make_submission_2018,
    read_image_predictions,
    write_image_predictions,
)


def _store(path, ids, image_probs):
    """A prediction store of the image-level task: no cells, one view per image."""
    n, classes = len(ids), image_probs.shape[1]
    predictions = PredictionSet(
        CellTable(ids, np.zeros(n + 1, np.int64), np.zeros(0, np.int32), datasets=["test"] * n),
        np.zeros((0, classes, 1), np.float32),
        image_probs[:, :, None].astype(np.float32),
    )
    write_predictions(path, predictions, model="m")


def test_table_round_trip_applies_each_class_threshold(tmp_path):
    probs = np.array([[0.9, 0.3], [0.2, 0.35]])
    write_image_predictions(tmp_path / "p.csv", ["a", "b"], probs, np.array([0.5, 0.32]))
    assert (tmp_path / "p.csv").read_text().splitlines() == [
        "ID,labels,prob_0,prob_1",
        "a,0,0.900000,0.300000",
        "b,1,0.200000,0.350000",
    ]
    ids, again, labels = read_image_predictions(tmp_path / "p.csv")
    assert ids == ["a", "b"] and again == pytest.approx(probs) and labels.tolist() == [[True, False], [False, True]]


def test_members_are_averaged_and_the_2018_submission_follows_the_sample_order(tmp_path):
    import pandas as pd

    ids = ["a", "b", "c"]
    one, two = np.zeros((3, 28)), np.zeros((3, 28))
    one[0, 5], two[0, 5] = 0.9, 0.5  # mean 0.7 > 0.6
    one[1, 27], two[1, 27] = 0.6, 0.4  # mean 0.5 < 0.6
    _store(tmp_path / "one.zarr", ids, one)
    _store(tmp_path / "two.zarr", list(reversed(ids)), two[::-1])  # joined by ID, not by position
    write_index(tmp_path / "index.csv", pd.DataFrame({"ID": ids, "shard": 0, "Label": "", "dataset": "test"}))
    write_thresholds(tmp_path / "t.csv", np.full(28, 0.6), class_names(TASK_IMAGES), np.full(28, np.nan), "fixed")
    make_image_predictions(
        [tmp_path / "one.zarr", tmp_path / "two.zarr"],
        tmp_path / "index.csv",
        tmp_path / "t.csv",
        tmp_path / "p.csv",
        "hpa2018-images",
    )
    _, probs, labels = read_image_predictions(tmp_path / "p.csv")
    assert probs[0, 5] == pytest.approx(0.7) and probs[1, 27] == pytest.approx(0.5)
    (tmp_path / "sample.csv").write_text("Id,Predicted\nc,0\na,0\nb,0\n")
    make_submission_2018(tmp_path / "p.csv", tmp_path / "sample.csv", tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text() == "Id,Predicted\nc,\na,5\nb,\n"
    (tmp_path / "sample.csv").write_text("Id,Predicted\nc,0\nghost,0\n")
    with pytest.raises(InputDataError, match="lacks test image.*ghost"):
        make_submission_2018(tmp_path / "p.csv", tmp_path / "sample.csv", tmp_path / "s2.csv")
    assert not (tmp_path / "s2.csv").exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("b,1,0.2,x", r"p.csv row 3 \(ID b\): prob_1 'x' is not a number in \[0, 1\]"),
        ("b,1,0.2,nan", r"p.csv row 3 \(ID b\): prob_1 'nan' is not a number in \[0, 1\]"),
        ("b,1,1.5,0.2", r"p.csv row 3 \(ID b\): prob_0 '1.5' is not a number in \[0, 1\]"),
        ("b,\u00b2,0.2,0.3", r"p.csv row 3 \(ID b\): label '\u00b2' is not a class index in 0..1"),
        ("b,2,0.2,0.3", r"p.csv row 3 \(ID b\): label '2' is not a class index in 0..1"),
        ("a,1,0.2,0.3", r"p.csv row 3: ID a occurs twice \(first in row 2\)"),
    ],
)
def test_a_bad_row_is_one_error_naming_the_file_and_the_row(tmp_path, row, message):
    (tmp_path / "p.csv").write_text(f"ID,labels,prob_0,prob_1\na,0,0.9,0.3\n{row}\n")
    with pytest.raises(InputDataError, match=message):
        read_image_predictions(tmp_path / "p.csv")
