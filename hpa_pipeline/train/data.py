"""Training and validation data, read straight from the preprocessing Zarr stores.

Samples are addressed by (position, epoch): every random choice of a sample (crop, flip) is drawn from
a generator seeded by (seed, epoch, image), so an epoch's batches do not depend on the number of
loader workers, and a training resumed at epoch e sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.labels import N_CLASSES, labels_to_matrix, parse_labels
from hpa_pipeline.preprocess.index import read_index
from hpa_pipeline.train.folds import read_folds

#: Input normalisation of the original (albumentations Normalize(mean=0.5, std=0.125)).
PIXEL_MEAN, PIXEL_STD = 0.5, 0.125


def normalize_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., 4, H, W) -> float32 ``(x / 255 - 0.5) / 0.125``."""
    tensor = torch.as_tensor(images).float()
    return (tensor / 255.0 - PIXEL_MEAN) / PIXEL_STD


class ShardedArray:
    """One array of per-image or per-cell rows spread over shard stores, read as a single sequence.

    The stores are opened lazily in each process, so the object can be handed to loader workers.

    Args:
        paths: the shard stores, in canonical order.
        kind: the stores' kind (checked).
        array: the array to read (``images``, ``masks``, ``crops``).
    """

    def __init__(self, paths: Sequence[str | Path], kind: str, array: str) -> None:
        self.paths = [Path(path) for path in paths]
        self.kind = kind
        self.array = array
        lengths = [open_store(path, kind)[array].shape[0] for path in self.paths]
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._arrays: list | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, row: int) -> np.ndarray:
        if self._pid != os.getpid():
            self._arrays = [open_store(path, self.kind)[self.array] for path in self.paths]
            self._pid = os.getpid()
        shard = int(np.searchsorted(self._starts, row, side="right") - 1)
        return self._arrays[shard][row - self._starts[shard]]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"], state["_pid"] = None, None
        return state


@dataclass
class CellIndex:
    """The cells of a sequence of images: cell r of image i is row ``offsets[i] + r``."""

    ids: list[str]
    offsets: np.ndarray  # (n_images + 1,) int64
    instance: np.ndarray  # (n_cells,) int32

    @property
    def n_cells(self) -> int:
        return int(self.offsets[-1])

    def instances_of(self, row: int) -> np.ndarray:
        return self.instance[self.offsets[row] : self.offsets[row + 1]]

    def image_of_cell(self) -> np.ndarray:
        """(n_cells,) index of each cell's image."""
        return np.repeat(np.arange(len(self.ids)), np.diff(self.offsets))

    def subset(self, rows: np.ndarray) -> CellIndex:
        """The cell index of the images ``rows``, in that order."""
        counts = np.diff(self.offsets)[rows]
        instance = (
            np.concatenate([self.instances_of(int(row)) for row in rows]) if len(rows) else np.zeros(0, np.int32)
        )
        return CellIndex([self.ids[int(row)] for row in rows], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), instance.astype(np.int32))

    def cell_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the cell axis of every cell of the images ``rows``, image by image."""
        if not len(rows):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.offsets[row], self.offsets[row + 1]) for row in rows]).astype(np.int64)


def read_cell_index(paths: Sequence[str | Path], kind: str = "cells") -> CellIndex:
    """Concatenate the cell index of several shards (``cells`` or ``crops`` stores)."""
    ids: list[str] = []
    offsets = [np.zeros(1, dtype=np.int64)]
    instances = []
    for path in paths:
        group = open_store(path, kind)
        shard_ids = read_strings(group, "ids")
        shard_offsets = group["offsets"][...]
        ids += shard_ids
        offsets.append(shard_offsets[1:] + offsets[-1][-1])
        instances.append(group["instance"][...])
    return CellIndex(ids, np.concatenate(offsets), np.concatenate(instances).astype(np.int32) if instances else np.zeros(0, np.int32))


@dataclass
class LabelledImages:
    """The images of all training datasets in canonical order, with labels and folds."""

    ids: list[str]
    labels: np.ndarray  # (n, 19) float32 multi-hot
    folds: np.ndarray  # (n,) int64


def read_labelled_images(index_paths: Sequence[str | Path], folds_paths: Sequence[str | Path]) -> LabelledImages:
    """Join the datasets' index tables (labels) with their fold tables.

    Args:
        index_paths: ``results/{dataset}/index.csv`` of each training dataset, in config order.
        folds_paths: ``results/folds/{dataset}.csv`` of the same datasets.
    """
    ids: list[str] = []
    labels: list[list[int]] = []
    folds: list[np.ndarray] = []
    for index_path, folds_path in zip(index_paths, folds_paths, strict=True):
        index = read_index(index_path)
        table = read_folds(folds_path)
        if index["ID"].tolist() != table["ID"].tolist():
            raise InputDataError(f"{folds_path} does not list the images of {index_path} in order (rebuild the folds)")
        ids += index["ID"].tolist()
        labels += [parse_labels(text, f"{index_path} (ID {image_id})") for image_id, text in zip(index["ID"], index["Label"])]
        folds.append(table["fold"].to_numpy(np.int64))
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(duplicated):
        raise InputDataError(f"image ID(s) {', '.join(duplicated[:5])} occur in more than one training dataset")
    return LabelledImages(ids, labels_to_matrix(labels), np.concatenate(folds) if folds else np.zeros(0, np.int64))


def cell_targets_from_images(cells: CellIndex, image_labels: np.ndarray) -> np.ndarray:
    """The image-level labels copied to every cell of the image: (n_cells, 19) float32."""
    return image_labels[cells.image_of_cell()].astype(np.float32)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (position, epoch) in an order drawn from (seed, epoch); call ``set_epoch`` per epoch."""

    def __init__(self, n_samples: int, seed: int) -> None:
        self.n_samples = n_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_samples)
        return iter((int(position), self.epoch) for position in order)


def _pseudo_table(instances: np.ndarray, targets: np.ndarray | None) -> np.ndarray | None:
    """Dense (K, 19) table indexed by instance; NaN rows for absent cells."""
    if targets is None:
        return None
    table = np.full((int(instances.max(initial=0)) + 1, N_CLASSES), np.nan, dtype=np.float32)
    table[instances] = targets
    return table


class CamTrainingSet(Dataset):
    """Random crops of whole images with their cell masks, labels and optional pseudo labels.

    Args:
        images: per-image (4, S, S) uint8 array over the shards.
        masks: per-image (S, S) uint16 cell masks at the same size.
        rows: the training images (rows of ``images``).
        labels: (n, 19) image labels of all rows.
        cells: the cell index of all rows.
        cell_targets: (n_cells, 19) pseudo labels aligned with ``cells``, or None (stage 1).
        crop_size: side of the random crop.
        hflip: random horizontal flip.
        seed: the run's seed.
    """

    def __init__(
        self,
        images: ShardedArray,
        masks: ShardedArray,
        rows: np.ndarray,
        labels: np.ndarray,
        cells: CellIndex,
        cell_targets: np.ndarray | None,
        crop_size: int,
        hflip: bool,
        seed: int,
    ) -> None:
        self.images, self.masks, self.rows = images, masks, np.asarray(rows, dtype=np.int64)
        self.labels, self.cells, self.cell_targets = labels, cells, cell_targets
        self.crop_size, self.hflip, self.seed = crop_size, hflip, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        position, epoch = item
        row = int(self.rows[position])
        rng = np.random.default_rng([self.seed, epoch, row])
        image, mask = self.images[row], self.masks[row]
        size = image.shape[-1]
        top, left = rng.integers(0, size - self.crop_size + 1, size=2)
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        image, mask = image[:, window[0], window[1]], mask[window]
        if self.hflip and rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        sample = {
            "image": normalize_images(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
            "labels": torch.from_numpy(self.labels[row]),
        }
        if self.cell_targets is not None:
            cell_rows = slice(self.cells.offsets[row], self.cells.offsets[row + 1])
            sample["pseudo"] = torch.from_numpy(_pseudo_table(self.cells.instance[cell_rows], self.cell_targets[cell_rows]))
        return sample


def collate_cam(samples: list[dict]) -> dict:
    """Stack CAM samples; pseudo tables are padded to the batch's largest instance with NaN rows."""
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in ("image", "mask", "labels")}
    if "pseudo" in samples[0]:
        width = max(sample["pseudo"].shape[0] for sample in samples)
        table = torch.full((len(samples), width, N_CLASSES), float("nan"))
        for row, sample in enumerate(samples):
            table[row, : sample["pseudo"].shape[0]] = sample["pseudo"]
        batch["pseudo"] = table
    return batch


class CellCropSet(Dataset):
    """The crops of the training cells with their targets (pseudo labels or image labels).

    Args:
        crops: per-cell (8, C, C) uint8 array over the shards.
        cell_rows: the training cells (rows of ``crops``).
        targets: (len(cell_rows), 19) float32 targets aligned with ``cell_rows``.
    """

    def __init__(self, crops: ShardedArray, cell_rows: np.ndarray, targets: np.ndarray) -> None:
        if len(cell_rows) != len(targets):
            raise InputDataError(f"{len(cell_rows)} cells but {len(targets)} targets")
        self.crops, self.cell_rows, self.targets = crops, np.asarray(cell_rows, dtype=np.int64), targets.astype(np.float32)

    def __len__(self) -> int:
        return len(self.cell_rows)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        position = item[0]
        crop = self.crops[int(self.cell_rows[position])]
        return {"crop": torch.from_numpy(crop).float(), "target": torch.from_numpy(self.targets[position])}
