import cv2
import numpy as np
import pytest
import tifffile
from conftest import (
    REAL_16BIT,
    REAL_IMAGES,
    real_image_ids,
    requires_realdata,
    write_rgby,
)

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import (
    image_shape,
    read_channel_raw,
    read_rgby,
    read_rgby_with_bit_depth,
    to_uint8,
)


def test_sixteen_bit_is_scaled_over_the_full_range():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    assert to_uint8(values).tolist() == [[0, 1, 128, 255]]


@requires_realdata
def test_real_sixteen_bit_image_keeps_its_contrast():
    raw = cv2.imread(str(REAL_16BIT), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    image = to_uint8(read_channel_raw(REAL_16BIT))
    assert image.dtype == np.uint8 and image.shape == raw.shape
    expected = np.rint(raw.astype(np.float64) * 255 / 65535)
    assert np.abs(image.astype(np.float64) - expected).max() <= 1
    assert image.max() >= 250  # uses the whole 8-bit range like the source


@requires_realdata
def test_real_image_reads_as_four_uint8_channels():
    image_id = real_image_ids()[0]
    image = read_rgby(REAL_IMAGES, image_id)
    assert image.shape == (4, 2048, 2048) and image.dtype == np.uint8
    green = cv2.imread(str(REAL_IMAGES / f"{image_id}_green.png"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(image[1], green)


def test_tiff_and_bit_depth_are_read(tmp_path):
    planes = np.random.default_rng(0).integers(0, 65535, size=(4, 20, 30)).astype(np.uint16)
    for channel, plane in zip(("red", "green", "blue", "yellow"), planes):
        tifffile.imwrite(tmp_path / f"x_{channel}.tif", plane)
    image, depth = read_rgby_with_bit_depth(tmp_path, "x")
    assert depth == 16 and image.shape == (4, 20, 30)
    assert np.array_equal(image, np.stack([to_uint8(p) for p in planes]))


def test_missing_channel_names_the_file(tmp_path):
    write_rgby(tmp_path, "x", np.zeros((4, 8, 8), np.uint8))
    (tmp_path / "x_yellow.png").unlink()
    with pytest.raises(InputDataError, match=r"missing channel file .*x_yellow\.png"):
        read_rgby(tmp_path, "x")


def test_corrupt_png_names_the_file(tmp_path):
    write_rgby(tmp_path, "x", np.zeros((4, 8, 8), np.uint8))
    (tmp_path / "x_green.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(InputDataError, match=r"cannot decode image file .*x_green\.png"):
        read_rgby(tmp_path, "x")


def test_channels_of_different_sizes_are_reported(tmp_path):
    write_rgby(tmp_path, "x", np.zeros((4, 8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "x_blue.png"), np.zeros((9, 8), np.uint8))
    with pytest.raises(InputDataError, match=r"differ in size: .*x_blue\.png 8x9"):
        read_rgby(tmp_path, "x")


def test_grey_image_saved_as_rgb_is_accepted_but_colour_is_not(tmp_path):
    grey = np.random.default_rng(1).integers(0, 255, size=(10, 12)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), np.dstack([grey] * 3))
    assert np.array_equal(read_channel_raw(tmp_path / "grey.png"), grey)
    colour = np.dstack([grey, grey, 255 - grey])
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(InputDataError, match="colour channels"):
        read_channel_raw(tmp_path / "colour.png")


def _jpeg(path, rgb):
    from PIL import Image

    Image.fromarray(rgb).save(path, format="JPEG", quality=95)
    return path


def test_channel_jpegs_give_the_plane_of_their_colour(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    plane = cv2.GaussianBlur(rng.integers(0, 256, (24, 40), dtype=np.uint8), (0, 0), 2.0)
    zero = np.zeros_like(plane)
    colours = {"red": (plane, zero, zero), "green": (zero, plane, zero), "blue": (zero, zero, plane)}
    colours["yellow"] = (plane, plane, zero)
    for channel, planes in colours.items():
        _jpeg(tmp_path / f"a_{channel}.jpg", np.stack(planes, axis=-1))
    pixels = {channel: np.asarray(Image.open(tmp_path / f"a_{channel}.jpg")) for channel in colours}
    image, bits = read_rgby_with_bit_depth(tmp_path, "a")
    assert bits == 8 and image_shape(tmp_path, "a") == (24, 40)
    np.testing.assert_array_equal(image[0], pixels["red"][..., 0])
    np.testing.assert_array_equal(image[1], pixels["green"][..., 1])
    np.testing.assert_array_equal(image[2], pixels["blue"][..., 2])
    np.testing.assert_array_equal(image[3], (pixels["yellow"][..., 0].astype(int) + pixels["yellow"][..., 1]) // 2)


def test_a_broken_or_misnamed_jpeg_names_the_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = _jpeg(tmp_path / "a_red.jpg", rgb).read_bytes()
    (tmp_path / "b_red.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        InputDataError, match=r"cannot decode image file .*b_red\.jpg: cannot decode the JPEG \(.*truncated"
    ):
        read_channel_raw(tmp_path / "b_red.jpg")
    (tmp_path / "c_red.jpg").write_bytes(b"<html>")
    with pytest.raises(InputDataError, match=r"cannot decode image file .*c_red\.jpg: not a JPEG file"):
        read_channel_raw(tmp_path / "c_red.jpg")
    (tmp_path / "a_purple.jpg").write_bytes(data)
    with pytest.raises(
        InputDataError, match=r"a_purple\.jpg: a channel JPEG is named \{ID\}_\{red,green,blue,yellow\}"
    ):
        read_channel_raw(tmp_path / "a_purple.jpg")
