"""label_cell: the project's own hpacellseg-style post-processing (scale-factor variant)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from hpa_pipeline.errors import PipelineError
from hpa_pipeline.preprocess import label_cell as label_cell_module
from hpa_pipeline.preprocess.label_cell import LabelCellParams, label_cell


def voronoi_maps(
    shape: tuple[int, int],
    centers: list[tuple[float, float]],
    cell_radius: float,
    nucleus_radius: float,
    blur: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CNN-like maps of round-ish cells (Voronoi regions cut at ``cell_radius``) with round nuclei.

    Returns:
        (nuclei_pred, cell_pred, truth): hpacellseg-layout uint8 maps and the true int32 labels.
    """
    seeds = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centers, start=1):
        seeds[int(round(cy)), int(round(cx))] = k
    # Nearest centre and its distance for every pixel, via the distance transform's indices.
    nearest, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    truth = np.where(nearest <= cell_radius, seeds[iy, ix], 0).astype(np.int32)
    # Touching border: pixels next to a different cell (not to background).
    k = np.ones((3, 3), np.uint8)
    as_float = truth.astype(np.float32)
    touching = (cv2.dilate(as_float, k) != cv2.erode(as_float, k)) & (cv2.erode(as_float, k) > 0)
    touching = cv2.dilate(touching.astype(np.uint8), k) > 0

    def soft(mask: np.ndarray) -> np.ndarray:
        return np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), blur) * 255.0, 0, 255)

    border, body = soft(touching), soft((truth > 0) & ~touching)
    zeros = np.zeros(shape, np.float32)
    nuclei_pred = np.dstack([zeros, zeros, soft(nearest <= nucleus_radius)])
    cell_pred = np.dstack([zeros, border, np.clip(body - border, 0, 255)])
    return np.rint(nuclei_pred).astype(np.uint8), np.rint(cell_pred).astype(np.uint8), truth


def best_iou(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Best IoU of each true cell with any predicted cell."""
    n_t, n_p = int(truth.max()) + 1, int(labels.max()) + 1
    table = np.bincount(truth.ravel() * n_p + labels.ravel().astype(np.int64), minlength=n_t * n_p).reshape(n_t, n_p)
    inter = table[1:, 1:]
    union = table[1:].sum(1)[:, None] + table[:, 1:].sum(0)[None, :] - inter
    return (inter / np.maximum(union, 1)).max(axis=1) if n_p > 1 else np.zeros(n_t - 1)


def square_cells(
    shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], nucleus_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Certain maps of isolated rectangular cells (y0, x0, height, width), each with a square nucleus."""
    nuclei = np.zeros((*shape, 3), np.uint8)
    cells = np.zeros((*shape, 3), np.uint8)
    for y0, x0, h, w in boxes:
        cells[y0 : y0 + h, x0 : x0 + w, 2] = 255
        ny, nx = y0 + (h - nucleus_side) // 2, x0 + (w - nucleus_side) // 2
        nuclei[ny : ny + nucleus_side, nx : nx + nucleus_side, 2] = 255
    return nuclei, cells


def test_recovers_known_cells() -> None:
    rng = np.random.default_rng(0)
    centers = [
        (y + rng.uniform(-30, 30), x + rng.uniform(-30, 30))
        for y in range(128, 1024, 256)
        for x in range(128, 1024, 256)
    ]
    nuclei, cells, truth = voronoi_maps((1024, 1024), centers, cell_radius=150, nucleus_radius=40)
    labels = label_cell(nuclei, cells, scale_factor=0.5)
    assert labels.dtype == np.uint16 and labels.shape == truth.shape
    assert labels.max() == len(centers)
    assert best_iou(truth, labels).min() >= 0.9


def test_labels_are_numbered_in_raster_order() -> None:
    nuclei, cells, _ = voronoi_maps((512, 512), [(380, 100), (100, 400), (120, 120)], cell_radius=90, nucleus_radius=25)
    labels = label_cell(nuclei, cells, scale_factor=0.25)
    flat = labels.ravel()
    first = [int(np.flatnonzero(flat == k)[0]) for k in range(1, int(labels.max()) + 1)]
    assert labels.max() == 3 and first == sorted(first)


@pytest.mark.parametrize("scale_factor", [0.25, 0.5])
def test_min_cell_area_scales_with_square_of_scale_factor(scale_factor: float) -> None:
    threshold = round(5500 * scale_factor**2)
    nucleus_side = int(np.ceil(np.sqrt(2500 * scale_factor**2))) + 2  # nuclei always large enough
    width = nucleus_side + 10
    # Heights around the threshold; rows of isolated cells, 8 px apart.
    heights = list(range(threshold // width - 6, threshold // width + 8))
    boxes = [(8, 8 + i * (width + 8), h, width) for i, h in enumerate(heights)]
    shape = (max(heights) + 16, 8 + len(heights) * (width + 8))
    nuclei, cells = square_cells(shape, boxes, nucleus_side)
    # The areas the cells end up with when no size rule applies (label_cell trims their outlines).
    free = label_cell(nuclei, cells, scale_factor, params=LabelCellParams(min_cell_area=0))
    areas = np.bincount(free.ravel())[1:]
    assert len(areas) == len(boxes)
    below, above = areas[areas < threshold], areas[areas >= threshold]
    assert len(below) and len(above)
    assert threshold - below.max() <= 2 * width and above.min() - threshold <= 2 * width  # "just" below/above

    kept = label_cell(nuclei, cells, scale_factor)
    assert kept.max() == len(above)
    assert sorted(np.bincount(kept.ravel())[1:]) == sorted(above)


@pytest.mark.parametrize("scale_factor", [0.25, 0.5])
def test_min_nucleus_area_scales_with_square_of_scale_factor(scale_factor: float) -> None:
    threshold = 2500 * scale_factor**2
    side_small = int(np.floor(np.sqrt(threshold))) - 1  # area just below
    side_big = int(np.ceil(np.sqrt(threshold))) + 1  # area just above
    cell_side = int(np.sqrt(5500 * scale_factor**2)) + 30
    boxes = [(10, 10, cell_side, cell_side), (10, 30 + cell_side, cell_side, cell_side)]
    nuclei_small, cells = square_cells((cell_side + 20, 2 * cell_side + 40), boxes[:1], side_small)
    nuclei_big, cells_big = square_cells((cell_side + 20, 2 * cell_side + 40), boxes[1:], side_big)
    labels = label_cell(np.maximum(nuclei_small, nuclei_big), np.maximum(cells, cells_big), scale_factor)
    assert labels.max() == 1
    assert labels[10 + cell_side // 2, 30 + cell_side + cell_side // 2] == 1  # the cell with the big nucleus


def test_more_than_255_cells_as_uint16() -> None:
    pitch, n = 36, 20  # 400 cells
    centers = [(pitch / 2 + i * pitch, pitch / 2 + j * pitch) for i in range(n) for j in range(n)]
    nuclei, cells, truth = voronoi_maps((pitch * n, pitch * n), centers, cell_radius=30, nucleus_radius=9, blur=1.0)
    labels = label_cell(nuclei, cells, scale_factor=0.2)  # cells >= 220 px, nuclei >= 100 px
    assert labels.dtype == np.uint16
    assert labels.max() == 400
    assert (best_iou(truth, labels) >= 0.8).all()


def test_too_many_cells_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(label_cell_module, "_MAX_LABELS", 3)  # stands in for uint16's 65535
    nuclei, cells, _ = voronoi_maps((512, 512), [(100, 100), (100, 400), (400, 100), (400, 400)], 120, 30)
    with pytest.raises(PipelineError, match="4 cells.*uint16"):
        label_cell(nuclei, cells, scale_factor=0.25)


@pytest.mark.parametrize("shape", [(64, 64), (300, 200), (1, 1)])
def test_empty_maps_give_zeros(shape: tuple[int, int]) -> None:
    zeros = np.zeros((*shape, 3), np.uint8)
    labels = label_cell(zeros, zeros.copy(), scale_factor=0.25)
    assert labels.dtype == np.uint16 and labels.shape == shape and not labels.any()


def test_cell_map_without_nuclei_gives_zeros() -> None:
    nuclei, cells, _ = voronoi_maps((256, 256), [(128, 128)], 100, 30)
    assert not label_cell(np.zeros_like(nuclei), cells, scale_factor=0.25).any()


def test_border_channels_are_summed_without_wrap_around() -> None:
    """Two nuclei joined by a bridge where both border maps say 200/255: the sum (400) is a border,
    so the seeds are split and two cells come out; a uint8 sum would wrap to 144, which (as the
    second case shows) is no border, and the nuclei would merge into one cell."""
    nuclei, cells, truth = voronoi_maps((256, 512), [(128, 128), (128, 384)], cell_radius=140, nucleus_radius=40)
    bridge = (slice(118, 139), slice(150, 363))
    nuclei[bridge + (2,)] = 255
    for nucleus_border, cell_border, n_cells in ((200, 200, 2), (144, 0, 1)):  # 144 = 400 mod 256
        nuclei[bridge + (1,)] = nucleus_border
        cells[bridge + (1,)] = cell_border
        assert label_cell(nuclei, cells, scale_factor=0.25).max() == n_cells


def test_cell_border_really_bounds_the_cell_region() -> None:
    """A nucleus-free bright area behind a certain border band stays out of the neighbouring cell."""
    shape = (256, 512)
    nuclei, cells = square_cells(shape, [(28, 28, 200, 200)], 60)
    cells[28:228, 236:484, 2] = 255  # bright, but no nucleus
    cells[28:228, 228:236, 1] = 255  # border band between the two areas
    cells[28:228, 228:236, 2] = 200
    labels = label_cell(nuclei, cells, scale_factor=0.25)
    assert labels.max() == 1
    assert not labels[:, 240:].any()


def test_rejects_malformed_maps() -> None:
    good = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(PipelineError, match="nuclei_pred must be a uint8"):
        label_cell(good.astype(np.float32), good)
    with pytest.raises(PipelineError, match="cell_pred must be a uint8"):
        label_cell(good, good[..., :2])
    with pytest.raises(PipelineError, match="differ in shape"):
        label_cell(good, np.zeros((32, 33, 3), np.uint8))
    with pytest.raises(PipelineError, match="scale_factor"):
        label_cell(good, good, scale_factor=0)
