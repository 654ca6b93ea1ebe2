import numpy as np
import pytest
from conftest import store_paths

from hpa_pipeline.io.cells import CellTable, concat_cell_tables, read_cell_table
from hpa_pipeline.io.folds import read_labelled_images
from hpa_pipeline.train.datasets import cell_targets_from_images


def _table(ids, counts, start=1, geometry=True):
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    instance = np.concatenate([np.arange(start, start + n) for n in counts]).astype(np.int32)
    n = int(offsets[-1])
    extra = {}
    if geometry:
        extra = dict(
            source_shape=np.tile([[20, 30]], (len(ids), 1)),
            bbox=np.zeros((n, 4), np.int32),
            area=np.arange(n, dtype=np.int64) * 10,
            touches_edge=np.arange(n) % 2 == 0,
        )
    return CellTable(list(ids), offsets, instance, **extra, datasets=["train"] * len(ids))


def test_subset_keeps_cells_with_their_images_and_geometry():
    table = _table(["a", "b", "c"], [2, 0, 3])
    picked = table.subset(np.array([2, 0]))
    assert picked.ids == ["c", "a"]
    assert picked.offsets.tolist() == [0, 3, 5]
    assert picked.instance.tolist() == [1, 2, 3, 1, 2]
    assert picked.area.tolist() == [20, 30, 40, 0, 10]
    assert picked.source_shape.shape == (2, 2)
    assert table.image_of_cell().tolist() == [0, 0, 2, 2, 2]
    assert table.cell_rows(np.array([2])).tolist() == [2, 3, 4]
    assert table.identity().area is None and table.identity().n_cells == 5


def test_concat_drops_geometry_unless_every_part_has_it():
    joined = concat_cell_tables([_table(["a"], [2]), _table(["b", "c"], [1, 1])])
    assert joined.ids == ["a", "b", "c"] and joined.offsets.tolist() == [0, 2, 3, 4]
    assert joined.area.tolist() == [0, 10, 0, 10]
    assert concat_cell_tables([_table(["a"], [2]), _table(["b"], [1], geometry=False)]).area is None
    assert concat_cell_tables([]).n_cells == 0


def test_read_joins_shards_in_order(demo_stores):
    paths = store_paths(demo_stores, "train", "cells")
    shards = [read_cell_table(path) for path in paths]
    joined = read_cell_table(paths)
    assert joined.ids == shards[0].ids + shards[1].ids
    assert joined.n_cells == sum(shard.n_cells for shard in shards)
    assert joined.bbox.shape == (joined.n_cells, 4) and joined.source_shape.shape == (len(joined.ids), 2)
    np.testing.assert_array_equal(joined.instance, np.concatenate([s.instance for s in shards]))


def test_reading_another_store_kind_names_it(demo_stores):
    from hpa_pipeline.errors import InputDataError

    with pytest.raises(InputDataError, match="crops"):
        read_cell_table(store_paths(demo_stores, "train", "crops_96"))


def test_cell_index_and_labelled_images_agree(demo_stores):
    root = demo_stores["root"]
    images = read_labelled_images([root / "train/index.csv"], [root / "folds/train.csv"])
    cells = read_cell_table(store_paths(demo_stores, "train", "cells"))
    assert cells.ids == images.ids
    assert set(images.folds.tolist()) == {0, 1}
    targets = cell_targets_from_images(cells, images.labels)
    assert targets.shape == (cells.n_cells, 19)
    first_image_cells = slice(cells.offsets[0], cells.offsets[1])
    assert (targets[first_image_cells] == images.labels[0]).all()
    subset = cells.subset(np.array([3, 1]))
    assert subset.ids == [cells.ids[3], cells.ids[1]]
    assert np.array_equal(subset.instances_of(0), cells.instances_of(3))


def test_a_store_knows_its_dataset_and_one_without_asks_for_a_rebuild(demo_stores, tmp_path):
    import shutil

    import zarr

    from hpa_pipeline.errors import InputDataError

    path = store_paths(demo_stores, "train", "cells")[0]
    table = read_cell_table(path)
    assert set(table.datasets) == {"train"} and table.image_keys()[0] == ("train", table.ids[0])
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    group = zarr.open_group(old, mode="r+")
    del group.attrs["dataset"]
    with pytest.raises(InputDataError, match=r"old\.zarr was written by hpa-pipeline < 0\.3.*rerun resize_masks"):
        read_cell_table(old)


def test_tables_need_one_dataset_per_image():
    with pytest.raises(ValueError, match="1 dataset names for 2 images"):
        CellTable(["a", "b"], np.array([0, 1, 2]), np.array([1, 1], np.int32), datasets=["train"])
