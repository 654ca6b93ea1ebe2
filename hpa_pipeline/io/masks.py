"""Cell label masks: the segmentation store's per-image label arrays and their nearest-exact resizing."""

from __future__ import annotations

import cv2
import numpy as np
import zarr


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-exact resize of a label image (no new label values are invented)."""
    if labels.shape == (height, width):
        return labels.copy()
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def read_labels(masks: zarr.Group, row: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The label image of image ``row`` of an open ``masks`` store, resized to ``shape`` when given."""
    labels = masks["labels"][str(row)][...]
    if shape is not None and labels.shape != tuple(shape):
        labels = resize_labels(labels, *shape)
    return labels
