"""Validating a submission (rule validate_submission): every row's size against the test images and every
mask decoded, so a broken file is caught here and not on Kaggle; in the 2018 task every sample
submission ID once with valid class indices."""

from __future__ import annotations

from pathlib import Path

from hpa_pipeline.io.channels import image_shape
from hpa_pipeline.kaggle.images2018 import Submission2018Report, validate_submission_2018
from hpa_pipeline.kaggle.submission import SubmissionReport, validate_submission
from hpa_pipeline.labels import TASK_IMAGES, read_label_table, read_test_table


def expected_sizes(image_dir: Path, table_path: Path) -> dict[str, tuple[int, int]]:
    """Image ID -> (width, height) of every test image of ``sample_submission.csv`` (or an index),
    from the channel files' headers."""
    sizes = {}
    for image_id in read_test_table(table_path)["ID"]:
        height, width = image_shape(image_dir, image_id)
        sizes[image_id] = (width, height)
    return sizes


def check_submission(submission_path: Path, image_dir: Path, table_path: Path) -> SubmissionReport:
    """Validate a submission against the test images listed in ``table_path`` (decodes every mask)."""
    return validate_submission(submission_path, expected_sizes(image_dir, table_path))


def check_submission_2018(submission_path: Path, table_path: Path) -> Submission2018Report:
    """Validate a 2018 submission (``Id,Predicted``) against the IDs of ``sample_submission.csv``."""
    ids = read_label_table(table_path, "test", TASK_IMAGES)["ID"].tolist()
    return validate_submission_2018(submission_path, ids)
