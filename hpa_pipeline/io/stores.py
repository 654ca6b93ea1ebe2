"""The pipeline's Zarr v3 stores: atomic writing, shared codecs and the per-image ID arrays.

Every stage writes its whole store into a hidden temporary sibling and renames it into place only
when the stage has succeeded, so an interrupted job never leaves a store that looks complete.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.codecs.numcodecs import Delta
from zarr.core.sync import sync

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import replace_directory

# The dense codec's numcodecs filter is stored as "numcodecs.delta": zarr-python (>= 3.1.3 with numcodecs) reads
# it, but warns on every array it opens that other Zarr implementations might not; that is known and accepted.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")

#: The chunk codecs of the uint8 stores (images, crops), lossless, chosen per store by who reads it.
#: Zarr records the codec in each array's metadata, so every store reads back whatever it was written
#: with: a setting changes the bytes on disk, never the values. Figures: docs/scale.md.
#:
#: "fast", for the stores the training loaders read at random (one chunk per image or cell). Images:
#: Blosc Zstandard 1 with bit shuffle in 1 MiB blocks: the bit planes of an 8-bit image compress
#: apart (the high ones are nearly constant), and 1 MiB blocks instead of Blosc's default ~32-64 KiB
#: give Zstandard the context it needs. Real fields: 1.08x (768 px) / 1.11x (1536 px) the original's
#: PNGs; a CAM loader sample costs 0.97-1.11x the CPU it did with 0.2's lz4 (1.36x the PNGs), 0.3.0's
#: delta 1.3-1.6x. Crops: Zstandard 1 inside Blosc, one block per crop: the same bytes as plain
#: Zstandard 1 (0.8x lz4's), but the crop stage runs 15-25 % faster than with plain Zstandard at
#: level 1 (0.3.0) or -3 (measured; Blosc releases the GIL, numcodecs' Zstd seemingly does not).
#:
#: "dense", for stores written once and read once: a horizontal delta (PNG's "sub" predictor) before
#: Zstandard 1, as small as the PNGs (1.01x), but the delta's decoding, a cumulative sum, costs ~6 ms
#: per 768 px image, about three times the fast codec's decoding: the cost that starves a GPU's loader.
CODECS: dict[str, dict[str, dict[str, tuple]]] = {
    "fast": {
        "images": {"compressors": (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", blocksize=2**20),)},
        "crops": {"compressors": (BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle", blocksize=2**20),)},
    },
    "dense": {
        kind: {"filters": (Delta(dtype="u1"),), "compressors": (ZstdCodec(level=1),)} for kind in ("images", "crops")
    },
}
#: Every images and crops store of the workflow is read at random by a training loader.
DEFAULT_CODEC = "fast"


def codec_options(codec: str, kind: str) -> dict[str, tuple]:
    """The ``filters`` and ``compressors`` for zarr's ``create_array`` of a ``kind`` store under ``codec``.

    Raises:
        ValueError: an unknown codec name.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown store codec {codec!r} (expected one of {', '.join(CODECS)})")
    return {"filters": (), **CODECS[codec][kind]}


#: Label masks are uint16 with long runs: byte shuffle separates the (mostly zero) high bytes. Already
#: 0.74x (768 px) and 0.90x (1536 px) the original's 8-bit mask PNGs and ~1% of the images' bytes;
#: Blosc zstd clevel 3 would save 10-25% of that at a slower write, not worth a change (docs/scale.md).
MASK_COMPRESSORS = (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),)
#: Small tables (cell index, predictions).
TABLE_COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)

#: Zarr skips chunks equal to the fill value by default, and that check costs more than writing a
#: 9 MB image chunk (43 ms vs 6 ms); our chunks are whole images or cells, so always write them.
CHUNK_WRITE_CONFIG = {"write_empty_chunks": True}

FORMAT_VERSION = 1


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


@contextmanager
def atomic_store(path: str | Path, kind: str, **attrs: Any) -> Iterator[zarr.Group]:
    """Create a Zarr group at a temporary path and move it to ``path`` when the block succeeds.

    Args:
        path: final location of the store (a directory ending in ``.zarr``).
        kind: what the store holds ("images", "masks", "cells", ...), checked by readers.
        **attrs: further attributes saved on the root group.

    Yields:
        The writable root group. On an exception the temporary store is deleted and nothing is left
        at ``path``.
    """
    path = Path(path)
    partial = _partial_path(path)
    if partial.exists():  # left behind by a killed job
        shutil.rmtree(partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(partial, mode="w", zarr_format=3)
    group.attrs.update({"kind": kind, "format_version": FORMAT_VERSION, **attrs})
    try:
        yield group
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_directory(partial, path)


def open_store(path: str | Path, kind: str) -> zarr.Group:
    """Open a finished store read-only and check that it holds ``kind``.

    Raises:
        InputDataError: the store is missing, unreadable or of another kind.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputDataError(f"missing Zarr store {path} (run the stage that writes it first)")
    group = zarr.open_group(path, mode="r", zarr_format=3)
    found = group.attrs.get("kind")
    if found != kind:
        raise InputDataError(f"{path}: expected a store of {kind!r}, found {found!r}")
    return group


def write_strings(group: zarr.Group, name: str, values: list[str] | np.ndarray) -> None:
    """Store a 1-D array of strings (image IDs)."""
    values = np.asarray(values, dtype=str)
    array = group.create_array(name, shape=values.shape, dtype=str, chunks=(max(len(values), 1),))
    if len(values):
        array[:] = values


def read_strings(group: zarr.Group, name: str) -> list[str]:
    """Read a 1-D array of strings written by :func:`write_strings`."""
    array = group[name]
    return [str(value) for value in array[:]] if array.shape[0] else []


def write_table(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """Store a small numeric array in a single chunk."""
    values = np.ascontiguousarray(values)
    chunks = tuple(max(extent, 1) for extent in values.shape)
    array = group.create_array(
        name, shape=values.shape, dtype=values.dtype, chunks=chunks, compressors=TABLE_COMPRESSORS
    )
    if values.size:
        array[...] = values


def write_rows(writes: list[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write several rows (whole chunks) of several arrays in one trip through Zarr's event loop.

    One trip per image instead of one per array makes the resize stage's writes about 40% cheaper
    (benchmarks/bench_preprocess.py), and the chunks are compressed concurrently.
    """

    async def write_all() -> None:
        await asyncio.gather(*(array.async_array.setitem(row, value) for array, row, value in writes))

    sync(write_all())


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
