import pytest
import torch
import torch.nn.functional as F
from conftest import PixelwiseCAM
from torch import nn

from hpa_pipeline.nets.d4 import d4_transform
from hpa_pipeline.nets.models import create_model
from hpa_pipeline.nets.pooling import cell_mean_pool, present_cells
from hpa_pipeline.train.cutmix import apply_cutmix, mixed_fraction, sample_cutmix
from hpa_pipeline.train.losses import binary_focal_with_logits
from hpa_pipeline.train.steps import (
    cam_consistency_loss,
    cell_crop_loss,
    pseudo_targets_for_cells,
)


def _batch(seed: int = 0, batch: int = 3, size: int = 32, n_cells: int = 6):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 4, size, size, generator=generator)
    labels = torch.randint(0, n_cells + 1, (batch, size, size), generator=generator)
    targets = (torch.rand(batch, 19, generator=generator) < 0.3).float()
    return images, labels, targets


def test_cam_step_gives_finite_losses_and_gradients():
    torch.manual_seed(0)
    model = create_model("image", "test_efficientnet")
    images, labels, targets = _batch(size=64)
    parts = cam_consistency_loss(model, images, labels, targets, None, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p) for p in parts)
    torch.testing.assert_close(parts.total, parts.class_loss + parts.consistency_loss)
    parts.total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0


def test_same_generator_seed_gives_the_same_loss():
    torch.manual_seed(0)
    model = create_model("image", "test_efficientnet")
    images, labels, targets = _batch(size=64)
    a = cam_consistency_loss(model, images, labels, targets, None, torch.Generator().manual_seed(5))
    b = cam_consistency_loss(model, images, labels, targets, None, torch.Generator().manual_seed(5))
    assert torch.equal(a.total, b.total)


def test_class_loss_is_focal_loss_of_the_clean_cam_mean():
    torch.manual_seed(1)
    model = PixelwiseCAM()
    images, labels, targets = _batch()
    parts = cam_consistency_loss(model, images, labels, targets, None, torch.Generator().manual_seed(0))
    expected = binary_focal_with_logits(model(images).mean(dim=(2, 3)), targets)
    torch.testing.assert_close(parts.class_loss, expected)


def test_stage1_target_is_detached():
    # With a pixel-wise model the heavy view's cells equal the clean ones after inverse CutMix, so
    # BCE(z, sigmoid(z)) has zero gradient when the target is detached, and -z*s*(1-s) if not.
    torch.manual_seed(2)
    model = PixelwiseCAM()
    images, labels, targets = _batch()
    images = images + 2.0  # cell logits away from 0, where -z*s*(1-s) would vanish
    parts = cam_consistency_loss(model, images, labels, targets, None, torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(parts.consistency_loss, [model.conv.weight])
    # Sanity: the same loss with an attached target does have a gradient.
    cells, _ = cell_mean_pool(model(images), labels)
    attached = F.binary_cross_entropy_with_logits(cells, torch.sigmoid(cells))
    (attached_grad,) = torch.autograd.grad(attached, [model.conv.weight])
    assert attached_grad.abs().max() > 1e-2
    assert grad.abs().max() < 1e-4 * attached_grad.abs().max()


def test_pseudo_targets_replace_the_clean_view_and_absent_rows_do_not_count():
    torch.manual_seed(3)
    model = PixelwiseCAM()
    images, labels, targets = _batch(n_cells=5)
    labels[2] = 0  # an image without cells in the crop
    table = torch.rand(3, 8, 19)  # K = 8 > largest instance: rows 6, 7 belong to cells outside the crop
    table[0, 2] = float("nan")  # cell 2 of image 0 has no pseudo label
    generator_seed = 4
    parts = cam_consistency_loss(model, images, labels, targets, table, torch.Generator().manual_seed(generator_seed))
    cells, index = cell_mean_pool(model(images).detach(), labels)
    rows = table[index[:, 0], index[:, 1]]
    keep = ~torch.isnan(rows[:, 0])
    assert keep.sum() == len(keep) - 1
    expected = F.binary_cross_entropy_with_logits(cells[keep], rows[keep])
    torch.testing.assert_close(parts.consistency_loss, expected)
    # Rows of cells that are not in the crop change nothing.
    other = table.clone()
    other[:, 6:] = torch.rand(3, 2, 19)
    other[2] = torch.rand(8, 19)
    again = cam_consistency_loss(model, images, labels, targets, other, torch.Generator().manual_seed(generator_seed))
    torch.testing.assert_close(again.consistency_loss, parts.consistency_loss)


def test_cells_beyond_the_pseudo_table_are_absent():
    table = torch.rand(2, 4, 19)
    index = torch.tensor([[0, 3], [1, 4], [1, 1]])
    rows = pseudo_targets_for_cells(table, index)
    assert torch.equal(rows[0], table[0, 3]) and torch.equal(rows[2], table[1, 1])
    assert torch.isnan(rows[1]).all()


def test_crop_without_cells_keeps_a_usable_graph():
    model = PixelwiseCAM()
    images, _, targets = _batch()
    labels = torch.zeros(3, 32, 32, dtype=torch.long)
    parts = cam_consistency_loss(model, images, labels, targets, None, torch.Generator().manual_seed(0))
    assert parts.consistency_loss.item() == 0.0
    parts.total.backward()
    assert torch.isfinite(model.conv.weight.grad).all()


def test_consistency_weight_scales_the_consistency_term():
    model = PixelwiseCAM()
    images, labels, targets = _batch()
    table = torch.rand(3, 8, 19)
    one = cam_consistency_loss(model, images, labels, targets, table, torch.Generator().manual_seed(0))
    three = cam_consistency_loss(model, images, labels, targets, table, torch.Generator().manual_seed(0), 3.0)
    torch.testing.assert_close(three.total, one.class_loss + 3.0 * one.consistency_loss)


class _CropModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 19)

    def forward(self, x):
        return self.linear(x.mean(dim=(2, 3)) / 255.0)


def test_cell_crop_loss_mixes_the_targets_by_the_box_area():
    torch.manual_seed(4)
    model = _CropModel()
    crops = torch.randint(0, 256, (6, 8, 16, 16), dtype=torch.uint8)
    targets = torch.rand(6, 19)
    parts = cell_crop_loss(model, crops, targets, torch.Generator().manual_seed(9))
    # Replay the draws: one D4 element, then the CutMix draw.
    generator = torch.Generator().manual_seed(9)
    view = int(torch.randint(0, 8, (), generator=generator))
    params = sample_cutmix(6, 16, 16, generator)
    logits = model(apply_cutmix(d4_transform(crops.float(), view), params))
    keep = 1.0 - mixed_fraction(params)
    expected = keep * F.binary_cross_entropy_with_logits(logits, targets) + (
        1 - keep
    ) * F.binary_cross_entropy_with_logits(logits, targets[params.perm])
    torch.testing.assert_close(parts.total, expected)
    parts.total.backward()
    assert torch.isfinite(model.linear.weight.grad).all()


def test_cell_crop_step_with_a_timm_model_is_finite_and_reproducible():
    torch.manual_seed(5)
    model = create_model("cell", "test_resnet", cosine_head=True)
    crops = torch.randint(0, 256, (4, 8, 32, 32), dtype=torch.uint8)
    targets = torch.rand(4, 19)
    a = cell_crop_loss(model, crops, targets, torch.Generator().manual_seed(1))
    b = cell_crop_loss(model, crops, targets, torch.Generator().manual_seed(1))
    assert torch.isfinite(a.total) and torch.equal(a.total, b.total)
    a.total.backward()
    assert model.head.scale.grad is not None and torch.isfinite(model.head.scale.grad)


def test_mismatched_masks_are_reported():
    model = PixelwiseCAM()
    images, labels, targets = _batch()
    with pytest.raises(Exception, match="masks"):
        cam_consistency_loss(model, images, labels[:, :16], targets, None, torch.Generator())


def test_host_side_cells_leave_the_cam_step_unchanged():
    images, labels, targets = _batch(size=32)
    results = []
    for cells in (None, present_cells(labels.numpy())):
        torch.manual_seed(0)
        model = create_model("image", "test_efficientnet")
        parts = cam_consistency_loss(model, images, labels, targets, None, torch.Generator().manual_seed(3),
                                     cells=cells)  # fmt: skip
        parts.total.backward()
        results.append((parts, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (first, first_grads), (second, second_grads) = results
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.equal(a, b) for a, b in zip(first_grads, second_grads))
