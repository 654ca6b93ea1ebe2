import math

import pytest
import torch

from hpa_pipeline.train.losses import binary_focal_with_logits, consistency_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, t: float) -> float:
    p = _sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_focal_loss_matches_hand_computed_values():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = 0.0
    for x, t in [(2.0, 1.0), (-1.0, 0.0), (0.0, 1.0), (3.0, 0.0)]:
        p = _sigmoid(x)
        p_t = p if t == 1.0 else 1 - p
        expected += (1 - p_t) ** 2 * _bce(x, t)
    expected /= 4
    assert binary_focal_with_logits(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_with_gamma_zero_is_plain_bce():
    logits = torch.randn(5, 19)
    targets = (torch.rand(5, 19) < 0.3).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert binary_focal_with_logits(logits, targets, gamma=0.0).item() == pytest.approx(bce.item(), rel=1e-6)


def test_focal_loss_computes_in_float32_for_half_logits():
    logits = torch.randn(4, 19).to(torch.bfloat16)
    loss = binary_focal_with_logits(logits, torch.zeros(4, 19))
    assert loss.dtype == torch.float32


def test_consistency_loss_is_sum_over_count_of_cell_class_pairs():
    logits = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 2.0]])
    targets = torch.tensor([[0.9, 0.1], [0.5, 0.2], [0.0, 1.0]])
    expected = sum(_bce(x, t) for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist())) / 6
    assert consistency_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_consistency_loss_ignores_nan_targets_and_their_gradient():
    logits = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    targets = torch.tensor([[0.9, 0.1], [float("nan"), float("nan")]])
    loss = consistency_loss(logits, targets)
    expected = (_bce(1.0, 0.9) + _bce(-2.0, 0.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[1] == 0).all()


def test_consistency_loss_without_cells_is_a_zero_that_keeps_the_graph():
    logits = torch.zeros(0, 19, requires_grad=True)
    loss = consistency_loss(logits, torch.zeros(0, 19))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad.shape == (0, 19)
