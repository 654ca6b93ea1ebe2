import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.predictions import (
    PredictionSet,
    align_to_cells,
    average_predictions,
    read_predictions,
    select_images,
    write_predictions,
)


def prediction_set(cells: dict[str, list[int]], value: float = 0.0, views: int = 2) -> PredictionSet:
    ids = list(cells)
    counts = [len(cells[image_id]) for image_id in ids]
    n_cells = sum(counts)
    probs = np.full((n_cells, 19, views), value, np.float32) + np.arange(n_cells, dtype=np.float32)[:, None, None] / 100
    table = CellTable(
        ids,
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        np.array([k for image_id in ids for k in cells[image_id]], np.int32),
        datasets=["train"] * len(ids),
    )
    return PredictionSet(table, probs, np.full((len(ids), 19, views), value, np.float32))


def test_store_round_trip(tmp_path):
    original = prediction_set({"a": [1, 2], "b": [], "c": [7]})
    write_predictions(tmp_path / "p.zarr", original, model="m")
    again = read_predictions(tmp_path / "p.zarr")
    assert again.ids == original.ids and np.array_equal(again.offsets, original.offsets)
    assert np.array_equal(again.instance, original.instance) and np.array_equal(again.probs, original.probs)


def test_select_reorders_cells_with_their_images():
    predictions = prediction_set({"a": [1, 2], "b": [], "c": [7]})
    selected = select_images(predictions, [("train", "c"), ("train", "a"), ("train", "b")])
    assert selected.ids == ["c", "a", "b"]
    assert selected.instance.tolist() == [7, 1, 2]
    assert selected.offsets.tolist() == [0, 1, 3, 3]
    assert np.array_equal(selected.probs[0], predictions.probs[2])


def test_cells_are_joined_by_identity_and_a_mismatch_names_the_image():
    left = prediction_set({"a": [1, 2], "b": [3]})
    right = prediction_set({"b": [3], "a": [1, 2]}, value=0.5)
    aligned = align_to_cells(right, left.cells, "right")
    assert aligned.ids == ["a", "b"] and aligned.instance.tolist() == [1, 2, 3]
    wrong = prediction_set({"a": [1, 3], "b": [3]})
    with pytest.raises(InputDataError, match="cells of image a differ"):
        align_to_cells(wrong, left.cells, "wrong")


def test_average_is_equal_weight_over_members_after_averaging_views():
    a = prediction_set({"x": [1, 2]}, value=0.2)
    b = prediction_set({"x": [1, 2]}, value=0.6)
    mean = average_predictions([a, b], ["a", "b"])
    assert mean.probs.shape == (2, 19, 1)
    assert np.allclose(mean.probs[:, :, 0], (a.probs.mean(axis=2) + b.probs.mean(axis=2)) / 2)


def test_images_are_joined_by_dataset_and_id():
    predictions = prediction_set({"a": [1], "b": [2]})
    with pytest.raises(InputDataError, match="lacks image\\(s\\) pubhpa/a"):
        select_images(predictions, [("pubhpa", "a")])
