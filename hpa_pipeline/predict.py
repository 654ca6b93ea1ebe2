"""Prediction: cell-wise pooling of CAMs, D4 test-time augmentation, per-cell probabilities.

Cell identity is the mask value (instance) of a cell in its image. Pooling handles any number of
cells per image (no 255 cap): one ``scatter_add`` of all pixels of a batch into a per-image,
per-label-value table gives every cell's sum, with no Python loop over cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpa_pipeline.errors import ConfigError, PipelineError
from hpa_pipeline.train.devices import autocast_context


class D4View(NamedTuple):
    """One element of the dihedral group D4, applied in this order: vflip, hflip, rot90."""

    vflip: bool
    hflip: bool
    rot90: bool


# All 8 on/off combinations; the identity first, then the flips (training used hflip), then rot90.
D4_VIEWS: tuple[D4View, ...] = tuple(
    D4View(vflip, hflip, rot90) for rot90 in (False, True) for vflip in (False, True) for hflip in (False, True)
)


def tta_views(n: int) -> tuple[D4View, ...]:
    """The first ``n`` of ``D4_VIEWS`` (1 = identity only, 8 = full D4 as in the original)."""
    if not 1 <= n <= len(D4_VIEWS):
        raise ConfigError(f"n_tta = {n}: expected 1..{len(D4_VIEWS)} D4 views")
    return D4_VIEWS[:n]


def _view(k: int | D4View) -> D4View:
    if isinstance(k, D4View):
        return k
    if not 0 <= int(k) < len(D4_VIEWS):
        raise ConfigError(f"D4 view {k}: expected 0..{len(D4_VIEWS) - 1}")
    return D4_VIEWS[int(k)]


def d4_transform(x: Tensor, k: int | D4View) -> Tensor:
    """Apply a D4 element to the last two (spatial) dims, so images and masks move together.

    Args:
        x: (..., H, W) tensor.
        k: index into ``D4_VIEWS`` or a ``D4View``.

    Returns:
        The transformed tensor ((..., W, H) when the view rotates).
    """
    view = _view(k)
    if view.vflip:
        x = torch.flip(x, dims=(-2,))
    if view.hflip:
        x = torch.flip(x, dims=(-1,))
    if view.rot90:
        x = torch.rot90(x, 1, dims=(-2, -1))
    return x


def d4_inverse(x: Tensor, k: int | D4View) -> Tensor:
    """Undo ``d4_transform(., k)`` (the steps in reverse order, rotation backwards)."""
    view = _view(k)
    if view.rot90:
        x = torch.rot90(x, -1, dims=(-2, -1))
    if view.hflip:
        x = torch.flip(x, dims=(-1,))
    if view.vflip:
        x = torch.flip(x, dims=(-2,))
    return x


class _CellSums(NamedTuple):
    sums: Tensor  # (B, C, M + 1) float32: per image and label value 0..M (M = largest label in the batch)
    counts: Tensor  # (B, M + 1) int64 pixels per image and label value


def _cell_sums(values: Tensor, labels: Tensor) -> _CellSums:
    if values.ndim != 4 or labels.ndim != 3 or values.shape[0] != labels.shape[0] or values.shape[2:] != labels.shape[1:]:
        raise PipelineError(
            f"cell pooling: values {tuple(values.shape)} and labels {tuple(labels.shape)} do not match "
            "((B, C, H, W) and (B, H, W))"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise PipelineError(f"cell pooling: labels must be integers, got {labels.dtype}")
    batch, channels = values.shape[:2]
    flat_labels = labels.long().flatten(1)
    if flat_labels.numel() and int(flat_labels.min()) < 0:
        raise PipelineError("cell pooling: negative label value in the mask")
    width = (int(flat_labels.max()) if flat_labels.numel() else 0) + 1
    # One scatter_add over every pixel of the batch; the (B, C, M + 1) table is small whatever the
    # number of cells, and scatter_add is differentiable (training pools the CAM with gradients).
    index = flat_labels[:, None, :].expand(batch, channels, -1)
    sums = torch.zeros(batch, channels, width, dtype=torch.float32, device=values.device)
    sums = sums.scatter_add(2, index, values.float().flatten(2))
    counts = torch.zeros(batch, width, dtype=torch.long, device=labels.device)
    counts = counts.scatter_add(1, flat_labels, torch.ones_like(flat_labels))
    return _CellSums(sums, counts)


def _as_instance_list(instances: Sequence[Tensor | Sequence[int]], batch: int) -> list[Tensor]:
    if len(instances) != batch:
        raise PipelineError(f"cell pooling: {len(instances)} instance lists for a batch of {batch} images")
    out = [torch.as_tensor(item, dtype=torch.long).reshape(-1).cpu() for item in instances]
    for row, item in enumerate(out):
        if item.numel() and int(item.min()) < 1:
            raise PipelineError(f"cell pooling: image {row} lists instance {int(item.min())}; cells are numbered from 1")
    return out


def _select(cell_sums: _CellSums, instances: list[Tensor] | None) -> tuple[Tensor, Tensor]:
    """(batch row, instance) index (N, 2) of the cells to report and whether each has pixels (CPU)."""
    counts = cell_sums.counts.cpu()
    if instances is None:
        present = counts > 0
        present[:, 0] = False  # background
        index = torch.nonzero(present)  # row-major: image by image, ascending instance
        return index, torch.ones(len(index), dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(len(instances)), torch.tensor([len(i) for i in instances], dtype=torch.long))
    wanted = torch.cat(instances) if instances else torch.zeros(0, dtype=torch.long)
    inside = wanted < counts.shape[1]
    exists = inside & (counts[rows, torch.where(inside, wanted, 0)] > 0)
    return torch.stack([rows, wanted], dim=1), exists


def _gather_means(cell_sums: _CellSums, index: Tensor, exists: Tensor) -> Tensor:
    """(N, C) means of the indexed cells; rows of cells without pixels are filled with NaN."""
    device = cell_sums.sums.device
    rows = index[:, 0].to(device)
    instances = torch.where(exists, index[:, 1], 0).to(device)
    counts = cell_sums.counts[rows, instances].clamp(min=1).to(torch.float32)
    means = cell_sums.sums[rows, :, instances] / counts[:, None]
    if not bool(exists.all()):
        means = torch.where(exists.to(device)[:, None], means, torch.full_like(means, float("nan")))
    return means


def cell_mean_pool(
    values: Tensor, labels: Tensor, instances: Sequence[Tensor | Sequence[int]] | None = None
) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` over the pixels of each cell, for any number of cells.

    Args:
        values: (B, C, H, W) per-pixel values (e.g. CAM logits at the mask size); differentiable.
        labels: (B, H, W) integer cell labels, 0 = background.
        instances: optional, per image, the instances to return, in that order; a listed cell
            without pixels (vanished at this resolution, or beyond the mask's largest label)
            gets a NaN row, which the caller must handle.

    Returns:
        ``pooled`` (N, C) float32 on the device of ``values`` and ``index`` (N, 2) int64 on the
        CPU: (batch row, instance). Without ``instances``: every cell with > 0 pixels, image by
        image, ascending instance.
    """
    cell_sums = _cell_sums(values, labels)
    listed = None if instances is None else _as_instance_list(instances, values.shape[0])
    index, exists = _select(cell_sums, listed)
    return _gather_means(cell_sums, index, exists), index


def _box_means(values: Tensor, rows: Tensor, boxes: Tensor) -> Tensor:
    """Mean of ``values`` (B, C, H, W) over boxes (n, 4) = (top, left, bottom, right) of images ``rows``."""
    height, width = values.shape[-2:]
    top = boxes[:, 0].clamp(0, height - 1)
    left = boxes[:, 1].clamp(0, width - 1)
    bottom = torch.maximum(boxes[:, 2].clamp(max=height), top + 1)  # at least one pixel
    right = torch.maximum(boxes[:, 3].clamp(max=width), left + 1)
    # Summed-area table in float64: float32 would lose digits over a 1536^2 sum.
    table = F.pad(values.double().cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    rows, top, left, bottom, right = (t.to(values.device) for t in (rows, top, left, bottom, right))
    total = (
        table[rows, :, bottom, right] - table[rows, :, top, right] - table[rows, :, bottom, left] + table[rows, :, top, left]
    )
    area = ((bottom - top) * (right - left)).double()
    return (total / area[:, None]).float()


class CamPredictions(NamedTuple):
    """Output of ``predict_cam_cells`` (arrays on the CPU).

    Attributes:
        cell_probs: (N, 19, n_tta) float32 sigmoid of the cell-mean CAM logit per view.
        image_probs: (B, 19, n_tta) float32 sigmoid of the CAM mean per view.
        index: (N, 2) int64 (batch row, instance) of each cell row.
        fallback: (N,) bool, True where the cell has no pixel in the mask: its row is the box
            fallback when ``fallback_boxes`` was given, NaN otherwise.
    """

    cell_probs: Tensor
    image_probs: Tensor
    index: Tensor
    fallback: Tensor


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def predict_cam_cells(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    instances: Sequence[Tensor | Sequence[int]] | None = None,
    n_tta: int = 8,
    *,
    fallback_boxes: Sequence[Tensor] | None = None,
    amp: bool = True,
) -> CamPredictions:
    """Per-cell and per-image probabilities of a CAM model on full images with D4 TTA.

    Per view the image is transformed, the CAM computed, upsampled to the (transformed) mask size
    with **nearest** (as the original did at inference; training uses bilinear), transformed
    back and pooled with the untransformed mask. Pooling is invariant to moving image and mask
    together, so this equals transforming the mask, and keeps every cell (and any fallback box)
    in the original frame.

    Args:
        model: a CAM model (``forward(x) -> (B, 19, h, w)``); put in eval mode for the call.
        images: (B, 4, H, W) float, normalised as in training.
        labels: (B, Hm, Wm) integer cell masks at the mask resolution.
        instances: per image, the cells to report in that order; default every cell with pixels.
        n_tta: number of D4 views (``tta_views``).
        fallback_boxes: per image, (k, 4) int boxes (top, left, bottom, right, half-open, in mask
            pixels) aligned with ``instances``; a listed cell with zero pixels then gets the CAM
            mean over its box (at least one pixel) instead of NaN.
        amp: autocast on CUDA (bf16 where supported, else fp16); ignored on the CPU.

    Returns:
        ``CamPredictions`` on the CPU.
    """
    if fallback_boxes is not None and instances is None:
        raise PipelineError("predict_cam_cells: fallback_boxes need the matching instances lists")
    views = tta_views(n_tta)
    device = _model_device(model)
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    mask_size = labels.shape[-2:]
    selection: tuple[Tensor, Tensor] | None = None
    cell_out: list[Tensor] = []
    image_out: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            listed = None if instances is None else _as_instance_list(instances, images.shape[0])
            boxes = None
            if fallback_boxes is not None:
                boxes = torch.cat([torch.as_tensor(b, dtype=torch.long).reshape(-1, 4) for b in fallback_boxes]).cpu()
            for view in views:
                with autocast_context(device, enabled=amp):
                    cam = model(d4_transform(images, view))
                cam = cam.float()
                image_out.append(torch.sigmoid(cam.mean(dim=(2, 3))).cpu())
                view_size = mask_size[::-1] if view.rot90 else mask_size
                cam_up = d4_inverse(F.interpolate(cam, size=tuple(view_size), mode="nearest"), view)
                cell_sums = _cell_sums(cam_up, labels)
                if selection is None:
                    # The pixel sets are the same in every view (the mask never moves).
                    selection = _select(cell_sums, listed)
                index, exists = selection
                logits = _gather_means(cell_sums, index, exists)
                missing = ~exists
                if boxes is not None and len(boxes) != len(index):
                    raise PipelineError(f"predict_cam_cells: {len(boxes)} fallback boxes for {len(index)} listed cells")
                if boxes is not None and bool(missing.any()):  # else the NaN rows stay
                    logits[missing.to(logits.device)] = _box_means(cam_up, index[missing, 0], boxes[missing])
                cell_out.append(torch.sigmoid(logits).cpu())
    finally:
        model.train(was_training)
    assert selection is not None
    index, exists = selection
    return CamPredictions(torch.stack(cell_out, dim=-1), torch.stack(image_out, dim=-1), index, ~exists)


def predict_cell_crops(model: nn.Module, crops: Tensor, n_tta: int = 8, *, amp: bool = True) -> Tensor:
    """Probabilities of a cell-crop model with D4 TTA.

    Args:
        model: a cell model (``forward(x) -> (N, 19)`` logits); put in eval mode for the call.
        crops: (N, 8, C, C) uint8 crops (cast to float 0..255 here, as in training).
        n_tta: number of D4 views.
        amp: autocast on CUDA (bf16 where supported, else fp16); ignored on the CPU.

    Returns:
        (N, 19, n_tta) float32 sigmoid probabilities on the CPU.
    """
    views = tta_views(n_tta)
    device = _model_device(model)
    x = crops.to(device, non_blocking=True).float()
    out: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for view in views:
                with autocast_context(device, enabled=amp):
                    logits = model(d4_transform(x, view))
                out.append(torch.sigmoid(logits.float()).cpu())
    finally:
        model.train(was_training)
    return torch.stack(out, dim=-1)
