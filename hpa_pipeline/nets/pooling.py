"""Cell-wise pooling of per-pixel values (CAMs) by label masks, for any number of cells.

Cell identity is the mask value (instance) of a cell in its image. One ``scatter_add`` of all pixels of
a batch into a per-image, per-label-value table gives every cell's sum, with no Python loop over cells;
training pools the CAM with gradients through it, prediction without.

Which cells a batch holds is a property of its masks alone, so training computes it on the host, in
the loader (:func:`present_cells`), and hands it to :func:`cell_mean_pool`: the step then never waits
for the GPU to learn the largest label or the cells present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hpa_pipeline.errors import PipelineError


class CellSums(NamedTuple):
    sums: Tensor  # (B, C, M + 1) float32: per image and label value 0..M (M = largest label in the batch)
    counts: Tensor  # (B, M + 1) int64 pixels per image and label value


class HostCells(NamedTuple):
    """The cells of a batch of masks, computed on the host: what pooling would otherwise read back."""

    index: Tensor  # (N, 2) int64 (batch row, instance) of every cell with pixels, image by image, ascending
    width: int  # largest label of the batch + 1


def present_cells(labels: np.ndarray | Tensor) -> HostCells:
    """The cells with pixels in each of a batch of (B, H, W) host-side masks (0 = background)."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise PipelineError(f"cell pooling: masks {labels.shape} are not (B, H, W)")
    if labels.size and labels.min() < 0:
        raise PipelineError("cell pooling: negative label value in the mask")
    rows = []
    for row, mask in enumerate(labels):
        values = np.unique(mask)
        values = values[values > 0]
        rows.append(np.stack([np.full(len(values), row), values], axis=1))
    index = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)
    width = int(labels.max()) + 1 if labels.size else 1
    return HostCells(torch.from_numpy(index.reshape(-1, 2)), width)


def sum_by_cell(values: Tensor, labels: Tensor, width: int | None = None) -> CellSums:
    """Per image and label value, the sum of ``values`` and the pixel count.

    ``width`` (largest label + 1), when the caller knows it from the host, spares reading the
    labels' range back from the device.
    """
    if (
        values.ndim != 4
        or labels.ndim != 3
        or values.shape[0] != labels.shape[0]
        or values.shape[2:] != labels.shape[1:]
    ):
        raise PipelineError(
            f"cell pooling: values {tuple(values.shape)} and labels {tuple(labels.shape)} do not match "
            "((B, C, H, W) and (B, H, W))"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise PipelineError(f"cell pooling: labels must be integers, got {labels.dtype}")
    batch, channels = values.shape[:2]
    flat_labels = labels.long().flatten(1)
    if width is None:
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
    return CellSums(sums, counts)


def as_instance_lists(instances: Sequence[Tensor | Sequence[int]], batch: int) -> list[Tensor]:
    if len(instances) != batch:
        raise PipelineError(f"cell pooling: {len(instances)} instance lists for a batch of {batch} images")
    out = [torch.as_tensor(item, dtype=torch.long).reshape(-1).cpu() for item in instances]
    for row, item in enumerate(out):
        if item.numel() and int(item.min()) < 1:
            raise PipelineError(
                f"cell pooling: image {row} lists instance {int(item.min())}; cells are numbered from 1"
            )
    return out


def select_cells(cell_sums: CellSums, instances: list[Tensor] | None) -> tuple[Tensor, Tensor]:
    """(batch row, instance) index (N, 2) of the cells to report and whether each has pixels (CPU)."""
    counts = cell_sums.counts.cpu()
    if instances is None:
        present = counts > 0
        present[:, 0] = False  # background
        index = torch.nonzero(present)  # row-major: image by image, ascending instance
        return index, torch.ones(len(index), dtype=torch.bool)
    rows = torch.repeat_interleave(
        torch.arange(len(instances)), torch.tensor([len(i) for i in instances], dtype=torch.long)
    )
    wanted = torch.cat(instances) if instances else torch.zeros(0, dtype=torch.long)
    inside = wanted < counts.shape[1]
    exists = inside & (counts[rows, torch.where(inside, wanted, 0)] > 0)
    return torch.stack([rows, wanted], dim=1), exists


def gather_means(cell_sums: CellSums, index: Tensor, exists: Tensor | None) -> Tensor:
    """(N, C) means of the indexed cells; rows of cells without pixels are filled with NaN.

    ``exists`` None: every indexed cell is known to have pixels (no check, no device sync).
    """
    device = cell_sums.sums.device
    rows = index[:, 0].to(device, non_blocking=True)
    instances = (index[:, 1] if exists is None else torch.where(exists, index[:, 1], 0)).to(device, non_blocking=True)
    counts = cell_sums.counts[rows, instances].clamp(min=1).to(torch.float32)
    means = cell_sums.sums[rows, :, instances] / counts[:, None]
    if exists is not None and not bool(exists.all()):
        means = torch.where(exists.to(device)[:, None], means, torch.full_like(means, float("nan")))
    return means


def cell_mean_pool(
    values: Tensor,
    labels: Tensor,
    instances: Sequence[Tensor | Sequence[int]] | None = None,
    *,
    cells: HostCells | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` over the pixels of each cell, for any number of cells.

    Args:
        values: (B, C, H, W) per-pixel values (e.g. CAM logits at the mask size); differentiable.
        labels: (B, H, W) integer cell labels, 0 = background.
        instances: optional, per image, the instances to return, in that order; a listed cell
            without pixels (vanished at this resolution, or beyond the mask's largest label)
            gets a NaN row, which the caller must handle.
        cells: :func:`present_cells` of the same masks, computed on the host (instead of
            ``instances``): the same result without any device-to-host synchronisation.

    Returns:
        ``pooled`` (N, C) float32 on the device of ``values`` and ``index`` (N, 2) int64 on the
        CPU: (batch row, instance). Without ``instances``: every cell with > 0 pixels, image by
        image, ascending instance.
    """
    if cells is not None:
        if instances is not None:
            raise PipelineError("cell pooling: give either instances or the host-side cells, not both")
        return gather_means(sum_by_cell(values, labels, cells.width), cells.index, None), cells.index
    cell_sums = sum_by_cell(values, labels)
    listed = None if instances is None else as_instance_lists(instances, values.shape[0])
    index, exists = select_cells(cell_sums, listed)
    return gather_means(cell_sums, index, exists), index


def box_means(values: Tensor, rows: Tensor, boxes: Tensor) -> Tensor:
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
        table[rows, :, bottom, right]
        - table[rows, :, top, right]
        - table[rows, :, bottom, left]
        + table[rows, :, top, left]
    )
    area = ((bottom - top) * (right - left)).double()
    return (total / area[:, None]).float()
