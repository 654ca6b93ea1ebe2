"""The cell table: which cells each image has, the one structure every stage indexes cells by.

Cell identity is (dataset, image ID, mask value): an image is keyed by its dataset and ID (see
:meth:`CellTable.image_keys`), so that sets from different sources are never joined by ID alone. A table
lists images in canonical order; the cells of image i are rows ``offsets[i]:offsets[i + 1]`` of every
per-cell array, in ascending mask value. The ``cells`` stores (``results/{dataset}/cells/shard-k.zarr``,
written by the mask-resize stage, with the dataset as an attribute) add each cell's geometry at the
original resolution; prediction stores carry the identity part only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.stores import open_store, read_strings

#: Per-image geometry arrays of a ``cells`` store.
IMAGE_GEOMETRY = ("source_shape",)
#: Per-cell geometry arrays of a ``cells`` store (at the original image resolution).
CELL_GEOMETRY = ("bbox", "area", "touches_edge")


@dataclass
class CellTable:
    """The cells of a sequence of images.

    Attributes:
        ids: (n,) image IDs.
        datasets: (n,) the dataset of each image (``train``, ``test`` or an extra set's name).
        offsets: (n + 1,) int64; the cells of image i are rows ``offsets[i]:offsets[i + 1]``.
        instance: (n_cells,) int32 mask values, ascending within an image.
        source_shape: (n, 2) original (height, width) per image, or None (identity-only table).
        bbox: (n_cells, 4) int32 y0, x0, y1, x1 (end exclusive), or None.
        area: (n_cells,) int64 pixel count, or None.
        touches_edge: (n_cells,) bool, a pixel in the first or last row or column, or None.
    """

    ids: list[str]
    offsets: np.ndarray
    instance: np.ndarray
    source_shape: np.ndarray | None = None
    bbox: np.ndarray | None = None
    area: np.ndarray | None = None
    touches_edge: np.ndarray | None = None
    datasets: list[str] = field(kw_only=True)

    def __post_init__(self) -> None:
        if len(self.datasets) != len(self.ids):
            raise ValueError(f"{len(self.datasets)} dataset names for {len(self.ids)} images")

    @classmethod
    def empty(cls) -> CellTable:
        return cls([], np.zeros(1, np.int64), np.zeros(0, np.int32), datasets=[])

    def image_keys(self) -> list[tuple[str, str]]:
        """(dataset, image ID) of every image: the key that joins tables and predictions."""
        return list(zip(self.datasets, self.ids, strict=True))

    @property
    def n_cells(self) -> int:
        return int(self.offsets[-1])

    def instances_of(self, row: int) -> np.ndarray:
        """Mask values of the cells of image ``row``, ascending."""
        return self.instance[self.offsets[row] : self.offsets[row + 1]]

    def image_of_cell(self) -> np.ndarray:
        """(n_cells,) row of each cell's image."""
        return np.repeat(np.arange(len(self.ids)), np.diff(self.offsets))

    def cell_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the cell axis of every cell of the images ``rows``, image by image."""
        if not len(rows):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.offsets[row], self.offsets[row + 1]) for row in rows]).astype(np.int64)

    def subset(self, rows: np.ndarray) -> CellTable:
        """The table of the images ``rows``, in that order (geometry included where present)."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = np.diff(self.offsets)[rows]
        cell_rows = self.cell_rows(rows)
        return CellTable(
            [self.ids[int(row)] for row in rows],
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            self.instance[cell_rows].astype(np.int32),
            datasets=[self.datasets[int(row)] for row in rows],
            **{name: None if getattr(self, name) is None else getattr(self, name)[rows] for name in IMAGE_GEOMETRY},
            **{name: None if getattr(self, name) is None else getattr(self, name)[cell_rows] for name in CELL_GEOMETRY},
        )

    def identity(self) -> CellTable:
        """The same cells without geometry."""
        return CellTable(self.ids, self.offsets, self.instance, datasets=self.datasets)


def concat_cell_tables(tables: Sequence[CellTable]) -> CellTable:
    """Join tables image-wise; geometry is kept only when every table has it."""
    if not tables:
        return CellTable.empty()
    offsets = [np.zeros(1, dtype=np.int64)]
    for table in tables:
        offsets.append(table.offsets[1:] + offsets[-1][-1])
    geometry = {}
    for attribute in fields(CellTable):
        if attribute.name in (*IMAGE_GEOMETRY, *CELL_GEOMETRY):
            parts = [getattr(table, attribute.name) for table in tables]
            geometry[attribute.name] = None if any(part is None for part in parts) else np.concatenate(parts)
    return CellTable(
        [image_id for table in tables for image_id in table.ids],
        np.concatenate(offsets),
        np.concatenate([table.instance for table in tables]).astype(np.int32),
        datasets=[name for table in tables for name in table.datasets],
        **geometry,
    )


def read_cell_table(paths: str | Path | Sequence[str | Path]) -> CellTable:
    """Read the ``cells`` store of one shard, or of several shards joined in the given order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = []
    for path in paths:
        group = open_store(path, "cells")
        if "dataset" not in group.attrs:
            raise InputDataError(f"{path} was written by hpa-pipeline < 0.3 (no dataset attribute): rerun resize_masks")
        ids = read_strings(group, "ids")
        tables.append(
            CellTable(
                ids=ids,
                datasets=[str(group.attrs["dataset"])] * len(ids),
                offsets=group["offsets"][...].astype(np.int64),
                instance=group["instance"][...].astype(np.int32),
                **{name: group[name][...] for name in (*IMAGE_GEOMETRY, *CELL_GEOMETRY)},
            )
        )
    return concat_cell_tables(tables)
