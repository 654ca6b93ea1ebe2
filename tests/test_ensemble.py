import numpy as np
import pytest
from test_predictions import prediction_set

from hpa_pipeline.ensemble import average_ensemble
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.predictions import read_predictions, write_predictions
from hpa_pipeline.io.stores import open_store


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
