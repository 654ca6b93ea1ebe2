"""Near-duplicate images across datasets by perceptual hash (the 2018 HPA winners' phash step).

The same field of view can appear in the Kaggle train set, the public HPA images and the test set,
resized or re-encoded. Each image gets a 64-bit perceptual hash; images whose hashes differ in at most
``max_distance`` bits are linked, and linked images form a group (transitively). The fold stage keeps a
group in one fold, and may drop training images that duplicate test images.

Tables: the hash table (CSV ``ID,hash``, hash as 16 hex digits, one per dataset) and the duplicate
groups (CSV ``group,dataset,ID,distance``: only images with at least one near duplicate).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.progress import progress

#: Channels averaged into the hashed image: red (microtubules), blue (nuclei), yellow (ER). They show
#: the cells themselves whatever protein is stained, so they are bright in every image and define the
#: field; green (the protein) is dim or empty in many images, where its hash would be mostly noise.
REFERENCE_CHANNELS = (0, 2, 3)
#: Recommended link threshold in bits of 64 (tests/test_duplicates.py): resized, JPEG re-encoded and
#: 16-bit copies measured 0-2 bits from the original, fields shifted or cropped by 1-2% 2-8 bits, distinct
#: fields 16 or more. Among 102,000 uniformly random hashes it expects 0.02 chance pairs (8 bits: 1.5).
DEFAULT_MAX_DISTANCE = 6
#: Side the composite is reduced to before ``imagehash.phash`` (which reduces it to 32x32).
_HASHED_SIDE = 128
HASH_COLUMNS = ("ID", "hash")
#: Rows x columns of one tile of the pairwise comparison: 2.6 MB of work arrays, which stay in the CPU's
#: cache (2.5x faster than 2048 x 4096 tiles, benchmarks/bench_duplicates.py).
_BLOCK_ROWS, _BLOCK_COLUMNS = 256, 1024
#: Found links kept before they are collapsed to one link per image (bounds memory on blank images).
_MAX_PENDING_LINKS = 4_000_000
_HEX_HASH = re.compile(r"[0-9a-fA-F]{16}")


def image_hash(image: np.ndarray) -> int:
    """The 64-bit perceptual hash (``imagehash.phash``, 8x8 DCT bits) of one image's reference channels.

    Args:
        image: (4, H, W) uint8, channels red, green, blue, yellow.

    Returns:
        The hash as an int in [0, 2**64), bits in ``imagehash``'s order (its hex string is the same).
    """
    if image.ndim != 3 or image.shape[0] != 4 or image.dtype != np.uint8:
        raise ValueError(f"expected a (4, H, W) uint8 image, got {image.shape} {image.dtype}")
    red, blue, yellow = (image[channel].astype(np.uint16) for channel in REFERENCE_CHANNELS)
    composite = ((red + blue + yellow + 1) // 3).astype(np.uint8)  # the rounded mean
    if min(composite.shape) > _HASHED_SIDE:
        # phash only sees a 32x32 reduction; OpenCV's area reduction first is 9x faster than Pillow's
        # Lanczos from 768 px and changes a hash by 0-2 bits, the same for every image.
        composite = cv2.resize(composite, (_HASHED_SIDE, _HASHED_SIDE), interpolation=cv2.INTER_AREA)
    bits = imagehash.phash(Image.fromarray(composite), hash_size=8).hash
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def hash_images_store(store_paths: Sequence[str | Path]) -> pd.DataFrame:
    """Hash every image of resized images stores, one image in memory at a time.

    Args:
        store_paths: images stores (``results/{dataset}/images_{size}/shard-k.zarr``), in order.

    Returns:
        A table with columns ``ID`` (str) and ``hash`` (uint64), one row per image in store order.
    """
    stores = [(Path(path), open_store(path, "images")) for path in store_paths]
    total = sum(group["images"].shape[0] for _, group in stores)
    ids: list[str] = []
    hashes = np.zeros(total, dtype=np.uint64)

    def images() -> Iterator[tuple[str, np.ndarray]]:
        for path, group in stores:
            store_ids = read_strings(group, "ids")
            array = group["images"]
            if len(store_ids) != array.shape[0]:
                raise InputDataError(f"{path}: {len(store_ids)} ids but {array.shape[0]} images")
            if array.ndim != 4 or array.shape[1] != 4 or array.dtype != np.uint8:
                raise InputDataError(f"{path}: images are {array.shape} {array.dtype}, expected (n, 4, S, S) uint8")
            for row, image_id in enumerate(store_ids):
                yield image_id, array[row]

    for row, (image_id, image) in enumerate(progress(images(), "hash", total=total, unit="img")):
        ids.append(image_id)
        hashes[row] = image_hash(image)
    return pd.DataFrame({"ID": ids, "hash": hashes})


def write_hash_table(path: str | Path, table: pd.DataFrame) -> None:
    """Write a hash table (``ID``, ``hash``) as CSV atomically, each hash as 16 hex digits."""
    with atomic_file(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HASH_COLUMNS)
        writer.writerows((image_id, f"{int(value):016x}") for image_id, value in zip(table["ID"], table["hash"]))


def read_hash_table(path: str | Path) -> pd.DataFrame:
    """Read a hash table written by :func:`write_hash_table`.

    Returns:
        Columns ``ID`` (str) and ``hash`` (uint64).

    Raises:
        InputDataError: the file is missing, lacks a column, or has a bad hash, an empty or repeated ID
            (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing hash table {path} (run hash-images first)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in HASH_COLUMNS if column not in table.columns]
    if missing:
        raise InputDataError(f"{path}: not a hash table (missing column(s) {', '.join(missing)})")
    hashes = np.zeros(len(table), dtype=np.uint64)
    seen: dict[str, int] = {}
    # line numbers as an editor shows them: the header is line 1
    for line, (image_id, text) in enumerate(zip(table["ID"], table["hash"]), start=2):
        if not image_id:
            raise InputDataError(f"{path}, line {line}: empty ID")
        if image_id in seen:
            raise InputDataError(f"{path}, line {line}: ID {image_id} repeats line {seen[image_id]}")
        seen[image_id] = line
        if not _HEX_HASH.fullmatch(text):
            raise InputDataError(f"{path}, line {line} (ID {image_id}): hash {text!r} is not 16 hex digits")
        hashes[line - 2] = int(text, 16)
    return pd.DataFrame({"ID": table["ID"].to_numpy(dtype=object), "hash": hashes})


def _near_pairs(hashes: np.ndarray, max_distance: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (i, j, distance) arrays of every pair i < j whose hashes differ in at most ``max_distance`` bits."""
    n = len(hashes)
    xor = np.empty((_BLOCK_ROWS, _BLOCK_COLUMNS), dtype=np.uint64)
    counts = np.empty((_BLOCK_ROWS, _BLOCK_COLUMNS), dtype=np.uint8)
    for row_start in range(0, n, _BLOCK_ROWS):
        rows = hashes[row_start : row_start + _BLOCK_ROWS]
        # only columns from the block's first row on: each pair is compared once
        for column_start in range(row_start, n, _BLOCK_COLUMNS):
            columns = hashes[column_start : column_start + _BLOCK_COLUMNS]
            x, c = xor[: len(rows), : len(columns)], counts[: len(rows), : len(columns)]
            np.bitwise_xor(rows[:, None], columns[None, :], out=x)
            np.bitwise_count(x, out=c)
            i, j = np.nonzero(c <= max_distance)
            distance = c[i, j]
            i, j = i + row_start, j + column_start
            keep = j > i  # the tile on the diagonal also holds each row against itself and earlier rows
            if keep.any():
                yield i[keep], j[keep], distance[keep]


def _components(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` nodes linked by the edges ``first[k]``-``second[k]``."""
    graph = coo_matrix((np.ones(len(first), dtype=bool), (first, second)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _first_of_component(labels: np.ndarray) -> np.ndarray:
    """For each component label, the smallest node carrying it."""
    first = np.full(labels.max() + 1, len(labels), dtype=np.int64)
    np.minimum.at(first, labels, np.arange(len(labels)))
    return first


def find_duplicate_groups(hashes: Mapping[str, pd.DataFrame], max_distance: int = DEFAULT_MAX_DISTANCE) -> pd.DataFrame:
    """Group the images whose hashes lie within ``max_distance`` bits, transitively, across datasets.

    Compares every pair in small tiles, so memory stays bounded (a few MB plus the links found) and
    100,000 hashes take tens of seconds (benchmarks/bench_duplicates.py).

    Args:
        hashes: dataset name -> its hash table (``ID``, ``hash``), e.g. train, extra sets and test.
        max_distance: largest Hamming distance (bits of 64) between two linked images.

    Returns:
        One row per image that has a near duplicate: ``group`` (0.. in order of each group's first
        image, taking datasets in the given order and IDs sorted), ``dataset``, ``ID`` and
        ``distance`` (bits to its nearest image in the group). Rows sorted by group, dataset order, ID.
    """
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be in 0..64 bits, got {max_distance}")
    names, ids, values = [], [], []
    for position, (dataset, table) in enumerate(hashes.items()):
        repeated = table["ID"][table["ID"].duplicated()]
        if len(repeated):
            raise InputDataError(f"dataset {dataset}: ID {repeated.iloc[0]} appears more than once")
        table = table.sort_values("ID", kind="stable")  # order (and so group numbers) independent of input order
        names.append(np.full(len(table), position, dtype=np.int32))
        ids.append(table["ID"].to_numpy(dtype=object))
        values.append(table["hash"].to_numpy(dtype=np.uint64))
    datasets = list(hashes)
    dataset_of = np.concatenate(names) if names else np.zeros(0, np.int32)
    id_of = np.concatenate(ids) if ids else np.zeros(0, object)
    all_hashes = np.concatenate(values) if values else np.zeros(0, np.uint64)
    n = len(all_hashes)

    nearest = np.full(n, 255, dtype=np.uint8)
    first, second = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    pending = 0
    for i, j, distance in _near_pairs(all_hashes, max_distance):
        np.minimum.at(nearest, i, distance)
        np.minimum.at(nearest, j, distance)
        first.append(i)
        second.append(j)
        pending += len(i)
        if pending > _MAX_PENDING_LINKS:
            # replace the links by one per linked image (to its component's label node): same groups
            labels = _components(n, np.concatenate(first), np.concatenate(second))
            linked = np.flatnonzero(nearest < 255)
            first, second, pending = [linked], [_first_of_component(labels)[labels[linked]]], len(linked)

    linked = nearest < 255
    labels = _components(n, np.concatenate(first), np.concatenate(second))[linked]
    # group numbers in order of first member: nodes are already in (dataset order, ID) order
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    group = np.argsort(np.argsort(first_index))[inverse]
    order = np.lexsort((np.flatnonzero(linked), group))
    nodes = np.flatnonzero(linked)[order]
    return pd.DataFrame(
        {
            "group": group[order].astype(np.int64),
            "dataset": [datasets[position] for position in dataset_of[nodes]],
            "ID": id_of[nodes],
            "distance": nearest[nodes].astype(np.int64),
        }
    )


def duplicates_of_test(groups: pd.DataFrame, test_dataset: str = "test") -> set[tuple[str, str]]:
    """The (dataset, ID) of every non-test image that shares a group with a test image.

    Args:
        groups: a table of :func:`find_duplicate_groups` or :func:`read_duplicate_groups`.
        test_dataset: the test set's dataset name.
    """
    with_test = set(groups.loc[groups["dataset"] == test_dataset, "group"])
    rows = groups[groups["group"].isin(with_test) & (groups["dataset"] != test_dataset)]
    return set(zip(rows["dataset"], rows["ID"]))


def summarize_groups(groups: pd.DataFrame, test_dataset: str = "test") -> dict[str, int]:
    """Counts for the log: groups, images in groups, groups spanning datasets, images duplicating test."""
    spanning = groups.groupby("group")["dataset"].nunique() if len(groups) else pd.Series(dtype=int)
    return {
        "groups": int(groups["group"].nunique()),
        "images": len(groups),
        "groups_across_datasets": int((spanning > 1).sum()),
        "duplicates_of_test": len(duplicates_of_test(groups, test_dataset)),
    }
