"""Training-loader throughput: samples/s read from the Zarr stores vs decoding the same samples from PNGs.

    python benchmarks/bench_loader.py [--images 16] [--workers 0 1 2] [--workdir DIR]

The image-level (CAM) loader reads a 768 px image and its mask and cuts a random 512 px crop; the
PNG baseline decodes the same 768 px image (4 channel PNGs, as the original stored them) and mask
PNG and cuts the same crop. The cell loader reads single 192 px crops from the sharded crop store.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_preprocess import dataset, truth_masks_store
from torch.utils.data import DataLoader, Dataset

from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.stores import ShardedArray, open_store, read_strings
from hpa_pipeline.nets.models import normalize_images
from hpa_pipeline.preprocess.crops import crop_shard
from hpa_pipeline.preprocess.masks import resize_masks_shard
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.train.datasets import (
    CamTrainingSet,
    CellCropSet,
    EpochSampler,
    collate_cam,
)


class PngCamSet(Dataset):
    """The same samples as CamTrainingSet, decoded from per-channel PNG files."""

    def __init__(self, folder: Path, ids: list[str], crop_size: int, seed: int) -> None:
        self.folder, self.ids, self.crop_size, self.seed = folder, ids, crop_size, seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        position, epoch = item
        image_id = self.ids[position]
        image = np.stack([cv2.imread(str(self.folder / f"{image_id}_{c}.png"), cv2.IMREAD_GRAYSCALE) for c in CHANNELS])
        mask = cv2.imread(str(self.folder / f"{image_id}_mask.png"), cv2.IMREAD_UNCHANGED)
        rng = np.random.default_rng([self.seed, epoch, position])
        top, left = rng.integers(0, image.shape[-1] - self.crop_size + 1, size=2)
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        return {
            "image": normalize_images(np.ascontiguousarray(image[:, window[0], window[1]])),
            "mask": torch.from_numpy(mask[window].astype(np.int64)),
            "labels": torch.zeros(19),
        }


def throughput(dataset: Dataset, batch_size: int, workers: int, epochs: int, collate=None) -> float:
    sampler = EpochSampler(len(dataset), seed=0)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: worker start, page cache
        break
    started = time.perf_counter()
    count = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            count += len(next(iter(batch.values())))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    data, ids = dataset(args.workdir, args.images, 2048, 25)
    work = args.workdir / "loader"
    resize_shard(data / "train", ids, [768], [work / "i768.zarr"], threads=2)
    truth_masks_store(data, ids, work / "truth.zarr")
    resize_masks_shard(work / "truth.zarr", [768], [work / "m768.zarr"], work / "cells.zarr", "train")
    crop_shard(work / "i768.zarr", work / "m768.zarr", work / "cells.zarr", 192, work / "crops.zarr")
    png = work / "png768"
    png.mkdir(parents=True, exist_ok=True)
    images = open_store(work / "i768.zarr", "images")
    masks = open_store(work / "m768.zarr", "masks_resized")
    for row, image_id in enumerate(read_strings(images, "ids")):
        for channel, plane in zip(CHANNELS, images["images"][row]):
            cv2.imwrite(str(png / f"{image_id}_{channel}.png"), plane)
        cv2.imwrite(str(png / f"{image_id}_mask.png"), masks["masks"][row])

    cells = read_cell_table([work / "cells.zarr"])
    labels = np.zeros((len(ids), 19), np.float32)
    zarr_set = CamTrainingSet(
        ShardedArray([work / "i768.zarr"], "images", "images"),
        ShardedArray([work / "m768.zarr"], "masks_resized", "masks"),
        np.arange(len(ids)),
        labels,
        cells,
        None,
        512,
        True,
        0,
    )
    png_set = PngCamSet(png, ids, 512, 0)
    crops = ShardedArray([work / "crops.zarr"], "crops", "crops")
    n_cells = read_cell_table(work / "cells.zarr").n_cells
    cell_set = CellCropSet(crops, np.arange(n_cells), np.zeros((n_cells, 19), np.float32))
    torch.set_num_threads(1)
    print(f"# {len(ids)} images of 768 px, {n_cells} cells; samples/s (higher is better)")
    for workers in args.workers:
        from_zarr = throughput(zarr_set, 8, workers, 3, collate_cam)
        from_png = throughput(png_set, 8, workers, 3, collate_cam)
        from_crops = throughput(cell_set, 128, workers, 3)
        print(
            f"workers={workers}: CAM loader from Zarr {from_zarr:.1f}/s, "
            f"same samples decoded from PNG {from_png:.1f}/s "
            f"({from_zarr / from_png:.1f}x); cell-crop loader from Zarr {from_crops:.0f} crops/s"
        )


if __name__ == "__main__":
    main()
