from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predictions import prediction_set

from hpa_pipeline.ensemble import average_ensemble, fit_member_weights, fit_weights_file
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.folds import write_folds
from hpa_pipeline.io.index import write_index
from hpa_pipeline.io.predictions import COMBINE_METHODS, average_predictions, read_predictions, write_predictions
from hpa_pipeline.io.stores import open_store
from hpa_pipeline.scores import mean_average_precision


def test_the_ensemble_store_is_the_member_average_in_the_first_members_order(tmp_path):
    first = prediction_set({"a": [1, 2], "b": [5]}, value=0.2)
    second = prediction_set({"b": [5], "a": [1, 2]}, value=0.6)
    write_predictions(tmp_path / "m1.zarr", first)
    write_predictions(tmp_path / "m2.zarr", second)
    average_ensemble([tmp_path / "m1.zarr", tmp_path / "m2.zarr"], "stage1", tmp_path / "e.zarr")
    ensemble = read_predictions(tmp_path / "e.zarr")
    assert ensemble.ids == ["a", "b"] and ensemble.instance.tolist() == [1, 2, 5]
    assert ensemble.probs.shape == (3, 19, 1)
    # cell a/1 is row 0 of m1 and row 1 of m2 (+0.00 / +0.01 over the base values)
    np.testing.assert_allclose(ensemble.probs[0, 0, 0], (0.2 + 0.6 + 0.01) / 2, rtol=1e-6)
    attrs = open_store(tmp_path / "e.zarr", "predictions").attrs
    assert attrs["ensemble"] == "stage1" and len(attrs["members"]) == 2


def test_members_with_other_cells_are_refused_and_nothing_is_written(tmp_path):
    write_predictions(tmp_path / "m1.zarr", prediction_set({"a": [1, 2]}))
    write_predictions(tmp_path / "m2.zarr", prediction_set({"a": [1, 3]}))
    with pytest.raises(InputDataError, match="cells of image a differ"):
        average_ensemble([tmp_path / "m1.zarr", tmp_path / "m2.zarr"], "bad", tmp_path / "e.zarr")
    assert not (tmp_path / "e.zarr").exists()


def _store_files(path: Path) -> dict[str, bytes]:
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()}


def test_the_mean_ensemble_store_is_byte_identical_to_the_plain_average(tmp_path):
    members = [prediction_set({"a": [1, 2], "b": [5]}, value=0.2), prediction_set({"b": [5], "a": [1, 2]}, value=0.6)]
    paths = [tmp_path / "m1.zarr", tmp_path / "m2.zarr"]
    for member, path in zip(members, paths):
        write_predictions(path, member, model=path.stem)
    average_ensemble(paths, "stage1", tmp_path / "e.zarr", "mean")
    # what the ensemble stage wrote before ensemble.method existed
    sources = [str(path) for path in paths]
    write_predictions(
        tmp_path / "before.zarr", average_predictions(members, sources), ensemble="stage1", members=sources
    )
    assert _store_files(tmp_path / "e.zarr") == _store_files(tmp_path / "before.zarr")


def _weak_label_members(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Two members, each informative on half the classes and noise on the other half."""
    rng = np.random.default_rng(seed)
    targets = rng.random((400, 19)) < 0.2
    signal = targets + rng.normal(0, 0.6, targets.shape)
    noise = rng.random(targets.shape)
    first = np.where(np.arange(19) < 10, signal, noise)
    second = np.where(np.arange(19) < 10, noise, signal) * 0.1  # another calibration
    return [first, second], targets


def test_fitted_weights_beat_every_member_and_the_mean_and_repeat_for_a_seed():
    members, targets = _weak_label_members()
    fit = fit_member_weights(members, targets, seed=0)
    assert fit.weights.min() >= 0 and fit.weights.sum() == pytest.approx(1.0, abs=1e-12)
    for member, score in zip(members, fit.member_scores):
        assert score == mean_average_precision(targets, member)
    assert fit.mean_score == mean_average_precision(targets, 0.5 * members[0] + 0.5 * members[1])
    assert fit.score >= max(fit.member_scores) and fit.score >= fit.mean_score
    assert fit.score > max(*fit.member_scores, fit.mean_score)  # here the weights find more than either start
    assert fit.score == mean_average_precision(targets, fit.weights[0] * members[0] + fit.weights[1] * members[1])
    again = fit_member_weights(members, targets, seed=0)
    assert again.weights.tolist() == fit.weights.tolist() and again.score == fit.score


def test_a_useless_member_gets_no_weight_when_one_member_alone_is_best():
    members, targets = _weak_label_members()
    useless = np.random.default_rng(9).random(targets.shape)
    perfect = targets.astype(float)
    fit = fit_member_weights([useless, perfect], targets, seed=1)
    assert fit.weights.tolist() == [0.0, 1.0] and fit.score == 1.0
    with pytest.raises(InputDataError, match="no class has a positive training image"):
        fit_member_weights([useless, perfect], np.zeros_like(targets), seed=1)


def _training_tables(tmp_path: Path, labels: dict[str, str]) -> tuple[Path, Path]:
    ids = list(labels)
    index = pd.DataFrame({"ID": ids, "shard": 0, "Label": [labels[i] for i in ids], "dataset": "train"})
    write_index(tmp_path / "index.csv", index)
    write_folds(tmp_path / "folds.csv", ids, np.arange(len(ids)) % 2)
    return tmp_path / "index.csv", tmp_path / "folds.csv"


def test_weights_file_is_fitted_on_weak_labels_and_drives_the_weighted_ensemble(tmp_path):
    cells = {"a": [1, 2], "b": [3], "c": [4, 5]}
    index, folds = _training_tables(tmp_path, {"a": "0", "b": "1", "c": "0|1"})
    good = prediction_set(cells, value=0.0, views=1)
    good.probs[:, :2, 0] = [[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.7, 0.8], [0.9, 0.7]]
    bad = prediction_set(cells, value=0.0, views=1)
    bad.probs[:, :2, 0] = [[0.1, 0.9], [0.2, 0.8], [0.9, 0.1], [0.3, 0.2], [0.1, 0.3]]
    write_predictions(tmp_path / "good.zarr", good, model="good")
    write_predictions(tmp_path / "bad.zarr", bad, model="bad")
    paths = [tmp_path / "bad.zarr", tmp_path / "good.zarr"]
    fit = fit_weights_file(paths, [index], [folds], tmp_path / "weights.csv", seed=0)
    # weak labels: cells of a carry class 0, of b class 1, of c both; `good` ranks every positive first
    assert fit.weights.tolist() == [0.0, 1.0] and fit.score == 1.0
    assert (tmp_path / "weights.csv").read_text() == (
        "member,weight,member_oof_score,combined_oof_score\n"
        f"bad,0.0,{fit.member_scores[0]:.6f},1.000000\n"
        "good,1.0,1.000000,1.000000\n"
    )
    average_ensemble(paths, "stage1", tmp_path / "e.zarr", "weights", tmp_path / "weights.csv")
    ensemble = read_predictions(tmp_path / "e.zarr")
    assert np.array_equal(ensemble.probs, good.probs)
    attrs = open_store(tmp_path / "e.zarr", "predictions").attrs
    assert attrs["method"] == "weights" and attrs["weights"] == [0.0, 1.0]


def test_the_cli_offers_the_package_methods():
    from hpa_pipeline import cli

    assert cli._COMBINE_METHODS == COMBINE_METHODS
