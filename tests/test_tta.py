import math

import pytest
import torch
from conftest import PixelwiseCAM
from torch import nn

from hpa_pipeline.nets.d4 import d4_transform
from hpa_pipeline.nets.pooling import cell_mean_pool
from hpa_pipeline.nets.tta import predict_cam_cells, predict_cell_crops


class _StridedCAM(nn.Module):
    """A pixel-wise head behind a stride-4 average pool: CAM smaller than the mask."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 19, kernel_size=1, bias=False)

    def forward(self, x):
        return self.conv(nn.functional.avg_pool2d(x, 4))


def test_cell_predictions_are_invariant_to_the_tta_views():
    torch.manual_seed(0)
    model = PixelwiseCAM()
    images = torch.randn(2, 4, 24, 20)  # non-square: rotations change the shape
    labels = torch.randint(0, 12, (2, 24, 20))
    result = predict_cam_cells(model, images, labels, n_tta=8)
    assert result.cell_probs.shape == (len(result.index), 19, 8)
    assert result.image_probs.shape == (2, 19, 8)
    torch.testing.assert_close(result.cell_probs, result.cell_probs[..., :1].expand_as(result.cell_probs))
    torch.testing.assert_close(result.image_probs, result.image_probs[..., :1].expand_as(result.image_probs))
    expected, expected_index = cell_mean_pool(model(images).detach(), labels)
    assert torch.equal(result.index, expected_index)
    torch.testing.assert_close(result.cell_probs[..., 0], torch.sigmoid(expected))
    assert not result.fallback.any()


def test_cam_is_upsampled_to_the_mask_size_with_nearest():
    torch.manual_seed(1)
    model = _StridedCAM()
    images = torch.randn(1, 4, 32, 32)
    labels = torch.randint(0, 6, (1, 64, 64))  # masks may be finer than the images
    result = predict_cam_cells(model, images, labels, n_tta=1)
    cam = model(images).detach()
    up = cam.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    expected, _ = cell_mean_pool(up, labels)
    torch.testing.assert_close(result.cell_probs[..., 0], torch.sigmoid(expected))
    torch.testing.assert_close(result.image_probs[..., 0], torch.sigmoid(cam.mean(dim=(2, 3))))


def test_vanished_cells_get_nan_or_the_box_fallback():
    torch.manual_seed(2)
    model = PixelwiseCAM()
    images = torch.randn(1, 4, 16, 16)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :4, :4] = 1
    instances = [torch.tensor([1, 2])]  # cell 2 has no pixel at this resolution
    plain = predict_cam_cells(model, images, labels, instances, n_tta=4)
    assert plain.fallback.tolist() == [False, True]
    assert torch.isnan(plain.cell_probs[1]).all() and torch.isfinite(plain.cell_probs[0]).all()
    boxes = [torch.tensor([[0, 0, 4, 4], [10, 12, 10, 12]])]  # an empty box widens to one pixel
    with_box = predict_cam_cells(model, images, labels, instances, n_tta=4, fallback_boxes=boxes)
    cam = model(images).detach()
    expected = torch.sigmoid(cam[0, :, 10, 12])
    for view in range(4):
        torch.testing.assert_close(with_box.cell_probs[1, :, view], expected)
    torch.testing.assert_close(with_box.cell_probs[0], plain.cell_probs[0])


def test_cell_crop_predictions_have_one_column_per_view():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 19))
    crops = torch.randint(0, 256, (5, 8, 6, 6), dtype=torch.uint8)
    model.train()
    probs = predict_cell_crops(model, crops, n_tta=8)
    assert probs.shape == (5, 19, 8) and probs.dtype == torch.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    assert model.training  # mode restored
    with torch.no_grad():
        first = torch.sigmoid(model(crops.float()))
        rotated = torch.sigmoid(model(d4_transform(crops.float(), 4)))
    torch.testing.assert_close(probs[..., 0], first)
    torch.testing.assert_close(probs[..., 4], rotated)
    assert not math.isnan(float(probs.sum()))


def test_random_crop_windows_are_seeded_and_inside_the_image():
    from hpa_pipeline.nets.tta import crop_windows

    windows = crop_windows(128, 96, 4, seed=0, row=3)
    assert windows == crop_windows(128, 96, 4, seed=0, row=3) != crop_windows(128, 96, 4, seed=0, row=4)
    assert all(0 <= top <= 32 and 0 <= left <= 32 for top, left in windows) and len(windows) == 4


def test_views_are_combined_by_max_or_kept_for_the_mean():
    import numpy as np

    from hpa_pipeline.io.cells import CellTable
    from hpa_pipeline.io.predictions import PredictionSet
    from hpa_pipeline.nets.tta import combine_views

    image_probs = np.array([[[0.1, 0.7, 0.4]], [[0.5, 0.2, 0.3]]], dtype=np.float32)  # 2 images, 1 class, 3 views
    predictions = PredictionSet(
        CellTable(["a", "b"], np.zeros(3, np.int64), np.zeros(0, np.int32), datasets=["test"] * 2),
        np.zeros((0, 1, 3), np.float32),
        image_probs,
    )
    assert combine_views(predictions, "max").image_probs[:, 0, 0].tolist() == pytest.approx([0.7, 0.5])
    assert combine_views(predictions, "mean") is predictions  # averaged later, like every stage's views
