import numpy as np
from conftest import REAL_MASKS, requires_realdata

from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.stores import (
    MASK_COMPRESSORS,
    atomic_store,
    open_store,
    read_strings,
    write_strings,
    write_table,
)
from hpa_pipeline.preprocess.masks import (
    cell_properties,
    resize_labels_keeping_cells,
    resize_masks_shard,
)


def write_masks_store(path, ids, labels, source_shapes):
    """A segmentation store laid out as segment_shard writes it."""
    with atomic_store(path, "masks", resolution="original", scale_factor=1.0, backend="test") as group:
        write_strings(group, "ids", ids)
        sub = group.create_group("labels")
        for row, mask in enumerate(labels):
            array = sub.create_array(
                str(row), shape=mask.shape, dtype="uint16", chunks=mask.shape, compressors=MASK_COMPRESSORS
            )
            array[...] = mask
        write_table(group, "source_shape", np.array(source_shapes, dtype=np.int32))
        write_table(group, "n_cells", np.array([int(m.max()) for m in labels], dtype=np.int32))


def test_cell_properties_at_the_original_resolution():
    labels = np.zeros((10, 10), np.uint16)
    labels[0:3, 2:5] = 4  # touches the top edge
    labels[5:8, 5:9] = 7
    same = cell_properties(labels, (10, 10))
    assert same.instance.tolist() == [4, 7]
    assert same.area.tolist() == [9, 12]
    assert same.touches_edge.tolist() == [True, False]
    assert same.bbox.tolist() == [[0, 2, 3, 5], [5, 5, 8, 9]]
    # labels stored at half the original size: areas x4, boxes x2
    doubled = cell_properties(labels, (20, 20))
    assert doubled.area.tolist() == [36, 48]
    assert doubled.bbox.tolist() == [[0, 4, 6, 10], [10, 10, 16, 18]]


def test_vanished_cell_is_painted_back_as_one_pixel():
    labels = np.zeros((100, 100), np.uint16)
    labels[:, :50] = 1
    labels[:, 50:] = 2
    labels[40:42, 60:62] = 3  # 4 px: gone after shrinking by 10
    resized, repaired = resize_labels_keeping_cells(labels, 10, np.array([1, 2, 3]))
    assert repaired.tolist() == [False, False, True]
    assert (resized == 3).sum() == 1
    y, x = np.argwhere(resized == 3)[0]
    assert (y, x) == (4, 6)
    assert set(np.unique(resized)) == {1, 2, 3}


def test_resize_masks_writes_masks_and_cell_table(tmp_path):
    many = np.zeros((120, 90), np.uint16)  # more than 255 cells, non-square original
    for k in range(300):
        y, x = divmod(k, 15)
        many[y * 6 : y * 6 + 2, x * 6 : x * 6 + 2] = k + 1
    empty = np.zeros((64, 64), np.uint16)
    write_masks_store(tmp_path / "m.zarr", ["many", "empty"], [many, empty], [(120, 90), (64, 64)])
    outs = [tmp_path / "m60.zarr", tmp_path / "m30.zarr"]
    resize_masks_shard(tmp_path / "m.zarr", [60, 30], outs, tmp_path / "cells.zarr", "train")
    table = read_cell_table(tmp_path / "cells.zarr")
    assert table.ids == ["many", "empty"]
    assert table.offsets.tolist() == [0, 300, 300]
    assert table.instance.tolist() == list(range(1, 301))
    assert table.area.tolist() == [4] * 300
    assert table.instances_of(1).tolist() == []
    cells = open_store(tmp_path / "cells.zarr", "cells")
    for out, size in zip(outs, (60, 30)):
        group = open_store(out, "masks_resized")
        assert read_strings(group, "ids") == ["many", "empty"]
        masks = group["masks"][:]
        assert masks.shape == (2, size, size) and masks.dtype == np.uint16
        # every cell survives at every size, also where shrinking would have lost it
        assert set(np.unique(masks[0])) - {0} == set(range(1, 301))
        assert (cells[f"area_{size}"][:] > 0).all()
    assert cells["repaired_30"][:].any()


@requires_realdata
def test_real_mask_round_trip(tmp_path):
    import cv2

    path = sorted(REAL_MASKS.glob("*.png"))[0]
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.uint16)
    write_masks_store(tmp_path / "m.zarr", ["real"], [mask], [mask.shape])
    resize_masks_shard(tmp_path / "m.zarr", [768], [tmp_path / "m768.zarr"], tmp_path / "cells.zarr", "train")
    table = read_cell_table(tmp_path / "cells.zarr")
    counts = np.bincount(mask.ravel())
    assert table.instance.tolist() == np.flatnonzero(counts[1:]).__add__(1).tolist()
    assert table.area.tolist() == counts[table.instance].tolist()
