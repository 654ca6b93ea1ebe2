"""Training-loader throughput: samples/s read from the Zarr stores vs decoding the same samples from PNGs.

    python benchmarks/bench_loader.py [--images 16] [--workers 0 1 2] [--codecs fast dense lz4-0.2]
        [--repeats 2] [--workdir DIR]

The image-level (CAM) loader reads a 768 px image and its mask and cuts a random 512 px crop; the
PNG baseline decodes the same 768 px image (4 channel PNGs, as the original stored them) and mask
PNG and cuts the same crop. The cell loader reads single 192 px crops from the sharded crop store.
Per store codec (images and crops written with it), with 0 workers: the loader's CPU per sample
(this process, all threads; collate included), the figure that says how many workers a GPU needs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_preprocess import dataset, truth_masks_store  # also adds the lz4-0.2 codec
from torch.utils.data import DataLoader, Dataset

from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.stores import CODECS, DEFAULT_CODEC, ShardedArray, open_store, read_strings
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


def throughput(dataset: Dataset, batch_size: int, workers: int, epochs: int, collate=None) -> tuple[float, float]:
    """Samples/s and CPU ms per sample of this process (the loading itself only with 0 workers)."""
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
    started, cpu = time.perf_counter(), time.process_time()
    count = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            count += len(next(iter(batch.values())))
    return count / (time.perf_counter() - started), (time.process_time() - cpu) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=[DEFAULT_CODEC])
    parser.add_argument("--repeats", type=int, default=2, help="runs per figure; the best is reported")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    data, ids = dataset(args.workdir, args.images, 2048, 25)
    work = args.workdir / "loader"
    truth_masks_store(data, ids, work / "truth.zarr")
    resize_masks_shard(work / "truth.zarr", [768], [work / "m768.zarr"], work / "cells.zarr", "train")
    for codec in args.codecs:
        resize_shard(data / "train", ids, [768], [work / f"i768-{codec}.zarr"], threads=2, codec=codec)
        crop_shard(
            work / f"i768-{codec}.zarr",
            work / "m768.zarr",
            work / "cells.zarr",
            192,
            work / f"crops-{codec}.zarr",
            codec,
        )
    png = work / "png768"
    png.mkdir(parents=True, exist_ok=True)
    images = open_store(work / f"i768-{args.codecs[0]}.zarr", "images")
    masks = open_store(work / "m768.zarr", "masks_resized")
    for row, image_id in enumerate(read_strings(images, "ids")):
        for channel, plane in zip(CHANNELS, images["images"][row]):
            cv2.imwrite(str(png / f"{image_id}_{channel}.png"), plane)
        cv2.imwrite(str(png / f"{image_id}_mask.png"), masks["masks"][row])

    cells = read_cell_table([work / "cells.zarr"])
    n_cells = cells.n_cells
    labels = np.zeros((len(ids), 19), np.float32)
    mask_rows = ShardedArray([work / "m768.zarr"], "masks_resized", "masks")
    sets: dict[str, tuple[Dataset, int, object]] = {"CAM from PNG": (PngCamSet(png, ids, 512, 0), 8, collate_cam)}
    for codec in args.codecs:
        image_rows = ShardedArray([work / f"i768-{codec}.zarr"], "images", "images")
        cam = CamTrainingSet(image_rows, mask_rows, np.arange(len(ids)), labels, cells, None, 512, True, 0)
        crops = ShardedArray([work / f"crops-{codec}.zarr"], "crops", "crops")
        cell = CellCropSet(crops, np.arange(n_cells), np.zeros((n_cells, 19), np.float32))
        sets[f"CAM, codec {codec}"] = (cam, 8, collate_cam)
        sets[f"crops, codec {codec}"] = (cell, 128, None)
    torch.set_num_threads(1)
    print(f"# {len(ids)} images of 768 px, {n_cells} cells; best of {args.repeats}, sets in turns")
    for workers in args.workers:
        best = {name: (0.0, np.inf) for name in sets}
        for _ in range(args.repeats):
            for name, (dataset_, batch_size, collate) in sets.items():
                rate, cpu = throughput(dataset_, batch_size, workers, 3, collate)
                best[name] = (max(best[name][0], rate), min(best[name][1], cpu))
        for name, (rate, cpu) in best.items():
            unit = "crops" if name.startswith("crops") else "samples"
            cpu_note = f", {cpu:.1f} ms CPU per sample" if workers == 0 else ""
            print(f"workers={workers}: {name}: {rate:.1f} {unit}/s{cpu_note}")


if __name__ == "__main__":
    main()
