"""The loss of one optimisation step, as pure functions of tensors (no loader, no optimizer).

``cam_consistency_loss`` is the CAM-consistency update of the image-level model,
``cell_crop_loss`` the D4 + CutMix update of the cell-crop model. Every random draw comes from the
given CPU ``torch.Generator``, so a step is reproducible from the generator's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpa_pipeline.errors import PipelineError
from hpa_pipeline.nets.d4 import D4_VIEWS, d4_transform
from hpa_pipeline.nets.models import image_logits
from hpa_pipeline.nets.pooling import HostCells, cell_mean_pool
from hpa_pipeline.train.cutmix import (
    apply_cutmix,
    invert_cutmix,
    mixed_fraction,
    sample_cutmix,
)
from hpa_pipeline.train.losses import binary_focal_with_logits, consistency_loss


class LossParts(NamedTuple):
    """A step's loss and its parts (call ``.total.backward()``; log the detached parts)."""

    total: Tensor
    class_loss: Tensor
    consistency_loss: Tensor


def pseudo_targets_for_cells(pseudo_targets: Tensor, index: Tensor) -> Tensor:
    """Look up the pseudo label row of each cell in a dense per-batch table.

    Args:
        pseudo_targets: (B, K, C) table; row ``[b, k]`` holds cell k of image b, NaN where the
            cell has no pseudo label (row 0, the background, is never read).
        index: (N, 2) (batch row, instance) from ``cell_mean_pool``.

    Returns:
        (N, C) targets; cells with instance >= K are absent from the table and get NaN rows.
    """
    rows, instances = index[:, 0].to(pseudo_targets.device), index[:, 1].to(pseudo_targets.device)
    inside = instances < pseudo_targets.shape[1]
    found = pseudo_targets[rows, instances.clamp(max=pseudo_targets.shape[1] - 1)]
    return torch.where(inside[:, None], found, torch.full_like(found, float("nan")))


def cam_consistency_loss(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    image_targets: Tensor,
    pseudo_targets: Tensor | None,
    generator: torch.Generator,
    consistency_weight: float = 1.0,
    focal_gamma: float = 2.0,
    cells: HostCells | None = None,
    class_loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> LossParts:
    """Loss of one CAM-consistency step.

    The clean view x and the heavy view x_h (a copy of x with CutMix, always) go through the model
    in one pass; both CAMs are bilinearly upsampled to the crop size and CutMix is undone on the
    heavy one. Class loss = focal (``focal_gamma``, the original's 2) on the clean view's image logits
    (mean of its upsampled CAM). Consistency = BCE between the heavy view's cell-mean logits and the target, over every
    cell with > 0 pixels in the crop and every class: stage 1 the detached sigmoid of the clean
    view's cell-mean logits, later stages the pseudo labels.

    Args:
        model: CAM model, ``forward(x) -> (B, 19, h, w)``.
        images: (B, 4, H, W) float crops.
        labels: (B, H, W) integer cell masks of the same crops.
        image_targets: (B, 19) image-level labels.
        pseudo_targets: None in stage 1, else a (B, K, 19) table indexed by instance, NaN rows
            for cells without a pseudo label (they do not count).
        generator: CPU generator for the CutMix draw.
        consistency_weight: weight of the consistency term.
        focal_gamma: focusing parameter of the class loss.
        cells: the masks' cells computed on the host (:func:`~hpa_pipeline.nets.pooling.present_cells`),
            so that pooling needs no device-to-host synchronisation; found from ``labels`` when None.
        class_loss_fn: ``(image logits, image targets) -> loss`` replacing the focal class loss (a
            model's ``loss`` setting).

    Returns:
        ``LossParts`` (total = class + weight * consistency).
    """
    batch, _, height, width = images.shape
    if labels.shape != (batch, height, width):
        raise PipelineError(f"cell masks {tuple(labels.shape)} do not match images {tuple(images.shape)}")
    if pseudo_targets is not None and (pseudo_targets.ndim != 3 or pseudo_targets.shape[0] != batch):
        raise PipelineError(f"pseudo targets {tuple(pseudo_targets.shape)}: expected (B={batch}, K, C)")
    params = sample_cutmix(batch, height, width, generator)
    heavy = apply_cutmix(images, params)
    cams = model(torch.cat([images, heavy], dim=0))
    cams = F.interpolate(cams.float(), size=(height, width), mode="bilinear", align_corners=False)
    cam_clean, cam_heavy = cams[:batch], invert_cutmix(cams[batch:], params)
    if class_loss_fn is None:
        class_loss = binary_focal_with_logits(cam_clean.mean(dim=(2, 3)), image_targets, focal_gamma)
    else:
        class_loss = class_loss_fn(cam_clean.mean(dim=(2, 3)), image_targets)
    # One pooling pass over both views: channels [clean classes, heavy classes].
    n_classes = cam_clean.shape[1]
    pooled, index = cell_mean_pool(torch.cat([cam_clean, cam_heavy], dim=1), labels, cells=cells)
    clean_cells, heavy_cells = pooled[:, :n_classes], pooled[:, n_classes:]
    if pseudo_targets is None:
        target = torch.sigmoid(clean_cells).detach()  # the clean view teaches, it is not taught
    else:
        target = pseudo_targets_for_cells(pseudo_targets, index).to(heavy_cells.dtype)
    cons = consistency_loss(heavy_cells, target)
    return LossParts(class_loss + consistency_weight * cons, class_loss, cons)


def cell_crop_loss(
    model: nn.Module,
    crops: Tensor,
    targets: Tensor,
    generator: torch.Generator,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> LossParts:
    """Loss of one cell-crop step: one random D4 element for the batch, CutMix always.

    Loss = lambda' * BCE(logits, y) + (1 - lambda') * BCE(logits, y[perm]) with
    lambda' = 1 - box area / crop area.

    Args:
        model: cell model, ``forward(x) -> (B, 19)``.
        crops: (B, 8, C, C) crops (uint8 or float 0..255).
        targets: (B, 19) soft or binary targets.
        generator: CPU generator for the D4 element and the CutMix draw.
        loss_fn: ``(logits, targets) -> loss`` replacing the BCE (a model's ``loss`` setting).

    Returns:
        ``LossParts`` (class_loss = total, consistency_loss = 0).
    """
    loss_fn = loss_fn or F.binary_cross_entropy_with_logits
    view = int(torch.randint(0, len(D4_VIEWS), (), generator=generator))
    x = d4_transform(crops.float(), view)
    params = sample_cutmix(x.shape[0], x.shape[-2], x.shape[-1], generator)
    x = apply_cutmix(x, params)
    logits = model(x).float()
    keep = 1.0 - mixed_fraction(params)
    targets = targets.to(logits.dtype)
    partner = targets[params.perm.to(targets.device)]
    loss = keep * loss_fn(logits, targets) + (1.0 - keep) * loss_fn(logits, partner)
    return LossParts(loss, loss, torch.zeros((), device=loss.device))


def image_label_loss(
    model: nn.Module, images: Tensor, targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> LossParts:
    """Loss of one step of the image-level task: the image logits (the CAM's mean, or a pooled head's
    output) against the image labels, no cells.

    Args:
        model: an image model (CAM or ``gap_gmp`` head).
        images: (B, 4, H, W) float crops.
        targets: (B, C) image labels.
        loss_fn: ``(logits, targets) -> loss``, the model's ``loss`` setting.

    Returns:
        ``LossParts`` (class_loss = total, consistency_loss = 0).
    """
    loss = loss_fn(image_logits(model, images).float(), targets)
    return LossParts(loss, loss, torch.zeros((), device=loss.device))
