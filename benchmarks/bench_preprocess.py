"""Speed and memory of the preprocessing stages on synthetic 2048 px fields (prints figures).

    python benchmarks/bench_preprocess.py [--images 16] [--size 2048] [--cells 25] [--workdir DIR]

Prints: the PNG decode floor (1 and 2 threads) next to the resize stage; seconds per image of the
classical segmentation on the train path (1536 px input, scale 1.0) and the test path (original,
scale 0.5); crops per second from 768 px; and the peak memory of a shard job for growing numbers of
images (it must not grow with them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from hpa_pipeline.data.index import build_index
from hpa_pipeline.data.synth import write_demo_dataset
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.stores import (
    MASK_COMPRESSORS,
    atomic_store,
    write_strings,
    write_table,
)
from hpa_pipeline.preprocess.crops import crop_shard
from hpa_pipeline.preprocess.masks import resize_masks_shard, segment_shard
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.preprocess.segment import create_producer


def dataset(workdir: Path, n_images: int, size: int, cells: int) -> tuple[Path, list[str]]:
    data = workdir / f"synth-{n_images}x{size}-{cells}"
    if not (data / "train.csv").exists():
        write_demo_dataset(
            data, n_train=n_images, n_test=1, image_size=size, cells_per_image=(cells, cells), seed=0, overwrite=True
        )
    ids = build_index(data / "train", data / "train.csv", "train", 1)["ID"].tolist()
    return data, ids


def decode_floor(files: list[Path], threads: int) -> float:
    cv2.setNumThreads(1)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda path: cv2.imread(str(path), cv2.IMREAD_UNCHANGED), files))
    return time.perf_counter() - started


def truth_masks_store(data: Path, ids: list[str], path: Path) -> None:
    """A segmentation store holding the generator's true masks (so crop figures do not depend on segmentation)."""
    with atomic_store(path, "masks", resolution="original", scale_factor=1.0, backend="truth") as group:
        write_strings(group, "ids", ids)
        labels = group.create_group("labels")
        shapes = []
        for row, image_id in enumerate(ids):
            mask = cv2.imread(str(data / "truth" / "train" / f"{image_id}_cellmask.png"), cv2.IMREAD_UNCHANGED)
            shapes.append(mask.shape)
            array = labels.create_array(
                str(row), shape=mask.shape, dtype="uint16", chunks=mask.shape, compressors=MASK_COMPRESSORS
            )
            array[...] = mask
        write_table(group, "source_shape", np.array(shapes, np.int32))
        write_table(group, "n_cells", np.array([0] * len(ids), np.int32))


def child(stage: str, data: Path, ids: list[str], out: Path) -> None:
    """Run one stage for ``ids`` in this process and print its peak memory (MiB)."""
    if stage == "resize":
        resize_shard(data / "train", ids, [768, 1536], [out / "i768.zarr", out / "i1536.zarr"], threads=2)
    elif stage == "segment":
        segment_shard(ids, out / "m.zarr", create_producer("classical"), 0.5, image_dir=data / "train")
    elif stage == "crop":
        resize_shard(data / "train", ids, [768], [out / "i768.zarr"], threads=2)
        truth_masks_store(data, ids, out / "truth.zarr")
        resize_masks_shard(out / "truth.zarr", [768], [out / "m768.zarr"], out / "cells.zarr", "train")
        crop_shard(out / "i768.zarr", out / "m768.zarr", out / "cells.zarr", 192, out / "crops.zarr")
    # VmHWM is this process's own high-water mark; ru_maxrss would include the parent's at fork time
    peak_kib = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    print(json.dumps({"peak_mib": peak_kib / 1024}))


def peak_memory(stage: str, data: Path, ids: list[str], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, __file__, "--child", stage, "--data", str(data), "--ids", ",".join(ids), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--cells", type=int, default=25)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--child", choices=("resize", "segment", "crop"))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--ids")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.ids.split(","), args.out)
        return

    data, ids = dataset(args.workdir, args.images, args.size, args.cells)
    work = args.workdir / "stores"
    files = [data / "train" / f"{image_id}_{channel}.png" for image_id in ids for channel in CHANNELS]
    for path in files:
        path.read_bytes()  # page cache: measure decoding, not the disk
    print(f"# {len(ids)} synthetic fields of {args.size} px, {args.cells} cells each, {len(files)} PNGs")

    floor = {threads: min(decode_floor(files, threads) for _ in range(5)) for threads in (1, 2)}
    resize_times = {}
    for threads in (1, 2):
        runs = []
        for _ in range(5):
            for old in (work / "i768.zarr", work / "i1536.zarr"):  # Snakemake deletes outputs before a job
                shutil.rmtree(old, ignore_errors=True)
            started = time.perf_counter()
            resize_shard(data / "train", ids, [768, 1536], [work / "i768.zarr", work / "i1536.zarr"], threads=threads)
            runs.append(time.perf_counter() - started)
        resize_times[threads] = min(runs)
    for threads in (1, 2):
        print(
            f"decode floor, {threads} thread(s): {floor[threads]:.2f} s; resize stage (768 + 1536, "
            f"{threads} thread(s)): {resize_times[threads]:.2f} s = "
            f"{resize_times[threads] / floor[threads]:.2f}x the floor"
        )

    producer = create_producer("classical")
    subset = ids[: min(4, len(ids))]
    started = time.perf_counter()
    segment_shard(subset, work / "seg_train.zarr", producer, 1.0, images_store=_subset_store(work, subset))
    train_path = (time.perf_counter() - started) / len(subset)
    started = time.perf_counter()
    segment_shard(subset, work / "seg_test.zarr", producer, 0.5, image_dir=data / "train")
    test_path = (time.perf_counter() - started) / len(subset)
    print(
        f"segmentation (classical): {train_path:.2f} s/image on the train path (1536 px, scale 1.0), "
        f"{test_path:.2f} s/image on the test path (original, scale 0.5)"
    )

    truth_masks_store(data, ids, work / "truth.zarr")
    resize_masks_shard(work / "truth.zarr", [768], [work / "m768.zarr"], work / "cells.zarr", "train")
    n_cells = read_cell_table(work / "cells.zarr").n_cells
    started = time.perf_counter()
    crop_shard(work / "i768.zarr", work / "m768.zarr", work / "cells.zarr", 192, work / "crops.zarr")
    elapsed = time.perf_counter() - started
    print(f"crops from 768 px: {n_cells} cells in {elapsed:.2f} s = {n_cells / elapsed:.0f} cells/s")

    for stage in ("resize", "segment", "crop"):
        counts = sorted({max(1, len(ids) // 4), max(1, len(ids) // 2), len(ids)})
        peaks = [peak_memory(stage, data, ids[:count], args.workdir / f"mem-{stage}-{count}") for count in counts]
        print(
            f"peak memory of a {stage} shard: "
            + ", ".join(f"{count} images {peak:.0f} MiB" for count, peak in zip(counts, peaks))
        )


def _subset_store(work: Path, subset: list[str]) -> Path:
    """The 1536 px images of ``subset`` (the first rows of the resized store)."""
    import zarr

    source = zarr.open_group(work / "i1536.zarr", mode="r")
    path = work / "i1536-subset.zarr"
    with atomic_store(path, "images", size=1536) as group:
        write_strings(group, "ids", subset)
        images = group.create_array(
            "images", shape=(len(subset), 4, 1536, 1536), dtype="uint8", chunks=(1, 4, 1536, 1536)
        )
        images[...] = source["images"][: len(subset)]
        write_table(group, "source_shape", source["source_shape"][: len(subset)])
    return path


if __name__ == "__main__":
    main()
