"""Losses: focal loss on image labels and the cell-level consistency BCE of the CAM model, and the 2018
solutions' image-level losses (BCE, multilabel Lovász hinge, hard-example log loss) and their weighted sums.

All compute in float32 whatever the autocast dtype of the logits, so bf16/fp16 training does not
lose the small loss values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def binary_focal_with_logits(logits: Tensor, targets: Tensor, gamma: float = 2.0) -> Tensor:
    """Binary focal loss ``(1 - p_t)^gamma * BCE`` without an alpha term, averaged over all elements.

    Args:
        logits: (..., C) logits.
        targets: same shape, in [0, 1] (soft targets allowed: ``p_t = p*t + (1-p)*(1-t)``).
        gamma: focusing exponent; 0 gives plain BCE.

    Returns:
        A scalar tensor.
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    return ((1.0 - p_t).pow(gamma) * bce).mean()


def consistency_loss(cell_logits: Tensor, cell_targets: Tensor) -> Tensor:
    """BCE-with-logits between cell logits and soft targets, summed and divided by the count.

    Elements whose target is NaN do not count (the way a caller marks cells without a pseudo
    label). Without any counted element the result is a zero that is still connected to
    ``cell_logits``, so ``backward()`` works on a batch without visible cells.

    Args:
        cell_logits: (N, C) logits, one row per cell.
        cell_targets: (N, C) probabilities in [0, 1], or NaN to ignore.

    Returns:
        A scalar tensor: sum of BCE over counted (cell, class) pairs / their number.
    """
    cell_logits = cell_logits.float()
    valid = ~torch.isnan(cell_targets)
    # Replace ignored targets before the BCE: a NaN there would poison the gradient even when the
    # element is masked afterwards (0 * NaN = NaN in backward).
    targets = torch.where(valid, cell_targets.to(cell_logits.dtype), torch.zeros_like(cell_logits))
    bce = F.binary_cross_entropy_with_logits(cell_logits, targets, reduction="none")
    count = valid.sum()
    total = (bce * valid).sum()
    return total / count.clamp(min=1)


# ---------------------------------------------------------------- the 2018 solutions' image-level losses


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, averaged over all elements (in float32)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def _lovasz_grad(sorted_truth: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at the sorted errors (Berman et al. 2018)."""
    total = sorted_truth.sum()
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1.0 - sorted_truth).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(sorted_truth) > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_hinge(logits: Tensor, targets: Tensor) -> Tensor:
    """Multilabel Lovász hinge of the 2018 solutions: per image, the classes are the set whose Jaccard
    index is optimised, ``sum_i relu(1 - logit_i * sign_i)`` weighted by the Lovász gradient at the errors
    sorted in decreasing order; averaged over the images.

    Args:
        logits: (B, C) logits.
        targets: (B, C) labels; soft targets count as positive from 0.5.

    Returns:
        A scalar tensor.
    """
    logits = logits.float()
    truth = (targets >= 0.5).to(logits.dtype)
    losses = []
    for row_logits, row_truth in zip(logits, truth):
        errors = 1.0 - row_logits * (2.0 * row_truth - 1.0)
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(F.relu(errors_sorted), _lovasz_grad(row_truth[order])))
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def hard_example_loss(logits: Tensor, targets: Tensor, k: int = 8) -> Tensor:
    """Log loss of the batch's k hardest positives and k hardest negatives (largest BCE), averaged.

    Positives are targets >= 0.5; with fewer than k of one sort, all of them count.

    Args:
        logits: (B, C) logits.
        targets: (B, C) targets in [0, 1].
        k: examples taken from each sort.

    Returns:
        A scalar tensor (a zero connected to ``logits`` when the batch is empty).
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten()
    positive = (targets >= 0.5).flatten()
    picked = []
    for part in (losses[positive], losses[~positive]):
        if part.numel():
            picked.append(torch.topk(part, min(k, part.numel())).values)
    if not picked:
        return logits.sum() * 0.0
    return torch.cat(picked).mean()


def combined_loss(
    logits: Tensor, targets: Tensor, weights: dict[str, float], focal_gamma: float = 2.0, hard_k: int = 8
) -> Tensor:
    """The weighted sum ``sum_name weight * loss_name(logits, targets)`` of ``bce``, ``focal``,
    ``lovasz_hinge`` and ``hard_example`` (bestfitting: focal + Lovász + hard example).

    Raises:
        ValueError: an unknown loss name (the config schema only lets the four through).
    """
    total = logits.float().sum() * 0.0
    for name, weight in weights.items():
        if name == "bce":
            part = bce_with_logits(logits, targets)
        elif name == "focal":
            part = binary_focal_with_logits(logits, targets, focal_gamma)
        elif name == "lovasz_hinge":
            part = lovasz_hinge(logits, targets)
        elif name == "hard_example":
            part = hard_example_loss(logits, targets, hard_k)
        else:
            raise ValueError(f"unknown loss {name!r} (bce, focal, lovasz_hinge, hard_example)")
        total = total + float(weight) * part
    return total
