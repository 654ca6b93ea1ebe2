import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.kaggle.images2018 import (
    format_labels,
    macro_f1,
    per_class_f1,
    read_submission_2018,
    validate_submission_2018,
    write_submission_2018,
)


def test_submission_round_trip_in_the_given_order(tmp_path):
    labels = np.zeros((3, 28), dtype=bool)
    labels[0, [0, 25]] = True
    labels[2, 27] = True
    write_submission_2018(tmp_path / "s.csv", ["b", "a", "c"], labels)
    assert (tmp_path / "s.csv").read_text() == "Id,Predicted\nb,0 25\na,\nc,27\n"
    assert read_submission_2018(tmp_path / "s.csv") == {"b": [0, 25], "a": [], "c": [27]}
    report = validate_submission_2018(tmp_path / "s.csv", ["a", "b", "c"])
    assert (report.images, report.labels, report.empty_images) == (3, 3, 1)
    assert format_labels(labels[0]) == "0 25"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Id,Predicted\na,28\n", r"s.csv row 2 \(Id a\): class '28' is not an integer in 0..27"),
        ("Id,Predicted\na,1\nb,2 \u00b2\n", r"s.csv row 3 \(Id b\): class '\u00b2' is not an integer in 0..27"),
        ("Id,Predicted\na,1\nb,\u0663\n", r"s.csv row 3 \(Id b\): class '\u0663' is not an integer in 0..27"),
        ("Id,Predicted\na,1 1\n", "row 2 .*class 1 occurs twice"),
        ("Id,Predicted\na,1\na,2\n", "row 3: Id a occurs twice"),
        ("ID,Label\na,1\n", "row 1: header"),
        ("Id,Predicted\na,1\n", "no row for test image.*b"),
        ("Id,Predicted\na,1\nb,\nz,3\n", "not in the sample submission: z"),
    ],
)
def test_bad_submissions_are_named_by_row(tmp_path, text, message):
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(InputDataError, match=message):
        validate_submission_2018(tmp_path / "s.csv", ["a", "b"])


def test_macro_f1_matches_hand_computed_value():
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)
    predicted = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=bool)
    # class 0: tp 1, truth 2, predicted 2 -> 0.5; class 1: tp 2, truth 2, predicted 2 -> 1; class 2 absent
    assert per_class_f1(truth, predicted)[:2].tolist() == [0.5, 1.0] and np.isnan(per_class_f1(truth, predicted)[2])
    assert macro_f1(truth, predicted) == pytest.approx(0.75)
    predicted[0, 2] = True  # a class absent from the truth is left out, predicted or not (as in Kaggle's sum)
    assert macro_f1(truth, predicted) == pytest.approx(0.75)


def test_macro_f1_is_kaggles_2018_figure_rescaled_to_the_classes_present():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    truth = rng.random((40, 28)) < 0.1
    truth[:, [3, 17]] = False  # two classes without positives, one of them predicted below
    predicted = rng.random((40, 28)) < 0.15
    predicted[:, 3] = True
    kaggle = f1_score(truth, predicted, average="macro", zero_division=0)  # all 28 classes
    assert macro_f1(truth, predicted) == pytest.approx(kaggle * 28 / 26)
    truth[0] = True  # every class present: the two definitions agree
    assert macro_f1(truth, predicted) == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
