"""Prediction with D4 test-time augmentation: per-cell and per-image probabilities of a batch, and of
rows of the stores (used by the prediction stage and by training's per-epoch validation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.predictions import PredictionSet
from hpa_pipeline.io.stores import ShardedArray
from hpa_pipeline.labels import N_CLASSES
from hpa_pipeline.nets.d4 import d4_inverse, d4_transform, tta_views
from hpa_pipeline.nets.devices import autocast_context
from hpa_pipeline.nets.models import image_logits, normalize_images
from hpa_pipeline.nets.pooling import as_instance_lists, box_means, gather_means, select_cells, sum_by_cell
from hpa_pipeline.progress import progress
from hpa_pipeline.settings import ModelSettings


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
            listed = None if instances is None else as_instance_lists(instances, images.shape[0])
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
                cell_sums = sum_by_cell(cam_up, labels)
                if selection is None:
                    # The pixel sets are the same in every view (the mask never moves).
                    selection = select_cells(cell_sums, listed)
                index, exists = selection
                logits = gather_means(cell_sums, index, exists)
                missing = ~exists
                if boxes is not None and len(boxes) != len(index):
                    raise PipelineError(f"predict_cam_cells: {len(boxes)} fallback boxes for {len(index)} listed cells")
                if boxes is not None and bool(missing.any()):  # else the NaN rows stay
                    logits[missing.to(logits.device)] = box_means(cam_up, index[missing, 0], boxes[missing])
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


def predict_rows(
    model: torch.nn.Module,
    settings: ModelSettings,
    rows: np.ndarray,
    cells: CellTable,
    n_tta: int,
    *,
    images: ShardedArray | None = None,
    masks: ShardedArray | None = None,
    crops: ShardedArray | None = None,
    desc: str = "predict",
    random_crops: bool = False,
) -> PredictionSet:
    """Predict the images ``rows`` (of ``images``/``masks`` or, for cell models, of the cell index).

    Image models see the whole image with its mask; a cell's probability is the sigmoid of the mean
    CAM logit over its pixels. Cell models classify each crop; their image probability is the
    maximum over the image's cells (0 for an image without cells).

    In the image-level task (no cells) only image probabilities are made: ``n_tta`` D4 views of the
    whole image, or with ``random_crops`` the model's ``tta_crops`` random crops (prediction; training's
    validation sees the whole image).

    Returns:
        The predictions in the order of ``rows``, with ``n_tta`` views (``tta_crops`` with random crops).
    """
    if settings.image_level:
        rows = np.asarray(rows, dtype=np.int64)
        n_crops = settings.tta_crops if random_crops and settings.tta_crops else 0
        return _predict_image_rows(model, settings, rows, cells, n_tta, n_crops, images, desc)
    batch_size = settings.eval_batch_size
    selected = cells.subset(np.asarray(rows, dtype=np.int64))
    probs: list[np.ndarray] = []
    image_probs: list[np.ndarray] = []
    if settings.kind == "image":
        for start in progress(range(0, len(rows), batch_size), desc, total=-(-len(rows) // batch_size), unit="batch"):
            chunk = rows[start : start + batch_size]
            batch_images = normalize_images(np.stack([images[int(row)] for row in chunk]))
            batch_masks = torch.from_numpy(np.stack([masks[int(row)] for row in chunk]).astype(np.int64))
            instances = [torch.from_numpy(cells.instances_of(int(row)).astype(np.int64)) for row in chunk]
            result = predict_cam_cells(model, batch_images, batch_masks, instances, n_tta)
            if bool(result.fallback.any()):
                raise InputDataError("a cell has no pixel in its mask (the cell table and the masks disagree)")
            probs.append(result.cell_probs.numpy())
            image_probs.append(result.image_probs.numpy())
    else:
        cell_rows = cells.cell_rows(np.asarray(rows, dtype=np.int64))
        for start in progress(
            range(0, len(cell_rows), batch_size), desc, total=-(-len(cell_rows) // batch_size), unit="batch"
        ):
            chunk = cell_rows[start : start + batch_size]
            batch = torch.from_numpy(np.stack([crops[int(row)] for row in chunk]))
            probs.append(predict_cell_crops(model, batch, n_tta).numpy())
    cell_probs = np.concatenate(probs) if probs else np.zeros((0, N_CLASSES, n_tta), np.float32)
    if settings.kind == "image":
        per_image = np.concatenate(image_probs) if image_probs else np.zeros((0, N_CLASSES, n_tta), np.float32)
    else:
        per_image = np.zeros((len(rows), N_CLASSES, n_tta), np.float32)
        for position in range(len(rows)):
            block = cell_probs[selected.offsets[position] : selected.offsets[position + 1]]
            if len(block):
                per_image[position] = block.max(axis=0)
    return PredictionSet(selected.identity(), cell_probs.astype(np.float32), per_image.astype(np.float32))


# --------------------------------------------------------------------------- the image-level task


def crop_windows(size: int, crop_size: int, n_crops: int, seed: int, row: int) -> list[tuple[int, int]]:
    """(top, left) of ``n_crops`` random ``crop_size`` windows of a ``size`` image, drawn from (seed, row)."""
    if crop_size > size:
        raise PipelineError(f"crop_size {crop_size} exceeds the image size {size}")
    rng = np.random.default_rng([seed, row, 7])
    return [(int(top), int(left)) for top, left in rng.integers(0, size - crop_size + 1, size=(n_crops, 2))]


def predict_image_views(model: nn.Module, images: Tensor, n_tta: int = 8, *, amp: bool = True) -> Tensor:
    """(B, C, n_tta) image probabilities of an image model over the first ``n_tta`` D4 views."""
    device = _model_device(model)
    images = images.to(device, non_blocking=True)
    out: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for view in tta_views(n_tta):
                with autocast_context(device, enabled=amp):
                    logits = image_logits(model, d4_transform(images, view))
                out.append(torch.sigmoid(logits.float()).cpu())
    finally:
        model.train(was_training)
    return torch.stack(out, dim=-1)


def combine_views(predictions: PredictionSet, how: str) -> PredictionSet:
    """Combine the TTA views (or crops) of every image and cell: ``mean`` keeps them (every later stage
    averages views first), ``max`` takes the maximum (one view left)."""
    if how == "mean":
        return predictions
    if how != "max":
        raise PipelineError(f"tta_combine {how!r}: expected 'mean' or 'max'")
    return PredictionSet(
        predictions.cells,
        predictions.probs.max(axis=2, keepdims=True),
        predictions.image_probs.max(axis=2, keepdims=True),
    )


def _predict_image_rows(
    model: torch.nn.Module,
    settings: ModelSettings,
    rows: np.ndarray,
    cells: CellTable,
    n_tta: int,
    n_crops: int,
    images: ShardedArray | None,
    desc: str,
) -> PredictionSet:
    """Image probabilities of the image-level task (no cells): ``n_tta`` D4 views of the whole image, or
    ``n_crops`` random crops of ``settings.crop_size`` when > 0 (the views axis holds the crops)."""
    if images is None:
        raise InputDataError("an image model reads images stores, but none were given (--images)")
    batch_size = settings.eval_batch_size
    n_views = n_crops or n_tta
    out: list[np.ndarray] = []
    for start in progress(range(0, len(rows), batch_size), desc, total=-(-len(rows) // batch_size), unit="batch"):
        chunk = rows[start : start + batch_size]
        batch = normalize_images(np.stack([images[int(row)] for row in chunk]))
        if n_crops:
            size, crop = batch.shape[-1], int(settings.crop_size)
            windows = [crop_windows(size, crop, n_views, settings.seed, int(row)) for row in chunk]
            views = []
            for view in range(n_views):
                crops = torch.stack(
                    [
                        batch[i, :, top : top + crop, left : left + crop]
                        for i, (top, left) in enumerate(w[view] for w in windows)
                    ]
                )
                views.append(predict_image_views(model, crops, 1))
            out.append(torch.cat(views, dim=-1).numpy())
        else:
            out.append(predict_image_views(model, batch, n_tta).numpy())
    n_classes = settings.n_classes
    per_image = np.concatenate(out) if out else np.zeros((0, n_classes, n_views), np.float32)
    selected = cells.subset(rows).identity()
    if selected.n_cells:
        raise InputDataError("the image-level task has no cells, but the cell table lists some")
    return PredictionSet(selected, np.zeros((0, n_classes, n_views), np.float32), per_image.astype(np.float32))
