import pickle

import numpy as np
import pytest
from conftest import store_paths

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.stores import (
    ShardedArray,
    atomic_store,
    open_store,
    read_strings,
    write_strings,
    write_table,
)


def test_store_appears_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "a.zarr"
    with pytest.raises(RuntimeError), atomic_store(path, "demo") as group:
        write_table(group, "x", np.arange(3))
        assert not path.exists()
        raise RuntimeError("killed")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_store_from_a_killed_job_is_replaced(tmp_path):
    path = tmp_path / "a.zarr"
    stale = tmp_path / ".a.zarr.partial"
    stale.mkdir()
    (stale / "junk").write_text("half-written")
    with atomic_store(path, "demo") as group:
        write_strings(group, "ids", ["a", "b_c"])
    assert not stale.exists()
    assert read_strings(open_store(path, "demo"), "ids") == ["a", "b_c"]


def test_existing_store_is_replaced_whole(tmp_path):
    path = tmp_path / "a.zarr"
    with atomic_store(path, "demo") as group:
        write_table(group, "old", np.arange(2))
    with atomic_store(path, "demo") as group:
        write_table(group, "new", np.arange(2))
    group = open_store(path, "demo")
    assert "new" in group and "old" not in group
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_wrong_or_missing_store_is_named(tmp_path):
    with atomic_store(tmp_path / "a.zarr", "images"):
        pass
    with pytest.raises(InputDataError, match="expected a store of 'masks'"):
        open_store(tmp_path / "a.zarr", "masks")
    with pytest.raises(InputDataError, match="missing Zarr store .*b.zarr"):
        open_store(tmp_path / "b.zarr", "masks")


def test_empty_string_array_round_trips(tmp_path):
    with atomic_store(tmp_path / "a.zarr", "demo") as group:
        write_strings(group, "ids", [])
        write_table(group, "n", np.zeros(0, np.int64))
    group = open_store(tmp_path / "a.zarr", "demo")
    assert read_strings(group, "ids") == [] and group["n"].shape == (0,)


def test_sharded_array_reads_across_shards_in_order(demo_stores):
    paths = store_paths(demo_stores, "train", "images_96")
    array = ShardedArray(paths, "images", "images")
    expected = np.concatenate([open_store(path, "images")["images"][:] for path in paths])
    assert len(array) == len(expected) == 10
    for row in (0, 4, 5, 9):
        assert np.array_equal(array[row], expected[row])
    clone = pickle.loads(pickle.dumps(array))  # what a loader worker receives
    assert np.array_equal(clone[7], expected[7])
