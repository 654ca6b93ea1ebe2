import json

import cv2
import numpy as np
import pytest
from conftest import REAL_IMAGES, real_image_ids, requires_realdata, write_rgby

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.preprocess.resize import (
    ImageResizer,
    ordered_parallel_map,
    resize_image,
    resize_plane,
    resize_shard,
)


@requires_realdata
@pytest.mark.parametrize("size", [768, 1536, 512])
def test_shrinking_matches_pixel_area_averaging(size):
    plane = cv2.imread(str(REAL_IMAGES / f"{real_image_ids()[0]}_red.png"), cv2.IMREAD_GRAYSCALE)
    ours = resize_plane(plane, size, size).astype(np.float64)
    area = cv2.resize(plane, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert np.abs(ours - area).mean() < 0.6


def test_shrinking_does_not_alias_a_fine_grating():
    # a one-pixel grating is pure above-Nyquist signal at 768/2048: area averaging removes it,
    # plain bilinear interpolation turns it into a coarse moire pattern
    plane = np.tile(np.array([0, 255], np.uint8), (2048, 1024))
    ours = resize_plane(plane, 768, 768)
    naive = cv2.resize(plane, (768, 768), interpolation=cv2.INTER_LINEAR)
    area = cv2.resize(plane, (768, 768), interpolation=cv2.INTER_AREA)
    assert ours.std() < 0.5 * naive.std()
    assert np.abs(ours.astype(float) - area).mean() < 1.0


def test_non_square_and_enlarging_give_the_requested_shape():
    plane = np.random.default_rng(0).integers(0, 255, size=(300, 500)).astype(np.uint8)
    assert resize_plane(plane, 128, 128).shape == (128, 128)
    assert resize_plane(plane, 400, 400).shape == (400, 400)  # shrink one axis, enlarge the other
    assert resize_plane(plane, 600, 1000).shape == (600, 1000)
    constant = np.full((300, 500), 77, np.uint8)
    assert np.all(resize_plane(constant, 400, 400) == 77)


def test_resizer_derives_small_sizes_from_large_ones_consistently():
    image = np.random.default_rng(0).integers(0, 255, size=(4, 2048, 2048)).astype(np.uint8)
    results = ImageResizer([768, 1536])(image)
    assert results[1536].shape == (4, 1536, 1536) and results[768].shape == (4, 768, 768)
    direct = resize_image(image, 768).astype(np.float64)
    assert np.abs(results[768].astype(np.float64) - direct).mean() < 2.0


def test_ordered_parallel_map_keeps_order():
    assert list(ordered_parallel_map(lambda x: x * x, range(20), threads=3)) == [x * x for x in range(20)]


def test_resize_shard_writes_one_store_per_size(tiny_dataset, tmp_path):
    outs = [tmp_path / "i32.zarr", tmp_path / "i64.zarr"]
    ids = ["img0", "img1", "img2"]
    resize_shard(tiny_dataset / "train", ids, [32, 64], outs, threads=2)
    for out, size in zip(outs, (32, 64)):
        group = open_store(out, "images")
        assert group.attrs["size"] == size
        assert read_strings(group, "ids") == ids
        assert group["images"].shape == (3, 4, size, size)
        assert group["source_shape"][:].tolist() == [[96, 96]] * 3
        assert group["source_bit_depth"][:].tolist() == [8, 8, 8]
    expected = resize_image(
        np.stack(
            [cv2.imread(str(tiny_dataset / "train" / f"img1_{c}.png"), 0) for c in ("red", "green", "blue", "yellow")]
        ),
        64,
    )
    assert np.array_equal(open_store(outs[1], "images")["images"][1], expected)


def recorded_codecs(store, array: str) -> list[dict]:
    """The codec chain zarr recorded in the array's metadata."""
    return json.loads((store / array / "zarr.json").read_text())["codecs"]


FAST_IMAGE_CODECS = [
    {"name": "bytes"},
    {
        "name": "blosc",
        "configuration": {"typesize": 1, "cname": "zstd", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 2**20},
    },
]
DENSE_CODECS = [
    {"name": "numcodecs.delta", "configuration": {"dtype": "u1"}},
    {"name": "bytes"},
    {"name": "zstd", "configuration": {"level": 1, "checksum": False}},
]


@pytest.mark.parametrize(("codec", "expected"), [(None, FAST_IMAGE_CODECS), ("dense", DENSE_CODECS)])
def test_images_store_codec_training_read_by_default_dense_on_request(tiny_dataset, tmp_path, codec, expected):
    ids = ["img0", "img1", "img2"]
    options = {} if codec is None else {"codec": codec}
    resize_shard(tiny_dataset / "train", ids, [64], [tmp_path / "i64.zarr"], **options)
    assert recorded_codecs(tmp_path / "i64.zarr", "images") == expected
    stored = open_store(tmp_path / "i64.zarr", "images")["images"][:]
    planes = [
        np.stack([cv2.imread(str(tiny_dataset / "train" / f"{image_id}_{c}.png"), 0) for c in CHANNELS])
        for image_id in ids
    ]
    assert np.array_equal(stored, np.stack([resize_image(image, 64) for image in planes]))


def test_unknown_codec_is_refused_before_anything_is_written(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown store codec 'lz5'"):
        resize_shard(tiny_dataset / "train", ["img0"], [32], [tmp_path / "out" / "i32.zarr"], codec="lz5")
    assert not (tmp_path / "out").exists()


def test_sixteen_bit_and_non_square_images_are_resized(tmp_path):
    image = (np.random.default_rng(0).integers(0, 65535, size=(4, 60, 90))).astype(np.uint16)
    write_rgby(tmp_path / "raw", "wide", image)
    resize_shard(tmp_path / "raw", ["wide"], [32], [tmp_path / "out.zarr"])
    group = open_store(tmp_path / "out.zarr", "images")
    assert group["source_shape"][:].tolist() == [[60, 90]]
    assert group["source_bit_depth"][:].tolist() == [16]


def test_a_bad_file_leaves_no_store(tiny_dataset, tmp_path):
    (tiny_dataset / "train" / "img1_blue.png").write_bytes(b"garbage")
    outs = [tmp_path / "out" / "a.zarr", tmp_path / "out" / "b.zarr"]
    with pytest.raises(InputDataError, match="img1_blue.png"):
        resize_shard(tiny_dataset / "train", ["img0", "img1", "img2"], [32, 64], outs, threads=2)
    assert list((tmp_path / "out").iterdir()) == []
