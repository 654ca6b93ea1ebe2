"""Prediction with a trained model: the held-out fold of the training images, or the test set."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.predictions import write_predictions
from hpa_pipeline.train.data import ShardedArray, read_cell_index, read_labelled_images
from hpa_pipeline.train.devices import claim_device, configure_threads
from hpa_pipeline.train.loop import TrainingData, predict_rows
from hpa_pipeline.train.models import create_model
from hpa_pipeline.train.settings import ModelSettings

log = logging.getLogger(__name__)

#: Settings that define the architecture: a checkpoint only fits a model built with the same ones.
ARCHITECTURE = ("kind", "backbone", "cosine_head", "instance_norm_input")


def load_trained_model(checkpoint: Path, settings: ModelSettings, device: torch.device) -> torch.nn.Module:
    """Build the model of ``settings`` and load a ``final.pt`` written by the training loop."""
    if not checkpoint.is_file():
        raise InputDataError(f"missing model checkpoint {checkpoint}")
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    trained = state.get("settings", {})
    different = [key for key in ARCHITECTURE if trained.get(key) != getattr(settings, key)]
    if different:
        raise ConfigError(
            f"{checkpoint} was trained with other {', '.join(different)} "
            f"({', '.join(f'{k}={trained.get(k)!r}' for k in different)}); retrain it"
        )
    model = create_model(settings.kind, settings.backbone, cosine_head=settings.cosine_head,
                         instance_norm_input=settings.instance_norm_input)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def predict_split(
    settings: ModelSettings,
    checkpoint: Path,
    data: TrainingData,
    out_path: Path,
    fold: int | None = None,
    device: str = "auto",
    threads: int = 1,
) -> None:
    """Write the predictions of a model for its held-out fold (``fold`` given) or for the test set.

    Args:
        settings: the model's resolved settings (TTA views, batch size, architecture).
        checkpoint: the model's ``final.pt``.
        data: for the held-out fold the training datasets' index, folds and cell tables; for the
            test set only the test cell tables; plus images and masks (image models) or crops.
        out_path: the prediction store to write.
        fold: the held-out fold, or None for the test set.
    """
    configure_threads(threads)
    cells = read_cell_index(data.cells_paths)
    if fold is not None:
        images = read_labelled_images(data.index_paths, data.folds_paths)
        if images.ids != cells.ids:
            raise InputDataError("the cell tables do not list the training images in index order (rebuild them)")
        rows = np.flatnonzero(images.folds == fold)
    else:
        rows = np.arange(len(cells.ids))
    with claim_device(device) as claim:
        model = load_trained_model(checkpoint, settings, claim.torch_device)
        arrays = (
            {"images": ShardedArray(data.images_paths, "images", "images"),
             "masks": ShardedArray(data.masks_paths, "masks_resized", "masks")}
            if settings.kind == "image" else {"crops": ShardedArray(data.crops_paths, "crops", "crops")}
        )
        predictions = predict_rows(model, settings, rows, cells, settings.tta, desc="predict", **arrays)
    write_predictions(out_path, predictions, model=settings.name, fold=-1 if fold is None else fold,
                      split="valid" if fold is not None else "test", tta=settings.tta)
    log.info("%d images, %d cells -> %s", len(predictions.ids), predictions.n_cells, out_path)
