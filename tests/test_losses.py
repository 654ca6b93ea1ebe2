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


# ---------------------------------------------------------------- the 2018 solutions' losses


def test_bce_matches_hand_computed_value():
    from hpa_pipeline.train.losses import bce_with_logits

    logits = torch.tensor([[2.0, -1.0]])
    targets = torch.tensor([[1.0, 1.0]])
    assert bce_with_logits(logits, targets).item() == pytest.approx((_bce(2.0, 1) + _bce(-1.0, 1)) / 2, rel=1e-6)


def test_lovasz_hinge_matches_hand_computed_value():
    from hpa_pipeline.train.losses import lovasz_hinge

    # one image, classes: positive logit 2 (error -1), positive logit -0.5 (error 1.5), negative 1 (error 2)
    logits = torch.tensor([[2.0, -0.5, 1.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0]])
    # errors sorted: 2 (neg), 1.5 (pos), -1 (pos); truth sorted [0, 1, 1], 2 positives
    # jaccard after each: 1 - (2-0)/(2+1) = 1/3, 1 - (2-1)/(2+1) = 2/3, 1 - 0/3 = 1 -> gradient 1/3, 1/3, 1/3
    expected = 2.0 / 3 + 1.5 / 3 + 0.0 / 3
    assert lovasz_hinge(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_lovasz_hinge_is_zero_for_confident_correct_logits_and_averages_images():
    from hpa_pipeline.train.losses import lovasz_hinge

    logits = torch.tensor([[3.0, -3.0], [2.0, -0.5]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # image 2: errors -1 (pos), 1.5 (pos); sorted [1.5, -1], truth [1, 1]: jaccard 1 - 1/2, 1 -> grad 1/2, 1/2
    assert lovasz_hinge(logits, targets).item() == pytest.approx((0.0 + 1.5 / 2) / 2, rel=1e-6)


def test_hard_example_loss_takes_the_k_hardest_of_each_sort():
    from hpa_pipeline.train.losses import hard_example_loss

    logits = torch.tensor([[-2.0, 1.0, 3.0, 0.5, -4.0]])
    targets = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    # positives' BCE: x=-2 (hardest), x=1, x=3; negatives': x=0.5 (hardest), x=-4
    expected = (_bce(-2.0, 1) + _bce(1.0, 1) + _bce(0.5, 0) + _bce(-4.0, 0)) / 4
    assert hard_example_loss(logits, targets, k=2).item() == pytest.approx(expected, rel=1e-6)
    everything = (sum(_bce(x, t) for x, t in [(-2, 1), (1, 1), (3, 1), (0.5, 0), (-4, 0)])) / 5
    assert hard_example_loss(logits, targets, k=10).item() == pytest.approx(everything, rel=1e-6)


def test_combined_loss_is_the_weighted_sum():
    from hpa_pipeline.train.losses import bce_with_logits, combined_loss, hard_example_loss, lovasz_hinge

    logits = torch.tensor([[2.0, -0.5, 1.0], [0.3, -1.0, 0.2]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    total = combined_loss(logits, targets, {"focal": 1.0, "lovasz_hinge": 0.5, "hard_example": 2.0, "bce": 0.0})
    expected = (
        binary_focal_with_logits(logits, targets)
        + 0.5 * lovasz_hinge(logits, targets)
        + 2.0 * hard_example_loss(logits, targets, 8)
        + 0.0 * bce_with_logits(logits, targets)
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        combined_loss(logits, targets, {"dice": 1.0})
