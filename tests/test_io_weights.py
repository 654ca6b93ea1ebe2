import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.weights import read_member_weights, write_member_weights


def test_weights_read_back_exactly_in_the_order_asked(tmp_path):
    weights = np.array([0.1 + 0.2, 1 - (0.1 + 0.2)])  # floats whose shortest text has 17 digits
    write_member_weights(tmp_path / "w.csv", ["a", "b"], weights, np.array([0.5, 0.25]), 0.75)
    assert (tmp_path / "w.csv").read_text().splitlines() == [
        "member,weight,member_oof_score,combined_oof_score",
        "a,0.30000000000000004,0.500000,0.750000",
        "b,0.7,0.250000,0.750000",
    ]
    assert read_member_weights(tmp_path / "w.csv", ["b", "a"]).tolist() == [weights[1], weights[0]]


def test_weights_of_other_members_or_bad_rows_are_refused(tmp_path):
    path = tmp_path / "w.csv"
    write_member_weights(path, ["a", "b"], np.array([0.5, 0.5]), np.zeros(2), 0.0)
    with pytest.raises(InputDataError, match="holds the weights of a, b, not of a, c .*rerun fit_weights"):
        read_member_weights(path, ["a", "c"])
    path.write_text("member,weight\na,-0.5\n")
    with pytest.raises(InputDataError, match="w.csv row 2: weight -0.5 is negative"):
        read_member_weights(path, ["a"])
    path.write_text("member,weight\na,heavy\n")
    with pytest.raises(InputDataError, match="row 2: weight 'heavy' is not a number"):
        read_member_weights(path, ["a"])
    with pytest.raises(InputDataError, match="missing member weights"):
        read_member_weights(tmp_path / "none.csv", ["a"])
