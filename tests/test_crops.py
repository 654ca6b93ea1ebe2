from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, write_rgby
from test_masks import write_masks_store
from test_resize import DENSE_CODECS, recorded_codecs

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.stores import open_store
from hpa_pipeline.preprocess.crops import (
    CELLS_PER_SHARD,
    crop_cells_of_image,
    crop_shard,
)
from hpa_pipeline.preprocess.masks import resize_masks_shard
from hpa_pipeline.preprocess.resize import resize_shard


def two_cell_image():
    image = np.zeros((4, 64, 64), np.uint8)
    labels = np.zeros((64, 64), np.uint16)
    labels[10:30, 10:50] = 1  # wide cell
    labels[35:60, 20:40] = 2
    for channel in range(4):
        image[channel][labels == 1] = 10 + channel
        image[channel][labels == 2] = 100 + channel
    image[2][18:22, 38:42] = 250  # cell 1's nucleus, off-centre to the right
    return image, labels


def test_centre_crop_is_native_scale_around_the_nucleus_and_hides_other_cells():
    image, labels = two_cell_image()
    crops = crop_cells_of_image(image, labels, np.array([1, 2]), crop_size=16)
    assert crops.shape == (2, 8, 16, 16) and crops.dtype == np.uint8
    first = crops[0]
    # the blue-weighted centroid of cell 1 is close to its nucleus at (19.5, 39.5) -> pixel (7, 7) of the crop
    ys, xs = np.nonzero(labels == 1)
    blue = image[2][ys, xs].astype(float)
    centre = (int((ys * blue).sum() / blue.sum()), int((xs * blue).sum() / blue.sum()))
    top, left = centre[0] - 7, centre[1] - 7
    window = (slice(top, top + 16), slice(left, left + 16))
    for colour in range(4):
        expected = image[colour][window] * (labels[window] == 1)
        assert np.array_equal(first[2 * colour], expected)
    assert not np.isin(first, [100, 101, 102, 103]).any()  # nothing of cell 2


def test_whole_cell_crop_fills_the_longer_side_and_is_centred():
    image, labels = two_cell_image()
    crops = crop_cells_of_image(image, labels, np.array([1, 2]), crop_size=16)
    wide = crops[0, 1] > 0  # red channel, whole-cell crop of the 20x40 cell: 8x16 after scaling
    rows = np.flatnonzero(wide.any(axis=1))
    cols = np.flatnonzero(wide.any(axis=0))
    assert (cols.min(), cols.max()) == (0, 15)
    assert (rows.min(), rows.max()) == (4, 11)
    # channel layout R_A, R_B, G_A, G_B, B_A, B_B, Y_A, Y_B
    assert set(np.unique(crops[1, 3])) <= {0, 101}
    assert set(np.unique(crops[1, 7])) <= {0, 103}


def test_cell_at_the_border_is_zero_padded():
    image = np.full((4, 20, 20), 50, np.uint8)
    labels = np.zeros((20, 20), np.uint16)
    labels[:5, :5] = 1
    crop = crop_cells_of_image(image, labels, np.array([1]), crop_size=16)[0]
    assert crop[0].sum() == 50 * 25
    assert crop[0][:5].sum() == 0  # window starts above the image


def test_cell_without_blue_uses_its_plain_centroid():
    image = np.zeros((4, 40, 40), np.uint8)
    image[0] = 9
    labels = np.zeros((40, 40), np.uint16)
    labels[20:30, 20:30] = 1
    crop = crop_cells_of_image(image, labels, np.array([1]), crop_size=10)[0]
    assert crop[0].sum() == 9 * 100  # the whole cell fits around its centre


def make_shard(tmp_path: Path, n_images: int, size: int = 64, max_cells: int = 6) -> dict[str, Path]:
    root = tmp_path / "raw"
    labels, ids = [], []
    rng = np.random.default_rng(0)
    for i in range(n_images):
        centers = [
            (int(y), int(x))
            for y, x in rng.integers(12, size - 12, size=(int(rng.integers(0, max_cells)) if max_cells else 0, 2))
        ]
        image, mask = blob_image(size, size, centers, radius=8, seed=i)
        write_rgby(root, f"im{i}", image)
        labels.append(mask)
        ids.append(f"im{i}")
    paths = {name: tmp_path / f"{name}.zarr" for name in ("images", "masks", "resized", "cells", "crops")}
    resize_shard(root, ids, [size], [paths["images"]])
    write_masks_store(paths["masks"], ids, labels, [(size, size)] * n_images)
    resize_masks_shard(paths["masks"], [size], [paths["resized"]], paths["cells"], "train")
    return paths


def test_crop_shard_matches_per_image_crops_in_cell_table_order(tmp_path):
    paths = make_shard(tmp_path, n_images=40)
    crop_shard(paths["images"], paths["resized"], paths["cells"], 16, paths["crops"])
    table = read_cell_table(paths["cells"])
    store = open_store(paths["crops"], "crops")
    crops = store["crops"][:]
    assert crops.shape == (table.n_cells, 8, 16, 16)
    assert table.n_cells > CELLS_PER_SHARD  # several shard files, the last one partial
    assert store["instance"][:].tolist() == table.instance.tolist()
    images = open_store(paths["images"], "images")["images"]
    masks = open_store(paths["resized"], "masks_resized")["masks"]
    for row in range(len(table.ids)):
        expected = crop_cells_of_image(images[row], masks[row], table.instances_of(row), 16)
        assert np.array_equal(crops[table.offsets[row] : table.offsets[row + 1]], expected)
    shard_files = list((paths["crops"] / "crops" / "c").rglob("*"))
    assert len([f for f in shard_files if f.is_file()]) == -(-table.n_cells // CELLS_PER_SHARD)


FAST_CROP_CODECS = [
    {"name": "bytes"},
    {
        "name": "blosc",
        "configuration": {"typesize": 1, "cname": "zstd", "clevel": 1, "shuffle": "noshuffle", "blocksize": 2**20},
    },
]


@pytest.mark.parametrize(("codec", "expected"), [(None, FAST_CROP_CODECS), ("dense", DENSE_CODECS)])
def test_crops_store_codec_training_read_by_default_dense_on_request(tmp_path, codec, expected):
    paths = make_shard(tmp_path, n_images=4)
    crop_shard(
        paths["images"],
        paths["resized"],
        paths["cells"],
        16,
        paths["crops"],
        **({} if codec is None else {"codec": codec}),
    )
    sharding = recorded_codecs(paths["crops"], "crops")
    assert [codec["name"] for codec in sharding] == ["sharding_indexed"]
    assert sharding[0]["configuration"]["codecs"] == expected
    table = read_cell_table(paths["cells"])
    images = open_store(paths["images"], "images")["images"]
    masks = open_store(paths["resized"], "masks_resized")["masks"]
    expected_crops = np.concatenate(
        [crop_cells_of_image(images[row], masks[row], table.instances_of(row), 16) for row in range(len(table.ids))]
    )
    assert np.array_equal(open_store(paths["crops"], "crops")["crops"][:], expected_crops)


def test_crop_shard_with_no_cells_writes_an_empty_store(tmp_path):
    paths = make_shard(tmp_path, n_images=2, max_cells=0)
    assert read_cell_table(paths["cells"]).n_cells == 0
    crop_shard(paths["images"], paths["resized"], paths["cells"], 16, paths["crops"])
    assert open_store(paths["crops"], "crops")["crops"].shape == (0, 8, 16, 16)


def test_mismatched_stores_are_refused(tmp_path):
    paths = make_shard(tmp_path, n_images=3)
    other = make_shard(tmp_path / "other", n_images=2)
    with pytest.raises(InputDataError, match="hold different images"):
        crop_shard(paths["images"], other["resized"], paths["cells"], 16, paths["crops"])
    assert not paths["crops"].exists()
