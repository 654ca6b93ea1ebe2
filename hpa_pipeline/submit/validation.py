"""Validating a submission (rule validate_submission): every row's size against the test images and every
mask decoded, so a broken file is caught here and not on Kaggle."""

from __future__ import annotations

from pathlib import Path

from hpa_pipeline.io.channels import image_shape
from hpa_pipeline.kaggle.submission import SubmissionReport, validate_submission
from hpa_pipeline.labels import read_test_table


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
