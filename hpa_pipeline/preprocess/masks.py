"""Stages 2 and 3: cell label masks of a shard, their resized copies and the cell table.

Cell identity everywhere in the pipeline is (image ID, mask value at the segmentation resolution).
The segmentation store keeps each image's labels at the resolution the configuration asks for (1536
for train, the original size for test, as the 7th-place solution did); the resized masks and the cell
table are derived from it. A cell too small to survive nearest-neighbour shrinking is painted back as
one pixel, so every cell exists at every size and all models predict the same cells.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import read_rgby
from hpa_pipeline.io.masks import read_labels, resize_labels
from hpa_pipeline.io.stores import (
    CHUNK_WRITE_CONFIG,
    MASK_COMPRESSORS,
    atomic_store,
    open_store,
    read_strings,
    write_strings,
    write_table,
)
from hpa_pipeline.progress import progress

log = logging.getLogger(__name__)


def segment_shard(
    image_ids: Sequence[str],
    out_path: str | Path,
    producer: object,
    scale_factor: float,
    image_dir: str | Path | None = None,
    images_store: str | Path | None = None,
) -> None:
    """Segment every image of a shard and write the label masks.

    Args:
        image_ids: the shard's IDs in canonical order.
        out_path: the masks store to write.
        producer: a probability-map producer from :func:`hpa_pipeline.preprocess.segment.create_producer`.
        scale_factor: labelling scale factor (labels are made at 2048·s on the long side).
        image_dir: read the original channel files from here (labels stored at the original size) ...
        images_store: ... or read a resized images store (labels stored at its size).

    The store holds one uint16 array per image, ``labels/{row}``, plus ``ids``, ``source_shape`` (the
    original (height, width)) and ``n_cells``.
    """
    from hpa_pipeline.preprocess.segment import segment_image

    if (image_dir is None) == (images_store is None):
        raise ValueError("give exactly one of image_dir and images_store")
    store = open_store(images_store, "images") if images_store is not None else None
    if store is not None:
        stored_ids = read_strings(store, "ids")
        if stored_ids != list(image_ids):
            raise InputDataError(f"{images_store}: its images are not this shard's images (index changed?)")
        source_shapes = store["source_shape"][:]
    n_images = len(image_ids)
    n_cells = np.zeros(n_images, dtype=np.int32)
    shapes = np.zeros((n_images, 2), dtype=np.int32)
    empty: list[str] = []
    resolution = "original" if store is None else int(store.attrs["size"])
    with atomic_store(
        out_path, "masks", resolution=resolution, scale_factor=scale_factor, backend=producer.name
    ) as group:
        write_strings(group, "ids", list(image_ids))
        labels_group = group.create_group("labels")
        for row, image_id in enumerate(progress(image_ids, "segment", total=n_images, unit="img")):
            if store is None:
                image = read_rgby(image_dir, image_id)
                shapes[row] = image.shape[1:]
            else:
                image = store["images"][row]
                shapes[row] = source_shapes[row]
            labels = segment_image(image, producer, scale_factor)
            n_cells[row] = int(labels.max()) if labels.size else 0
            if n_cells[row] == 0:
                empty.append(image_id)
            array = labels_group.create_array(
                str(row),
                shape=labels.shape,
                dtype="uint16",
                chunks=labels.shape,
                compressors=MASK_COMPRESSORS,
                config=CHUNK_WRITE_CONFIG,
            )
            array[...] = labels
        write_table(group, "source_shape", shapes)
        write_table(group, "n_cells", n_cells)
    if empty:
        log.warning(
            "%d image(s) without any cell (they flow on with an empty cell set): %s",
            len(empty),
            ", ".join(empty[:20]) + (" ..." if len(empty) > 20 else ""),
        )


@dataclass
class CellProperties:
    """Per-cell properties of one label image, at the original image resolution."""

    instance: np.ndarray  # (n,) int32 mask values, ascending
    bbox: np.ndarray  # (n, 4) int32 y0, x0, y1, x1 (end exclusive)
    area: np.ndarray  # (n,) int64 pixel count
    touches_edge: np.ndarray  # (n,) bool: a pixel in the first/last row/column


def cell_properties(labels: np.ndarray, source_shape: tuple[int, int]) -> CellProperties:
    """Measure every cell of a label image, scaled to the original image size.

    When the labels are stored at the original size (test) the figures are exact; otherwise (train,
    labels at 1536) area and box are scaled by the size ratio.

    Args:
        labels: (H, W) label image.
        source_shape: (height, width) of the original image.

    Returns:
        The cells' properties, cells in ascending mask value.
    """
    counts = np.bincount(labels.ravel(), minlength=1)
    instance = np.flatnonzero(counts[1:]).astype(np.int32) + 1
    slices = ndimage.find_objects(labels)
    bbox = np.array(
        [
            [slices[k - 1][0].start, slices[k - 1][1].start, slices[k - 1][0].stop, slices[k - 1][1].stop]
            for k in instance
        ],
        dtype=np.float64,
    ).reshape(-1, 4)
    scale_y = source_shape[0] / labels.shape[0]
    scale_x = source_shape[1] / labels.shape[1]
    bbox[:, [0, 2]] *= scale_y
    bbox[:, [1, 3]] *= scale_x
    bbox[:, :2] = np.floor(bbox[:, :2])
    bbox[:, 2:] = np.ceil(bbox[:, 2:])
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    on_edge = np.zeros(counts.shape[0], dtype=bool)
    on_edge[border] = True
    return CellProperties(
        instance=instance,
        bbox=bbox.astype(np.int32),
        area=np.rint(counts[instance] * scale_y * scale_x).astype(np.int64),
        touches_edge=on_edge[instance],
    )


def resize_labels_keeping_cells(labels: np.ndarray, size: int, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resize a label image to (size, size), painting back any cell that vanished as a single pixel.

    Args:
        labels: (H, W) label image.
        size: target side.
        instance: the cells that must survive (ascending mask values).

    Returns:
        The resized labels and a bool array marking the repaired cells.
    """
    resized = resize_labels(labels, size, size)
    if len(instance) == 0:
        return resized, np.zeros(0, dtype=bool)
    counts = np.bincount(resized.ravel(), minlength=int(instance.max()) + 1)
    repaired = counts[instance] == 0
    if repaired.any():
        scale_y, scale_x = size / labels.shape[0], size / labels.shape[1]
        slices = ndimage.find_objects(labels)
        painted: set[tuple[int, int]] = set()
        for k in instance[repaired]:
            window = slices[k - 1]
            ys, xs = np.nonzero(labels[window] == k)
            # the cell's pixel nearest to its centroid, mapped to the small grid; skip spots taken by
            # another repaired cell so that no repair overwrites another
            order = np.argsort((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2, kind="stable")
            for y, x in zip(ys[order], xs[order]):
                spot = (
                    min(int((y + window[0].start + 0.5) * scale_y), size - 1),
                    min(int((x + window[1].start + 0.5) * scale_x), size - 1),
                )
                if spot not in painted:
                    painted.add(spot)
                    resized[spot] = k
                    break
        log.warning("%d cell(s) vanished at %d px and were kept as one pixel each", int(repaired.sum()), size)
    return resized, repaired


def resize_masks_shard(
    masks_path: str | Path,
    sizes: Sequence[int],
    out_mask_paths: Sequence[str | Path],
    out_cells_path: str | Path,
    dataset: str,
) -> None:
    """Write the shard's masks at every size and its cell table (of images of ``dataset``).

    The cell table (``cells`` store) holds per image ``ids``, ``source_shape`` and ``offsets`` (n + 1) into
    the cell axis, and per cell ``image_index``, ``instance``, ``bbox``, ``area``, ``touches_edge`` (all
    at the original resolution) and, per size S, ``area_S`` (pixels at S) and ``repaired_S``.
    """
    if len(sizes) != len(out_mask_paths):
        raise ValueError(f"got {len(sizes)} sizes but {len(out_mask_paths)} output paths")
    source = open_store(masks_path, "masks")
    image_ids = read_strings(source, "ids")
    source_shapes = source["source_shape"][:]
    n_images = len(image_ids)
    per_image: list[CellProperties] = []
    per_size_area: dict[int, list[np.ndarray]] = {size: [] for size in sizes}
    per_size_repaired: dict[int, list[np.ndarray]] = {size: [] for size in sizes}
    with ExitStack() as stack:
        groups = [
            stack.enter_context(atomic_store(path, "masks_resized", size=int(size)))
            for path, size in zip(out_mask_paths, sizes)
        ]
        arrays = []
        for group, size in zip(groups, sizes):
            write_strings(group, "ids", image_ids)
            arrays.append(
                group.create_array(
                    "masks",
                    shape=(n_images, size, size),
                    dtype="uint16",
                    chunks=(1, size, size),
                    compressors=MASK_COMPRESSORS,
                    config=CHUNK_WRITE_CONFIG,
                )
            )
        for row in progress(range(n_images), "resize masks", total=n_images, unit="img"):
            labels = read_labels(source, row)
            properties = cell_properties(labels, tuple(source_shapes[row]))
            per_image.append(properties)
            for array, size in zip(arrays, sizes):
                resized, repaired = resize_labels_keeping_cells(labels, size, properties.instance)
                array[row] = resized
                counts = np.bincount(resized.ravel(), minlength=int(properties.instance.max(initial=0)) + 1)
                per_size_area[size].append(counts[properties.instance].astype(np.int32))
                per_size_repaired[size].append(repaired)
        with atomic_store(
            out_cells_path,
            "cells",
            sizes=[int(size) for size in sizes],
            mask_resolution=source.attrs["resolution"],
            dataset=dataset,
        ) as cells:
            counts = np.array([len(p.instance) for p in per_image], dtype=np.int64)
            write_strings(cells, "ids", image_ids)
            write_table(cells, "source_shape", source_shapes.astype(np.int32))
            write_table(cells, "offsets", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            write_table(cells, "image_index", np.repeat(np.arange(n_images, dtype=np.int32), counts))
            write_table(cells, "instance", _concat([p.instance for p in per_image], np.int32))
            write_table(cells, "bbox", _concat([p.bbox for p in per_image], np.int32).reshape(-1, 4))
            write_table(cells, "area", _concat([p.area for p in per_image], np.int64))
            write_table(cells, "touches_edge", _concat([p.touches_edge for p in per_image], bool))
            for size in sizes:
                write_table(cells, f"area_{size}", _concat(per_size_area[size], np.int32))
                write_table(cells, f"repaired_{size}", _concat(per_size_repaired[size], bool))


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
