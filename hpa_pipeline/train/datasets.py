"""Training and validation data, read straight from the preprocessing Zarr stores.

Samples are addressed by (position, epoch): every random choice of a sample (crop, flip) is drawn from
a generator seeded by (seed, epoch, image), so an epoch's batches do not depend on the number of
loader workers, and a training resumed at epoch e sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.stores import ShardedArray
from hpa_pipeline.labels import N_CLASSES, NEGATIVE
from hpa_pipeline.nets.models import normalize_images
from hpa_pipeline.nets.pooling import present_cells


def cell_targets_from_images(cells: CellTable, image_labels: np.ndarray) -> np.ndarray:
    """The image-level labels copied to every cell of the image: (n_cells, 19) float32."""
    return image_labels[cells.image_of_cell()].astype(np.float32)


def refine_pseudo_labels(
    targets: np.ndarray,
    sharpening: float = 1.0,
    image_labels_of_cells: np.ndarray | None = None,
    within_image_labels: bool = False,
    weight: float = 1.0,
) -> np.ndarray:
    """Pseudo labels as training targets, NaN (no target) kept.

    Args:
        targets: (n_cells, C) ensemble probabilities.
        sharpening: exponent a of p^a / (p^a + (1 - p)^a); 1 leaves the targets as they are.
        image_labels_of_cells: (n_cells, C) labels of each cell's image (:func:`cell_targets_from_images`),
            needed by ``within_image_labels`` and by a ``weight`` below 1.
        within_image_labels: a class the image lacks is 0 in its cells, except Negative: an image labelled
            with a class leaves out Negative although some of its cells show nothing.
        weight: share of the (refined) pseudo label in the target, the rest from the image's labels; since
            binary cross-entropy is linear in its target, this weighs the pseudo-label loss against the
            image-label loss.
    """
    if (within_image_labels or weight != 1.0) and image_labels_of_cells is None:
        raise ValueError("refine_pseudo_labels: within_image_labels and weight < 1 need image_labels_of_cells")
    refined = targets.astype(np.float64)
    if sharpening != 1.0:
        high, low = refined**sharpening, (1.0 - refined) ** sharpening
        refined = high / (high + low)
    if within_image_labels:
        allowed = image_labels_of_cells > 0
        allowed[:, NEGATIVE] = True
        refined = np.where(allowed | np.isnan(refined), refined, 0.0)
    if weight != 1.0:
        refined = weight * refined + (1.0 - weight) * image_labels_of_cells
    return refined.astype(np.float32)


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
        cells: CellTable,
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
            sample["pseudo"] = torch.from_numpy(
                _pseudo_table(self.cells.instance[cell_rows], self.cell_targets[cell_rows])
            )
        return sample


def collate_cam(samples: list[dict]) -> dict:
    """Stack CAM samples; pseudo tables are padded to the batch's largest instance with NaN rows.

    The batch's cells (``cells``, :class:`~hpa_pipeline.nets.pooling.HostCells`) are found here, in
    the loader's workers, so that the training step never reads them back from the GPU.
    """
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in ("image", "mask", "labels")}
    batch["cells"] = present_cells(batch["mask"].numpy())
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
        self.crops, self.cell_rows, self.targets = (
            crops,
            np.asarray(cell_rows, dtype=np.int64),
            targets.astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.cell_rows)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        position = item[0]
        crop = self.crops[int(self.cell_rows[position])]
        return {"crop": torch.from_numpy(crop).float(), "target": torch.from_numpy(self.targets[position])}


class ImageTrainingSet(Dataset):
    """Random crops of whole images with their image labels: the image-level task (no masks, no cells).

    Args:
        images: per-image (4, S, S) uint8 array over the shards.
        rows: the training images (rows of ``images``).
        labels: (n, C) image labels of all rows.
        crop_size: side of the random crop.
        hflip: random horizontal flip.
        seed: the run's seed.
    """

    def __init__(
        self, images: ShardedArray, rows: np.ndarray, labels: np.ndarray, crop_size: int, hflip: bool, seed: int
    ) -> None:
        self.images, self.rows, self.labels = images, np.asarray(rows, dtype=np.int64), labels
        self.crop_size, self.hflip, self.seed = crop_size, hflip, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        position, epoch = item
        row = int(self.rows[position])
        rng = np.random.default_rng([self.seed, epoch, row])
        image = self.images[row]
        size = image.shape[-1]
        if self.crop_size > size:
            raise InputDataError(f"crop_size {self.crop_size} exceeds the image size {size}")
        top, left = rng.integers(0, size - self.crop_size + 1, size=2)
        image = image[:, top : top + self.crop_size, left : left + self.crop_size]
        if self.hflip and rng.random() < 0.5:
            image = image[:, :, ::-1]
        return {
            "image": normalize_images(np.ascontiguousarray(image)),
            "labels": torch.from_numpy(self.labels[row].astype(np.float32)),
        }
