import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.kaggle.submission import encode_cell_masks, format_prediction_string, write_submission
from hpa_pipeline.submit.validation import check_submission, expected_sizes


def _row(image_id: str, width: int, height: int, n_cells: int) -> tuple[str, int, int, str]:
    labels = np.zeros((height, width), np.uint16)
    for k in range(1, n_cells + 1):
        labels[10 * k : 10 * k + 5, 10:20] = k
    probs = np.full((n_cells, 19), 0.25)
    return image_id, width, height, format_prediction_string(probs, encode_cell_masks(labels, range(1, n_cells + 1)))


def test_sizes_come_from_the_channel_files(tiny_dataset):
    sizes = expected_sizes(tiny_dataset / "test", tiny_dataset / "sample_submission.csv")
    assert sizes == {"test0": (96, 96), "test1": (120, 80)}


def test_a_good_submission_is_summarised(tiny_dataset, tmp_path):
    write_submission(tmp_path / "s.csv", [_row("test0", 96, 96, 2), ("test1", 120, 80, "")])
    report = check_submission(tmp_path / "s.csv", tiny_dataset / "test", tiny_dataset / "sample_submission.csv")
    assert report.to_dict() == {"images": 2, "cells": 2, "detections": 38, "empty_images": 1}


def test_a_row_of_the_wrong_size_names_the_image(tiny_dataset, tmp_path):
    write_submission(tmp_path / "s.csv", [_row("test0", 96, 96, 1), _row("test1", 80, 120, 1)])
    with pytest.raises(InputDataError, match="test1"):
        check_submission(tmp_path / "s.csv", tiny_dataset / "test", tiny_dataset / "sample_submission.csv")


def test_a_missing_test_image_is_named(tiny_dataset, tmp_path):
    write_submission(tmp_path / "s.csv", [_row("test0", 96, 96, 1)])
    with pytest.raises(InputDataError, match="test1"):
        check_submission(tmp_path / "s.csv", tiny_dataset / "test", tiny_dataset / "sample_submission.csv")


def test_a_2018_submission_is_checked_against_the_sample_submission(tmp_path):
    from hpa_pipeline.errors import InputDataError
    from hpa_pipeline.submit.validation import check_submission_2018

    (tmp_path / "sample.csv").write_text("Id,Predicted\na,0\nb,0\n")
    (tmp_path / "s.csv").write_text("Id,Predicted\nb,3 27\na,\n")
    report = check_submission_2018(tmp_path / "s.csv", tmp_path / "sample.csv")
    assert (report.images, report.labels, report.empty_images) == (2, 2, 1)
    (tmp_path / "s.csv").write_text("Id,Predicted\nb,28\na,\n")
    with pytest.raises(InputDataError, match=r"s.csv row 2 \(Id b\): class '28'"):
        check_submission_2018(tmp_path / "s.csv", tmp_path / "sample.csv")
