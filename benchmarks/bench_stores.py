"""Store size and read speed: the original's PNGs vs the Zarr stores under candidate codecs (prints figures).

    python benchmarks/bench_stores.py [--source synth real] [--images 40] [--sizes 768 1536]
        [--kinds images masks crops] [--codecs REGEX] [--repeats 2] [--workdir DIR] [--json FILE]

Fields: ``synth`` renders N standard 2048 px fields (hpa_pipeline.data.synth, 10-30 cells); ``real`` reads the
Kaggle 2021 train images in ../shared/realdata/hpa_samples (7 fields, their HPA-Cell-Segmentation masks).
Both are resized with the pipeline's own resizer (ImageResizer) and masks with resize_labels_keeping_cells.

Per size and kind, per format: bytes per image (or per cell crop) on disk, write speed (one thread, one
chunk per image as resize.py writes), and random-access read speed, one image at a time in a random order
as the training loaders read them (ShardedArray), with 1 and 4 threads. The baseline is what the original
stored: one PNG per channel written by cv2.imwrite with default parameters (inside ZIP_STORED zips, so the
zip adds only ~100 bytes per member), read with cv2.imdecode; for masks an 8-bit label PNG; for crops
python-blosc's pack_array defaults (blosclz, clevel 9, byte shuffle). Every stored value is read back and
compared (lossless check). Each timing is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.codecs import numcodecs as nc3

from hpa_pipeline.data.synth import plan_dataset, render_field
from hpa_pipeline.io.stores import (
    CHUNK_WRITE_CONFIG,
    CODECS,
    MASK_COMPRESSORS,
    ShardedArray,
    atomic_store,
    codec_options,
    write_rows,
)
from hpa_pipeline.preprocess.crops import CELLS_PER_SHARD, crop_cells_of_image
from hpa_pipeline.preprocess.masks import resize_labels_keeping_cells
from hpa_pipeline.preprocess.resize import ImageResizer

REAL = Path(__file__).resolve().parents[1].parent / "shared/realdata/hpa_samples/kaggle2021_train"
if not REAL.is_dir():  # a git worktree under /work/wt/ instead of the checkout next to shared/
    REAL = Path(__file__).resolve().parents[3] / "shared/realdata/hpa_samples/kaggle2021_train"
CROP_SIZE = 192


def _blosc(cname: str, clevel: int, shuffle: str) -> tuple:
    return (BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle),)


def candidates(kind: str) -> dict[str, dict]:
    """Codec settings to compare: name -> create_array keyword arguments (filters, compressors).

    Left out after a first run on the real images: Blosc zstd clevel 9 (1 image/s to write at 768 px for
    3% less than zstd 5), lz4 clevel 5, Blosc zlib (slower than PNG to read).
    """
    if kind == "masks":
        options: dict[str, dict] = {"current": {"compressors": MASK_COMPRESSORS}}
    else:  # the pipeline's named codecs (hpa_pipeline.io.stores.CODECS)
        options = {f"current {name}": codec_options(name, kind) for name in CODECS}
    short = {"noshuffle": "noshuf", "shuffle": "shuf", "bitshuffle": "bitshuf"}
    # byte shuffle is a no-op on uint8 (images, crops); bit shuffle is what lz4 needs there
    shuffles = ("noshuffle", "shuffle", "bitshuffle") if kind == "masks" else ("noshuffle", "bitshuffle")
    for cname, levels in (("lz4", (1, 9)), ("lz4hc", (5,)), ("zstd", (1, 3, 5))):
        for clevel in levels:
            for shuffle in shuffles:
                options[f"blosc-{cname}-{clevel}-{short[shuffle]}"] = {"compressors": _blosc(cname, clevel, shuffle)}
    # Blosc's default blocks are small (~32-64 KiB at these levels); 1 MiB ones give the compressor context
    for cname in ("lz4", "zstd"):
        options[f"blosc-{cname}-1-bitshuf-1M"] = {
            "compressors": (BloscCodec(cname=cname, clevel=1, shuffle="bitshuffle", blocksize=2**20),)
        }
    options["blosc-blosclz-9-shuf"] = {"compressors": _blosc("blosclz", 9, "shuffle")}
    for level in (1, 3, 9):
        options[f"zstd-{level}"] = {"compressors": (ZstdCodec(level=level),)}
    options["gzip-6"] = {"compressors": (GzipCodec(level=6),)}
    if kind != "masks":  # a horizontal delta filter (PNG's "sub" predictor) before the compressor
        for level in (1, 3, 9):
            options[f"delta+zstd-{level}"] = {
                "filters": (nc3.Delta(dtype="u1"),),
                "compressors": (ZstdCodec(level=level),),
            }
        for cname, clevel in (("lz4", 5), ("zstd", 1)):
            options[f"delta+blosc-{cname}-{clevel}-noshuf"] = {
                "filters": (nc3.Delta(dtype="u1"),),
                "compressors": _blosc(cname, clevel, "noshuffle"),
            }
    return options


# ---------------------------------------------------------------------------------------------------- data


def synth_fields(n_images: int, seed: int = 0):
    """Yield (4, 2048, 2048) uint8 fields and their (2048, 2048) cell masks."""
    for spec in plan_dataset(n_train=n_images, n_test=0, image_size=2048, cells_per_image=(10, 30), seed=seed):
        field = render_field(np.random.default_rng([seed, spec.index, 3]), 2048, 2048, spec.n_cells, spec.classes)
        yield field.channels, field.cell_mask


def real_fields():
    """Yield the real Kaggle fields (4, H, W) uint8 and their label masks."""
    from hpa_pipeline.io.channels import read_rgby

    for mask_path in sorted((REAL / "masks").glob("*_predictedmask.png")):
        image_id = mask_path.name.removesuffix("_predictedmask.png")
        yield read_rgby(REAL / "images", image_id), cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)


def prepare(source: str, n_images: int, sizes: Sequence[int], cache: Path) -> dict[int, dict[str, np.ndarray]]:
    """Resized images, masks, plain-INTER_LINEAR images (the original's resize) and crops, cached as .npy."""
    folder = cache / (f"{source}-{n_images}" if source == "synth" else source)
    folder = folder.with_name(folder.name + "-" + "-".join(map(str, sizes)))
    if not (folder / "done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        fields = synth_fields(n_images) if source == "synth" else real_fields()
        resizer = ImageResizer(sizes)
        out: dict[int, dict[str, list]] = {size: {"images": [], "masks": [], "linear": []} for size in sizes}
        started = time.perf_counter()
        for image, mask in fields:
            resized = resizer(image)
            instance = np.unique(mask)[1:]
            for size in sizes:
                out[size]["images"].append(resized[size].copy())
                out[size]["masks"].append(resize_labels_keeping_cells(mask, size, instance)[0].astype(np.uint16))
                out[size]["linear"].append(np.stack([cv2.resize(p, (size, size)) for p in image]))
        print(f"# prepared {len(out[sizes[0]]['images'])} {source} fields in {time.perf_counter() - started:.0f} s")
        for size in sizes:
            for name, arrays in out[size].items():
                np.save(folder / f"{name}_{size}.npy", np.stack(arrays))
            images, masks = out[size]["images"], out[size]["masks"]
            crops = [crop_cells_of_image(i, m, np.unique(m)[1:], CROP_SIZE) for i, m in zip(images, masks)]
            np.save(folder / f"crops_{size}.npy", np.concatenate(crops))
        (folder / "done").touch()
    return {
        size: {
            name: np.load(folder / f"{name}_{size}.npy", mmap_mode="r")
            for name in ("images", "masks", "linear", "crops")
        }
        for size in sizes
    }


# ---------------------------------------------------------------------------------------------------- timing


def best_time(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def read_all(read: Callable[[int], object], n: int, threads: int, seed: int = 0) -> None:
    order = np.random.default_rng(seed).permutation(n).tolist()
    if threads == 1:
        for row in order:
            read(row)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, order))


def folder_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def measure_png(arrays: np.ndarray, folder: Path, repeats: int, linear: np.ndarray | None = None) -> dict:
    """The original's format: one cv2.imwrite-default PNG per channel (or per mask)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per_item = arrays.shape[1] if arrays.ndim == 4 else 1
    planes = arrays.reshape(-1, *arrays.shape[-2:])

    def write() -> None:
        for index, plane in enumerate(planes):
            cv2.imwrite(str(folder / f"{index}.png"), np.ascontiguousarray(plane))

    write_seconds = best_time(write, repeats)
    n = len(arrays)

    def read(row: int) -> np.ndarray:
        return np.stack(
            [
                cv2.imdecode(np.fromfile(folder / f"{row * per_item + k}.png", np.uint8), cv2.IMREAD_UNCHANGED)
                for k in range(per_item)
            ]
        )

    for row in range(n):
        if not np.array_equal(read(row).reshape(arrays[row].shape), arrays[row]):
            raise AssertionError("PNG round trip changed values")
    result = {
        "bytes": folder_bytes(folder) / n,
        "write": n / write_seconds,
        "read1": n / best_time(lambda: read_all(read, n, 1), repeats),
        "read4": n / best_time(lambda: read_all(read, n, 4), repeats),
    }
    if linear is not None:  # size only: the original's plain INTER_LINEAR resize (more aliasing, more detail)
        result["bytes_linear"] = sum(len(cv2.imencode(".png", p)[1]) for p in linear.reshape(-1, *linear.shape[-2:]))
        result["bytes_linear"] /= n
    shutil.rmtree(folder)
    return result


def measure_blosc_pack(crops: np.ndarray, repeats: int) -> dict:
    """The original's crops: python-blosc pack_array defaults (blosclz 9, byte shuffle), one file per cell."""
    codec = numcodecs.Blosc(cname="blosclz", clevel=9, shuffle=numcodecs.Blosc.SHUFFLE)
    encoded: list[bytes] = []
    seconds = best_time(lambda: encoded.__setitem__(slice(None), [codec.encode(c) for c in crops]), repeats)
    n = len(crops)

    def read(row: int) -> np.ndarray:
        return np.frombuffer(codec.decode(encoded[row]), np.uint8).reshape(crops.shape[1:])

    return {
        "bytes": sum(map(len, encoded)) / n,
        "write": n / seconds,
        "read1": n / best_time(lambda: read_all(read, n, 1), repeats),
        "read4": n / best_time(lambda: read_all(read, n, 4), repeats),
    }


def measure_zarr(kind: str, arrays: np.ndarray, codec: dict, path: Path, repeats: int) -> dict:
    """Write ``arrays`` as the pipeline lays out ``kind`` out with ``codec``; time the writes and random reads."""
    n, shape = len(arrays), arrays.shape[1:]
    store_kind, name = {
        "images": ("images", "images"),
        "masks": ("masks_resized", "masks"),
        "crops": ("crops", "crops"),
    }[kind]
    layout = {"chunks": (1, *shape)}
    if kind == "crops":
        layout["shards"] = (CELLS_PER_SHARD, *shape)

    def write() -> None:
        with atomic_store(path, store_kind) as group:
            array = group.create_array(
                name, shape=arrays.shape, dtype=arrays.dtype, config=CHUNK_WRITE_CONFIG, **layout, **codec
            )
            if kind == "crops":  # whole shard files at once, as crop_shard writes
                for start in range(0, n, CELLS_PER_SHARD):
                    array[start : start + CELLS_PER_SHARD] = arrays[start : start + CELLS_PER_SHARD]
            else:  # one chunk per image, as resize_shard writes
                for row in range(n):
                    write_rows([(array, row, np.asarray(arrays[row]))])

    write_seconds = best_time(write, repeats)
    reader = ShardedArray([path], store_kind, name)
    for row in range(n):
        if not np.array_equal(reader[row], arrays[row]):
            raise AssertionError(f"{codec} changed stored values")
    result = {
        "bytes": folder_bytes(path) / n,
        "write": n / write_seconds,
        "read1": n / best_time(lambda: read_all(reader.__getitem__, n, 1), repeats),
        "read4": n / best_time(lambda: read_all(reader.__getitem__, n, 4), repeats),
    }
    shutil.rmtree(path)
    return result


def stage_speeds(sizes: Sequence[int], repeats: int, cache: Path) -> None:
    """Seconds per real field of the stages around the stores: PNG decode, resize, crops (one thread)."""
    from hpa_pipeline.io.channels import read_rgby_planes

    ids = [path.name.removesuffix("_predictedmask.png") for path in sorted((REAL / "masks").glob("*.png"))]
    ids = [image_id for image_id in ids if cv2.imread(str(REAL / "images" / f"{image_id}_blue.png")).shape[0] == 2048]
    decode = best_time(lambda: [read_rgby_planes(REAL / "images", image_id) for image_id in ids], repeats) / len(ids)
    planes = [read_rgby_planes(REAL / "images", image_id)[0] for image_id in ids]
    resizer = ImageResizer(sizes)
    resize = best_time(lambda: [resizer(image) for image in planes], repeats) / len(ids)
    print(f"# stages, {len(ids)} real 2048 px fields, one thread")
    print(f"#   decode the 4 source PNGs: {decode * 1000:.0f} ms/image")
    print(f"#   resize to {'+'.join(map(str, sizes))}: {resize * 1000:.0f} ms/image")
    data = prepare("real", 0, sizes, cache)
    for size in sizes:
        images, masks = data[size]["images"], data[size]["masks"]
        n_cells = len(data[size]["crops"])
        seconds = best_time(
            lambda images=images, masks=masks: [
                crop_cells_of_image(i, m, np.unique(m)[1:], CROP_SIZE) for i, m in zip(images, masks)
            ],
            repeats,
        )
        print(
            f"#   crops from {size} px: {n_cells / seconds:.0f} cells/s ({seconds / len(images) * 1000:.0f} ms/image)"
        )


# ---------------------------------------------------------------------------------------------------- main


def report(title: str, unit: str, rows: dict[str, dict], baseline: str) -> None:
    base = rows[baseline]["bytes"]
    print(f"\n## {title}")
    print(
        f"{'format':28s} {'KiB/' + unit:>10s} {'vs ' + baseline:>9s} {'write/s':>8s} {'read/s':>8s} {'read/s 4t':>9s}"
    )
    for name, row in sorted(rows.items(), key=lambda item: item[1]["bytes"]):
        print(
            f"{name:28s} {row['bytes'] / 1024:10.1f} {row['bytes'] / base:9.2f} "
            f"{row['write']:8.1f} {row['read1']:8.1f} {row['read4']:9.1f}"
        )
    if "bytes_linear" in rows[baseline]:
        print(
            f"(PNG of the original's plain INTER_LINEAR resize: {rows[baseline]['bytes_linear'] / 1024:.1f} KiB/{unit})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", nargs="+", choices=["synth", "real"], default=["synth", "real"])
    parser.add_argument("--images", type=int, default=40, help="number of synthetic 2048 px fields")
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1536])
    parser.add_argument(
        "--kinds", nargs="+", choices=["images", "masks", "crops"], default=["images", "masks", "crops"]
    )
    parser.add_argument("--codecs", default=".", help="regular expression selecting the candidate codecs")
    parser.add_argument("--repeats", type=int, default=2, help="runs per timing; the best is reported")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/stores"))
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--stages", action="store_true", help="only time decode, resize and crops on the real fields")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if args.stages:
        stage_speeds(args.sizes, args.repeats, args.workdir / "cache")
        return
    figures: dict[str, dict] = {}
    for source in args.source:
        data = prepare(source, args.images, args.sizes, args.workdir / "cache")
        for size in args.sizes:
            n_images, n_cells = len(data[size]["images"]), len(data[size]["crops"])
            print(f"\n# {source}: {n_images} fields at {size} px, {n_cells} cells ({n_cells / n_images:.1f}/image)")
            for kind in args.kinds:
                arrays = np.ascontiguousarray(data[size][kind])
                rows: dict[str, dict] = {}
                if kind == "crops":
                    baseline = "blosc-pack (original)"
                    rows[baseline] = measure_blosc_pack(arrays, args.repeats)
                else:
                    png_input = arrays if kind == "images" else arrays.astype(np.uint8)
                    if kind == "masks" and arrays.max() > 255:
                        png_input = arrays  # the original's 8-bit masks could not hold these; 16-bit PNG
                    linear = data[size]["linear"] if kind == "images" else None
                    rows["png (original)"] = measure_png(png_input, args.workdir / "png", args.repeats, linear)
                    baseline = "png (original)"
                for name, codec in candidates(kind).items():
                    if re.search(args.codecs, name):
                        rows[name] = measure_zarr(kind, arrays, codec, args.workdir / f"{kind}.zarr", args.repeats)
                unit = "cell" if kind == "crops" else "img"
                report(f"{source} {kind} {size} px ({len(arrays)} {unit}s)", unit, rows, baseline)
                figures[f"{source}/{kind}/{size}"] = {"n": len(arrays), "cells_per_image": n_cells / n_images, **rows}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
