"""Speed and memory of the preprocessing stages on synthetic 2048 px fields (prints figures).

    python benchmarks/bench_preprocess.py [--images 16] [--size 2048] [--cells 25] [--workdir DIR]
        [--codecs fast dense lz4-0.2] [--threads 1 2] [--repeats 5] [--parts resize segment crop memory]

Prints: the PNG decode floor next to the resize stage, per store codec (hpa_pipeline.io.stores.CODECS,
plus ``lz4-0.2``, the codec of hpa-pipeline < 0.3, for comparison), as images/s and as a ratio to the
floor, wall time and CPU time (the CPU ratio holds on a loaded machine); seconds per image of the
classical segmentation on the train path (1536 px input, scale 1.0) and the test path (original,
scale 0.5); crops per second from 768 px per codec; and the peak memory of a shard job for growing
numbers of images (it must not grow with them). Codecs are timed in turns, best of ``--repeats``.
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
from zarr.codecs import BloscCodec

from hpa_pipeline.data.index import build_index
from hpa_pipeline.data.synth import write_demo_dataset
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.stores import (
    CODECS,
    DEFAULT_CODEC,
    MASK_COMPRESSORS,
    atomic_store,
    write_strings,
    write_table,
)
from hpa_pipeline.preprocess.crops import crop_shard
from hpa_pipeline.preprocess.masks import resize_masks_shard, segment_shard
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.preprocess.segment import create_producer

#: The codec of hpa-pipeline < 0.3 (Blosc lz4 1, bit shuffle, Blosc's own blocks), to compare with.
CODECS["lz4-0.2"] = {
    kind: {"compressors": (BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle"),)} for kind in CODECS["fast"]
}


def dataset(workdir: Path, n_images: int, size: int, cells: int) -> tuple[Path, list[str]]:
    data = workdir / f"synth-{n_images}x{size}-{cells}"
    if not (data / "train.csv").exists():
        write_demo_dataset(
            data, n_train=n_images, n_test=1, image_size=size, cells_per_image=(cells, cells), seed=0, overwrite=True
        )
    ids = build_index(data / "train", data / "train.csv", "train", 1)["ID"].tolist()
    return data, ids


def timed(function, *args) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of ``function(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def decode_floor(files: list[Path], threads: int) -> None:
    cv2.setNumThreads(1)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda path: cv2.imread(str(path), cv2.IMREAD_UNCHANGED), files))


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
    parser.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=[DEFAULT_CODEC])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="resize threads")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing; the best is reported")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("resize", "segment", "crop", "memory"),
        default=["resize", "segment", "crop", "memory"],
    )
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

    if "resize" in args.parts:
        for threads in args.threads:
            best: dict[str, list[float]] = {name: [np.inf, np.inf] for name in ["decode floor", *args.codecs]}
            for _ in range(args.repeats):  # codecs in turns, so that a busy spell on the machine hits them all
                for name in best:
                    for old in (work / "i768.zarr", work / "i1536.zarr"):  # Snakemake deletes outputs before a job
                        shutil.rmtree(old, ignore_errors=True)
                    if name == "decode floor":
                        times = timed(decode_floor, files, threads)
                    else:
                        outs = [work / "i768.zarr", work / "i1536.zarr"]
                        times = timed(resize_shard, data / "train", ids, [768, 1536], outs, threads, name)
                    best[name] = [min(old, new) for old, new in zip(best[name], times)]
            floor_wall, floor_cpu = best["decode floor"]
            print(
                f"decode floor, {threads} thread(s): {len(ids) / floor_wall:.1f} img/s, "
                f"{floor_cpu / len(ids) * 1000:.0f} ms CPU/img"
            )
            for name in args.codecs:
                wall, cpu = best[name]
                print(
                    f"  resize 768 + 1536, {threads} thread(s), codec {name}: {len(ids) / wall:.1f} img/s = "
                    f"{wall / floor_wall:.2f}x the floor ({cpu / floor_cpu:.2f}x its CPU)"
                )
        png_768 = _png_bytes(work / "i768.zarr")
        for name in args.codecs:
            resize_shard(data / "train", ids, [768], [work / "i768.zarr"], 2, name)
            store = sum(f.stat().st_size for f in (work / "i768.zarr").rglob("*") if f.is_file())
            print(
                f"  images 768 px, codec {name}: {store / len(ids) / 1e6:.2f} MB/img = {store / png_768:.2f}x the PNGs"
            )

    if "segment" in args.parts:
        if not (work / "i1536.zarr").exists():
            resize_shard(data / "train", ids, [1536], [work / "i1536.zarr"], threads=2)
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

    if "crop" in args.parts:
        truth_masks_store(data, ids, work / "truth.zarr")
        resize_masks_shard(work / "truth.zarr", [768], [work / "m768.zarr"], work / "cells.zarr", "train")
        n_cells = read_cell_table(work / "cells.zarr").n_cells
        for name in args.codecs:  # the images the crops are cut from are written with the same codec
            resize_shard(data / "train", ids, [768], [work / f"i768-{name}.zarr"], 2, name)
        best = {name: [np.inf, np.inf] for name in args.codecs}
        for _ in range(args.repeats):
            for name in args.codecs:
                images = work / f"i768-{name}.zarr"
                times = timed(
                    crop_shard, images, work / "m768.zarr", work / "cells.zarr", 192, work / "crops.zarr", name
                )
                best[name] = [min(old, new) for old, new in zip(best[name], times)]
        for name in args.codecs:
            wall, cpu = best[name]
            print(
                f"crops from 768 px, codec {name}: {n_cells} cells in {wall:.2f} s = {n_cells / wall:.0f} cells/s "
                f"({cpu / n_cells * 1000:.2f} ms CPU/cell)"
            )

    if "memory" in args.parts:
        for stage in ("resize", "segment", "crop"):
            counts = sorted({max(1, len(ids) // 4), max(1, len(ids) // 2), len(ids)})
            peaks = [peak_memory(stage, data, ids[:count], args.workdir / f"mem-{stage}-{count}") for count in counts]
            print(
                f"peak memory of a {stage} shard: "
                + ", ".join(f"{count} images {peak:.0f} MiB" for count, peak in zip(counts, peaks))
            )


def _png_bytes(store: Path) -> int:
    """Bytes of the store's images as the original kept them: one cv2.imwrite-default PNG per channel."""
    import zarr

    images = zarr.open_group(store, mode="r")["images"]
    return sum(len(cv2.imencode(".png", plane)[1]) for row in range(images.shape[0]) for plane in images[row])


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
