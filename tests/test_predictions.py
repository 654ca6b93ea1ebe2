import numpy as np
import pytest

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.predictions import (
    PredictionSet,
    align_to_cells,
    average_predictions,
    combine_predictions,
    rank_matched,
    read_predictions,
    select_images,
    store_model,
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


# ------------------------------------------------------------------------------------- combining members


def test_rank_mean_takes_the_order_from_the_ranks_and_the_values_from_the_mean():
    wide = np.array([[0.0], [0.9], [0.3], [0.6]])  # normalised ranks 0, 1, 1/3, 2/3
    narrow = np.array([[0.52], [0.50], [0.53], [0.51]])  # ranks 2/3, 0, 1, 1/3
    # averaged ranks 1/3, 1/2, 2/3, 1/2; plain mean 0.26, 0.70, 0.415, 0.555 (sorted 0.26 0.415 0.555 0.70).
    # Rows 1 and 3 tie on rank: the lower mean (row 3) takes the lower value. The plain mean would rank
    # row 1 first because the wide member says so; the ranks put row 2 first (first and third place).
    combined = rank_matched([wide, narrow], np.array([0.5, 0.5]))
    np.testing.assert_allclose(combined[:, 0], [0.26, 0.555, 0.70, 0.415], rtol=1e-12)


def test_rank_mean_keeps_each_classs_sorted_mean_values_and_one_member_unchanged():
    rng = np.random.default_rng(3)
    members = [rng.random((50, 19)), rng.random((50, 19)) ** 4, np.round(rng.random((50, 19)), 1)]
    combined = rank_matched(members, np.full(3, 1 / 3))
    plain = np.mean(members, axis=0)
    assert np.array_equal(np.sort(combined, axis=0), np.sort(plain, axis=0))
    assert np.array_equal(rank_matched(members[2:], np.ones(1)), members[2])  # ties included


def test_combine_mean_is_exactly_the_equal_weight_average():
    first = prediction_set({"a": [1, 2], "b": [5]}, value=0.2)
    second = prediction_set({"b": [5], "a": [1, 2]}, value=0.6)
    sources = ["m1", "m2"]
    combined = combine_predictions([first, second], sources, "mean")
    average = average_predictions([first, second], sources)
    assert np.array_equal(combined.probs, average.probs) and np.array_equal(combined.image_probs, average.image_probs)
    assert combined.probs.dtype == np.float32


def test_combine_by_weights_and_by_ranks_joins_cells_by_identity():
    first = prediction_set({"a": [1, 2], "b": [5]}, value=0.2)
    second = prediction_set({"b": [5], "a": [1, 2]}, value=0.6)
    weighted = combine_predictions([first, second], ["m1", "m2"], "weights", [3.0, 1.0])
    # cell a/1: row 0 of m1 (0.20) and row 1 of m2 (0.61); weights normalised to 0.75 / 0.25
    np.testing.assert_allclose(weighted.probs[0, 0, 0], 0.75 * 0.2 + 0.25 * 0.61, rtol=1e-6)
    assert weighted.ids == ["a", "b"] and weighted.probs.shape == (3, 19, 1)
    ranked = combine_predictions([first, second], ["m1", "m2"], "rank_mean")
    mean = average_predictions([first, second], ["m1", "m2"])
    # m1 orders the cells a/1 < a/2 < b/5, m2 b/5 < a/1 < a/2: the same per-class values, reassigned
    assert np.array_equal(np.sort(ranked.probs, axis=0), np.sort(mean.probs, axis=0))
    np.testing.assert_allclose(ranked.probs[:, 0, 0], np.sort(mean.probs[:, 0, 0])[[0, 2, 1]], rtol=0)


def test_combine_refuses_unknown_methods_and_misfit_weights():
    members = [prediction_set({"a": [1]}), prediction_set({"a": [1]})]
    with pytest.raises(ConfigError, match="ensemble.method: unknown method 'median'"):
        combine_predictions(members, ["m1", "m2"], "median")
    with pytest.raises(ConfigError, match="needs the members' fitted weights"):
        combine_predictions(members, ["m1", "m2"], "weights")
    with pytest.raises(ConfigError, match="no weights expected"):
        combine_predictions(members, ["m1", "m2"], "mean", [0.5, 0.5])
    with pytest.raises(InputDataError, match=r"weights \[1.0\] do not fit 2 members"):
        combine_predictions(members, ["m1", "m2"], "weights", [1.0])
    with pytest.raises(InputDataError, match="cells of image a differ"):
        combine_predictions([members[0], prediction_set({"a": [2]})], ["m1", "m2"], "rank_mean")


def test_store_model_names_the_stores_model(tmp_path):
    write_predictions(tmp_path / "p.zarr", prediction_set({"a": [1]}), model="cam")
    write_predictions(tmp_path / "q.zarr", prediction_set({"a": [1]}))
    assert store_model(tmp_path / "p.zarr") == "cam"
    with pytest.raises(InputDataError, match="q.zarr: a prediction store without its model's name"):
        store_model(tmp_path / "q.zarr")
