"""Losses of the CAM model: focal loss on image labels and the cell-level consistency BCE.

Both compute in float32 whatever the autocast dtype of the logits, so bf16/fp16 training does not
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
