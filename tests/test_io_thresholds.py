import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.thresholds import read_thresholds, write_thresholds


def test_thresholds_round_trip_in_class_order(tmp_path):
    path = tmp_path / "t.csv"
    write_thresholds(path, np.array([0.55, 0.4]), ("a", "b"), np.array([1.0, np.nan]), "f1")
    assert path.read_text() == "class,name,threshold,oof_f1,method\n0,a,0.550000,1.000000,f1\n1,b,0.400000,,f1\n"
    assert read_thresholds(path, ("a", "b")).tolist() == [0.55, 0.4]


@pytest.mark.parametrize(
    "text, names, message",
    [
        (None, ("a", "b"), "missing thresholds {path}"),
        ("class,name,threshold\n0,a,0.5\n1,b,0.5\n", ("a", "b", "c"), "{path}: 2 thresholds, the task has 3 classes"),
        ("class,name,threshold\n0,a,0.5\n1,c,0.5\n", ("a", "b"), "{path} row 3: class 'c', expected 'b'"),
        ("class,name,threshold\n0,a,x\n1,b,0.5\n", ("a", "b"), "{path} row 2: no numeric threshold"),
        ("class,name,threshold\n0,a,0.5\n1,b,1.5\n", ("a", "b"), "{path} row 3: threshold 1.5 outside 0..1"),
    ],
    ids=["missing", "class-count", "class-name", "not-a-number", "outside"],
)
def test_a_bad_thresholds_file_is_named_with_its_row(tmp_path, text, names, message):
    path = tmp_path / "t.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputDataError) as error:
        read_thresholds(path, names)
    assert str(error.value) == message.format(path=path)
