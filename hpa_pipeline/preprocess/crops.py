"""Stage 4: one 8-channel crop per cell, written to a sharded Zarr array.

Per cell and per channel (red, green, blue, yellow) two crops, other cells and background zeroed:
A, a window of the crop size at native scale centred on the nucleus (the blue-weighted centroid), and
B, the cell's bounding box scaled so that its longer side fills the crop, pasted in the centre. The
channel layout is the original's: R_A, R_B, G_A, G_B, B_A, B_B, Y_A, Y_B.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.stores import (
    CHUNK_WRITE_CONFIG,
    DEFAULT_CODEC,
    atomic_store,
    codec_options,
    open_store,
    read_strings,
    write_strings,
    write_table,
)
from hpa_pipeline.progress import progress

#: Cells per Zarr shard file: about 19 MB of raw crops at 192², few enough files for a million cells.
CELLS_PER_SHARD = 64
BLUE = 2


def crop_cells_of_image(image: np.ndarray, labels: np.ndarray, instances: np.ndarray, crop_size: int) -> np.ndarray:
    """Cut the 8-channel crops of the given cells of one image.

    Args:
        image: (4, S, S) uint8, channels red, green, blue, yellow.
        labels: (S, S) cell labels at the same size.
        instances: mask values of the cells to crop, in output order; each must have pixels.
        crop_size: side C of the crops.

    Returns:
        (len(instances), 8, C, C) uint8 crops.
    """
    crops = np.zeros((len(instances), 8, crop_size, crop_size), dtype=np.uint8)
    if len(instances) == 0:
        return crops
    slices = ndimage.find_objects(labels, max_label=int(instances.max()))
    height, width = labels.shape
    half = crop_size // 2
    for row, k in enumerate(instances):
        window = slices[k - 1]
        if window is None:
            raise InputDataError(f"cell {k} has no pixels at {height}x{width}")
        cell = labels[window] == k
        y0, x0 = window[0].start, window[1].start
        cell_pixels = image[:, window[0], window[1]] * cell  # (4, h, w), other cells and background zeroed
        # centre = blue-weighted centroid, truncated as in the original; a cell without any blue signal
        # uses its plain centroid (the original fell back to the image corner)
        weights = cell_pixels[BLUE].astype(np.float64)
        if weights.sum() <= 0:
            weights = cell.astype(np.float64)
        total = weights.sum()
        center_y = int(y0 + (weights.sum(axis=1) @ np.arange(weights.shape[0])) / total)
        center_x = int(x0 + (weights.sum(axis=0) @ np.arange(weights.shape[1])) / total)
        # crop A: rows center - C/2 + 1 ... center + C/2, zero-padded outside the image
        top, left = center_y - half + 1, center_x - half + 1
        src_y0, src_y1 = max(top, 0), min(top + crop_size, height)
        src_x0, src_x1 = max(left, 0), min(left + crop_size, width)
        if src_y0 < src_y1 and src_x0 < src_x1:
            in_cell = labels[src_y0:src_y1, src_x0:src_x1] == k
            crops[row, 0::2, src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left] = (
                image[:, src_y0:src_y1, src_x0:src_x1] * in_cell
            )
        # crop B: whole cell, longer side scaled to C, centred
        box_height, box_width = cell.shape
        ratio = crop_size / max(box_height, box_width)
        new_height = min(max(int(box_height * ratio), 1), crop_size)
        new_width = min(max(int(box_width * ratio), 1), crop_size)
        offset_y, offset_x = (crop_size - new_height) // 2, (crop_size - new_width) // 2
        # cv2 resizes up to 4 channels at once when they are interleaved (H, W, C); cv2.merge
        # interleaves them ~20x faster than a numpy transpose copy
        scaled = cv2.resize(cv2.merge(list(cell_pixels)), (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        crops[row, 1::2, offset_y : offset_y + new_height, offset_x : offset_x + new_width] = scaled.reshape(
            new_height, new_width, 4
        ).transpose(2, 0, 1)
    return crops


def crop_shard(
    images_path: str | Path,
    masks_path: str | Path,
    cells_path: str | Path,
    crop_size: int,
    out_path: str | Path,
    codec: str = DEFAULT_CODEC,
) -> None:
    """Write the crops of every cell of a shard, in cell-table order.

    The store holds ``crops`` (n_cells, 8, C, C) uint8 (one Zarr chunk per cell, CELLS_PER_SHARD cells
    per file, encoded with ``codec``, a name in :data:`hpa_pipeline.io.stores.CODECS`), the cell index
    ``image_index`` and ``instance``, and per image ``ids`` and ``offsets``.
    """
    crop_codec = codec_options(codec, "crops")
    images = open_store(images_path, "images")
    masks = open_store(masks_path, "masks_resized")
    table = read_cell_table(cells_path)
    for name, group in ((images_path, images), (masks_path, masks)):
        if read_strings(group, "ids") != table.ids:
            raise InputDataError(f"{name} and {cells_path} hold different images (rebuild the shard)")
    size = int(images.attrs["size"])
    if int(masks.attrs["size"]) != size:
        raise InputDataError(f"{images_path} is {size} px but {masks_path} is {masks.attrs['size']} px")
    n_cells = table.n_cells
    with atomic_store(out_path, "crops", crop_size=crop_size, image_size=size) as group:
        write_strings(group, "ids", table.ids)
        write_table(group, "offsets", table.offsets)
        write_table(group, "image_index", table.image_of_cell().astype(np.int32))
        write_table(group, "instance", table.instance)
        crops = group.create_array(
            "crops",
            shape=(n_cells, 8, crop_size, crop_size),
            dtype="uint8",
            chunks=(1, 8, crop_size, crop_size),
            shards=(CELLS_PER_SHARD, 8, crop_size, crop_size),
            **crop_codec,
            config=CHUNK_WRITE_CONFIG,
        )
        # whole shard files are written at once: a partial shard write would re-read and re-encode it
        pending: list[np.ndarray] = []
        pending_cells = 0
        written = 0
        image_rows, mask_rows = images["images"], masks["masks"]  # opened once, not per image
        for row in progress(range(len(table.ids)), "crop", total=len(table.ids), unit="img"):
            pending.append(crop_cells_of_image(image_rows[row], mask_rows[row], table.instances_of(row), crop_size))
            pending_cells += len(pending[-1])
            while pending_cells >= CELLS_PER_SHARD or (row == len(table.ids) - 1 and pending_cells):
                block = np.concatenate(pending)
                count = min(CELLS_PER_SHARD, len(block))
                crops[written : written + count] = block[:count]
                written += count
                pending = [block[count:]]
                pending_cells = len(pending[0])
        if written != n_cells:
            raise AssertionError(f"wrote {written} crops for {n_cells} cells")
