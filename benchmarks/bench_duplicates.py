"""Speed and memory of the duplicate search: hashing images stores and grouping 100,000 hashes.

Prints:

* ``find_duplicate_groups`` on ``--n-hashes`` random 64-bit hashes plus ``--planted`` near duplicates
  (0-4 bits from an earlier hash): wall time, peak traced memory (tracemalloc) and the groups found;
* ``hash_images_store`` on a store of ``--n-images`` 768 px synthetic images (D4 variants of rendered
  fields): images/s reading and hashing, and hashing alone from memory;
* both extrapolated to the full run (21,806 train + 80,000 public HPA + 559 test images); the grouping
  grows with the square of the count.

Usage: python benchmarks/bench_duplicates.py [--n-hashes 100000] [--planted 300] [--n-images 320]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_pipeline.data.duplicates import DEFAULT_MAX_DISTANCE, find_duplicate_groups, hash_images_store, image_hash
from hpa_pipeline.data.synth import render_field
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.stores import (
    CHUNK_WRITE_CONFIG,
    DEFAULT_CODEC,
    atomic_store,
    codec_options,
    open_store,
    write_rows,
    write_strings,
)

FULL_RUN = 21_806 + 80_000 + 559
SIZE = 768


def planted_hashes(n: int, planted: int, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """``n`` random hashes as a train set and ``planted`` copies of some of them, 0-4 bits off, as a test set."""
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    sources = rng.choice(n, size=planted, replace=False)
    copies = hashes[sources].copy()
    for row in range(planted):
        for bit in rng.choice(64, size=rng.integers(0, 5), replace=False):
            copies[row] ^= np.uint64(1 << int(bit))
    train = pd.DataFrame({"ID": [f"train{row:06d}" for row in range(n)], "hash": hashes})
    test = pd.DataFrame({"ID": [f"test{row:06d}" for row in range(planted)], "hash": copies})
    return {"train": train, "test": test}


def bench_grouping(n: int, planted: int) -> None:
    hashes = planted_hashes(n, planted, np.random.default_rng(0))
    start = time.perf_counter()
    groups = find_duplicate_groups(hashes, DEFAULT_MAX_DISTANCE)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    find_duplicate_groups(hashes, DEFAULT_MAX_DISTANCE)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total = n + planted
    print(f"find_duplicate_groups, {total:,} hashes, max distance {DEFAULT_MAX_DISTANCE}:")
    pairs_per_second = total * (total - 1) / 2 / seconds
    print(f"  {seconds:.1f} s ({pairs_per_second / 1e6:.0f} M pairs/s), peak traced {peak / 2**20:.0f} MiB")
    print(f"  {groups['group'].nunique()} groups, {len(groups)} images ({planted} planted copies)")
    print(f"  full run ({FULL_RUN:,} hashes): about {seconds * (FULL_RUN / total) ** 2:.0f} s")


def write_store(path: Path, n_images: int) -> None:
    """A store of ``n_images`` distinct 768 px images: the 8 D4 variants of each rendered field."""
    n_fields = -(-n_images // 8)
    with atomic_store(path, "images", size=SIZE, channels=list(CHANNELS)) as group:
        write_strings(group, "ids", [f"img{row:05d}" for row in range(n_images)])
        array = group.create_array(
            "images",
            shape=(n_images, 4, SIZE, SIZE),
            dtype="uint8",
            chunks=(1, 4, SIZE, SIZE),
            **codec_options(DEFAULT_CODEC, "images"),
            config=CHUNK_WRITE_CONFIG,
        )
        row = 0
        for seed in range(n_fields):
            rng = np.random.default_rng(seed)
            channels = render_field(rng, SIZE, SIZE, int(rng.integers(10, 30)), [int(rng.integers(0, 18))]).channels
            for variant in range(8):
                if row < n_images:
                    image = np.rot90(channels, variant % 4, axes=(1, 2))
                    image = image[:, :, ::-1] if variant >= 4 else image
                    write_rows([(array, row, np.ascontiguousarray(image))])
                    row += 1


def bench_hashing(n_images: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shard-0.zarr"
        write_store(path, n_images)
        start = time.perf_counter()
        table = hash_images_store([path])
        seconds = time.perf_counter() - start
        images = [np.asarray(image) for image in _first_images(path, 64)]
    start = time.perf_counter()
    for image in images:
        image_hash(image)
    hash_only = len(images) / (time.perf_counter() - start)
    rate = len(table) / seconds
    print(f"hash_images_store, {len(table)} images of {SIZE} px in one store:")
    print(f"  {rate:.0f} images/s read and hashed; {hash_only:.0f} images/s hashing alone (from memory)")
    print(f"  {table['hash'].nunique()} distinct hashes")
    print(f"  full run ({FULL_RUN:,} images), one process: about {FULL_RUN / rate / 60:.0f} min")


def _first_images(path: Path, count: int) -> list[np.ndarray]:
    array = open_store(path, "images")["images"]
    return [array[row] for row in range(min(count, array.shape[0]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-hashes", type=int, default=100_000)
    parser.add_argument("--planted", type=int, default=300)
    parser.add_argument("--n-images", type=int, default=320)
    args = parser.parse_args()
    bench_grouping(args.n_hashes, args.planted)
    bench_hashing(args.n_images)
    print(f"max RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
