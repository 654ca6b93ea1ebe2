import math

import pytest
import torch
from torch import nn

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.predict import (
    D4_VIEWS,
    cell_mean_pool,
    d4_inverse,
    d4_transform,
    predict_cam_cells,
    predict_cell_crops,
    tta_views,
)


def _loop_pool(values, labels, instances=None):
    """Reference: a plain Python loop over images and cells."""
    rows, index = [], []
    for b in range(values.shape[0]):
        wanted = instances[b] if instances is not None else sorted(set(labels[b].unique().tolist()) - {0})
        for k in wanted:
            inside = labels[b] == k
            if inside.any():
                rows.append(values[b][:, inside].mean(dim=1))
            else:
                rows.append(torch.full((values.shape[1],), float("nan")))
            index.append((b, int(k)))
    return torch.stack(rows), torch.tensor(index)


def test_cell_mean_pool_equals_a_loop_over_cells_beyond_255_cells():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 400, (3, 40, 40), generator=generator)
    labels[1] = torch.randint(0, 30, (40, 40), generator=generator)  # images of different cell counts
    labels[2][labels[2] == 17] = 0  # a gap in the numbering
    values = torch.randn(3, 5, 40, 40, generator=generator)
    pooled, index = cell_mean_pool(values, labels)
    expected, expected_index = _loop_pool(values, labels)
    assert int(labels[0].max()) > 255
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(pooled, expected)


def test_cell_mean_pool_returns_listed_instances_in_order_with_nan_for_missing():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 300, (2, 32, 32), generator=generator)
    labels[0][labels[0] == 5] = 0
    values = torch.randn(2, 3, 32, 32, generator=generator)
    instances = [torch.tensor([7, 5, 1, 299, 1000]), [3, 2]]  # 5 vanished, 1000 beyond the max
    pooled, index = cell_mean_pool(values, labels, instances)
    expected, expected_index = _loop_pool(values, labels, [[7, 5, 1, 299, 1000], [3, 2]])
    assert index.tolist() == expected_index.tolist()
    torch.testing.assert_close(pooled, expected, equal_nan=True)
    assert torch.isnan(pooled[1]).all() and torch.isnan(pooled[4]).all()
    assert torch.isfinite(pooled[[0, 2, 3, 5, 6]]).all()


def test_cell_mean_pool_skips_background_and_handles_empty_masks():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[1, :2, :2] = 3
    values = torch.randn(2, 4, 8, 8)
    pooled, index = cell_mean_pool(values, labels)
    assert index.tolist() == [[1, 3]]
    torch.testing.assert_close(pooled[0], values[1, :, :2, :2].mean(dim=(1, 2)))


def test_cell_mean_pool_is_differentiable():
    values = torch.randn(1, 2, 6, 6, requires_grad=True)
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :3] = 1
    pooled, _ = cell_mean_pool(values, labels)
    pooled.sum().backward()
    assert torch.allclose(values.grad[0, :, :3], torch.full((2, 3, 6), 1 / 18))
    assert (values.grad[0, :, 3:] == 0).all()


def test_the_eight_d4_views_are_distinct_and_invertible():
    x = torch.arange(2 * 5 * 5).reshape(2, 5, 5)
    outputs = [d4_transform(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outputs}) == 8
    assert D4_VIEWS[0] == (False, False, False)
    for k in range(8):
        assert torch.equal(d4_inverse(d4_transform(x, k), k), x)
    assert tta_views(2) == D4_VIEWS[:2]
    with pytest.raises(ConfigError, match="n_tta"):
        tta_views(9)


class _PixelwiseCAM(nn.Module):
    """A CAM model whose output is a pixel-wise function of the input (stride 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 19, kernel_size=1, bias=False)

    def forward(self, x):
        return self.conv(x)


class _StridedCAM(nn.Module):
    """A pixel-wise head behind a stride-4 average pool: CAM smaller than the mask."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 19, kernel_size=1, bias=False)

    def forward(self, x):
        return self.conv(nn.functional.avg_pool2d(x, 4))


def test_cell_predictions_are_invariant_to_the_tta_views():
    torch.manual_seed(0)
    model = _PixelwiseCAM()
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
    model = _PixelwiseCAM()
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
