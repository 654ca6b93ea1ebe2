import pickle

import numpy as np
import pytest
from conftest import store_paths
from zarr.codecs import BloscCodec

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.stores import (
    CODECS,
    ShardedArray,
    atomic_store,
    codec_options,
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


@pytest.mark.parametrize(
    "codec",
    [
        *({"codec": name, **codec_options(name, kind)} for name in CODECS for kind in ("images", "crops")),
        # the codec of hpa-pipeline < 0.3 (and, as "dense", 0.3.0's): stores written then still read
        {"codec": "lz4 < 0.3", "compressors": (BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle"),)},
    ],
    ids=lambda codec: codec["codec"],
)
def test_stores_of_any_codec_read_back_every_value(tmp_path, codec):
    options = {key: value for key, value in codec.items() if key != "codec"}
    rng = np.random.default_rng(0)
    # smooth gradients plus noise and a zero background: what delta and bit shuffle work on
    images = (np.add.outer(np.arange(48), np.arange(48))[None, None] + rng.integers(0, 9, (5, 4, 48, 48))).astype(
        np.uint8
    )
    images[:, :, :10] = 0
    with atomic_store(tmp_path / "a.zarr", "images") as group:
        array = group.create_array("images", shape=images.shape, dtype="uint8", chunks=(1, 4, 48, 48), **options)
        array[...] = images
    reader = ShardedArray([tmp_path / "a.zarr"], "images", "images")
    for row in (3, 0, 4, 1, 2):  # random access, as the loaders read
        assert np.array_equal(reader[row], images[row])


def test_unknown_codec_name_is_named():
    with pytest.raises(ValueError, match=r"unknown store codec 'densest' \(expected one of fast, dense\)"):
        codec_options("densest", "images")
