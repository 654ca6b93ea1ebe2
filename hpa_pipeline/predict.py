"""The prediction stage (rules/predict.smk): a trained model's predictions of its held-out fold
(``predict_valid``) or of the test set (``predict_test``), and the join of the folds' held-out
predictions into out-of-fold predictions (``concat_valid``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.cells import CellTable, read_cell_table
from hpa_pipeline.io.folds import read_labelled_images
from hpa_pipeline.io.index import index_keys, read_index
from hpa_pipeline.io.predictions import (
    PredictionSet,
    concat_predictions,
    image_name,
    read_predictions,
    select_images,
    write_predictions,
)
from hpa_pipeline.settings import ModelData, ModelSettings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Settings that define the architecture: a checkpoint only fits a model built with the same ones.
ARCHITECTURE = ("kind", "backbone", "cosine_head", "instance_norm_input", "head", "task")
#: What a checkpoint written before a setting existed was trained with.
ARCHITECTURE_DEFAULTS = {"head": "cam", "task": "hpa2021-cells"}


def load_trained_model(checkpoint: Path, settings: ModelSettings, device: torch.device) -> torch.nn.Module:
    """Build the model of ``settings`` and load a ``final.pt`` written by the training loop."""
    # torch and timm load only where a model runs: concat_valid jobs start in a second, not in seven
    import torch

    from hpa_pipeline.nets.models import create_model_from_settings

    if not checkpoint.is_file():
        raise InputDataError(f"missing model checkpoint {checkpoint}")
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    trained = state.get("settings", {})

    def trained_with(key: str) -> object:
        return trained.get(key, ARCHITECTURE_DEFAULTS.get(key))

    different = [key for key in ARCHITECTURE if trained_with(key) != getattr(settings, key)]
    if different:
        raise ConfigError(
            f"{checkpoint} was trained with other {', '.join(different)} "
            f"({', '.join(f'{k}={trained_with(k)!r}' for k in different)}); retrain it"
        )
    model = create_model_from_settings(settings)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def predict_split(
    settings: ModelSettings,
    checkpoint: Path,
    data: ModelData,
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
    from hpa_pipeline.nets.devices import claim_device, configure_threads

    configure_threads(threads)
    with claim_device(device) as claim:
        model = load_trained_model(checkpoint, settings, claim.torch_device)
        predictions, predicted_views = predict_model(model, settings, data, fold)
    write_model_predictions(out_path, predictions, predicted_views, settings, fold)


def write_model_predictions(
    out_path: Path, predictions: PredictionSet, predicted_views: int, settings: ModelSettings, fold: int | None = None
) -> None:
    """Write what :func:`predict_model` returned as a prediction store, with the model, fold, split and TTA
    it was predicted with (``fold`` None: the test set)."""
    random_crops = settings.image_level and bool(settings.tta_crops)
    write_predictions(
        out_path,
        predictions,
        model=settings.name,
        fold=-1 if fold is None else fold,
        split="valid" if fold is not None else "test",
        # what was predicted and what the store holds: `max` leaves one view of the predicted ones
        tta={
            "views": "random_crops" if random_crops else "d4",
            "predicted": predicted_views,
            "combine": settings.tta_combine,
            "stored": predictions.image_probs.shape[2],
        },
    )
    log.info("%d images, %d cells -> %s", len(predictions.ids), predictions.n_cells, out_path)


def predict_model(
    model: torch.nn.Module, settings: ModelSettings, data: ModelData, fold: int | None = None
) -> tuple[PredictionSet, int]:
    """A loaded model's predictions of its held-out fold (``fold`` given) or of every image of ``data``,
    its TTA views combined as ``settings.tta_combine`` says.

    Returns:
        The predictions and the number of views that were predicted per image.
    """
    from hpa_pipeline.nets.tta import combine_views, predict_rows

    if settings.image_level:
        cells = _no_cells(data.index_paths)
    else:
        cells = read_cell_table(data.cells_paths).identity()
    if fold is not None:
        images = read_labelled_images(data.index_paths, data.folds_paths, settings.n_classes)
        if images.image_keys() != cells.image_keys():
            raise InputDataError("the cell tables do not list the training images in index order (rebuild them)")
        rows = np.flatnonzero(images.folds == fold)
    else:
        rows = np.arange(len(cells.ids))
    arrays = data.open_arrays(settings.kind, settings.task)
    predictions = predict_rows(model, settings, rows, cells, settings.tta, desc="predict", random_crops=True, **arrays)
    predicted_views = predictions.image_probs.shape[2]
    return combine_views(predictions, settings.tta_combine), predicted_views


def _no_cells(index_paths: Sequence[Path]) -> CellTable:
    """The image-level task's cell table: the indexes' images in order, none of them with cells."""
    if not index_paths:
        raise InputDataError("the image-level task reads the images' order from index tables, but none were given")
    index = pd.concat([read_index(path) for path in index_paths], ignore_index=True)
    ids, datasets = index["ID"].tolist(), index["dataset"].tolist()
    return CellTable(ids, np.zeros(len(ids) + 1, np.int64), np.zeros(0, np.int32), datasets=datasets)


def concat_folds(
    parts: Sequence[PredictionSet], keys: Sequence[tuple[str, str]], sources: Sequence[str] = ()
) -> PredictionSet:
    """Join the held-out predictions of every fold into one set in canonical image order.

    Args:
        parts: one prediction set per fold.
        keys: (dataset, ID) of all training images, in canonical order.
        sources: names of the parts, for messages.

    Returns:
        The out-of-fold predictions of ``keys``.
    """
    seen: dict[tuple[str, str], str] = {}
    for position, part in enumerate(parts):
        name = sources[position] if position < len(sources) else f"part {position}"
        for key in part.cells.image_keys():
            if key in seen:
                raise InputDataError(f"image {image_name(key)} is predicted by two folds ({seen[key]} and {name})")
            seen[key] = name
    missing = [image_name(key) for key in keys if key not in seen]
    if missing:
        raise InputDataError(
            f"no fold predicts image(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    return select_images(concat_predictions(parts), keys, "out-of-fold predictions")


def concat_fold_stores(part_paths: Sequence[Path], index_paths: Sequence[Path], out_path: Path, model: str) -> None:
    """Read the folds' ``valid.zarr`` stores and write ``oof.zarr`` in the order of the indexes."""
    keys = [key for path in index_paths for key in index_keys(read_index(path))]
    parts = [read_predictions(path) for path in part_paths]
    oof = concat_folds(parts, keys, [str(path) for path in part_paths])
    write_predictions(out_path, oof, model=model, split="oof", n_folds=len(parts))
