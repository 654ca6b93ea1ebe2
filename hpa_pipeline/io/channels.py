"""Reading the four single-channel images of one HPA field of view."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from hpa_pipeline.errors import InputDataError

#: Channel order of every image array in the pipeline (Kaggle naming):
#: red = microtubules, green = protein of interest, blue = nucleus, yellow = ER.
CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: ``.jpg``: the HPA v18 server's per-channel JPEGs (the 2018 external set), read by :func:`decode_jpeg_channel`.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg")

#: Planes of an RGB channel JPEG that carry each channel: the HPA v18 server draws every channel file in
#: its display colour (yellow = red + green), as the 2018 solutions read them.
_JPEG_PLANES: dict[str, tuple[int, ...]] = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}


def to_uint8(image: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Bring a channel image to uint8.

    16-bit images are scaled linearly over their full range, ``round(v * 255 / 65535)``: HPA's 16-bit
    PNGs use the whole range (the public sample reaches 65089), so this keeps their contrast, and it
    differs from the original solution's high-byte truncation (``v >> 8``) by at most one grey level.

    Args:
        image: 2-D uint8 or uint16 array.
        path: file the image came from, for the error message.

    Returns:
        The image as uint8.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    raise InputDataError(f"{path}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")


def decode_jpeg_channel(data: bytes, channel: str) -> np.ndarray:
    """Decode one channel's JPEG (HPA v18: ``{ID}_{channel}.jpg``) to a (H, W) uint8 plane.

    A grey JPEG is the plane itself; an RGB one gives the plane of the channel's display colour (red R,
    green G, blue B, yellow the mean of R and G, rounded down).

    Raises:
        ValueError: saying what is wrong (not a JPEG, truncated, another pixel mode).
    """
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            image.load()  # the whole file, so that a truncated one fails here
            mode, pixels = image.mode, np.array(image)  # writable, like the other readers' arrays
    except UnidentifiedImageError as exc:
        raise ValueError("not a JPEG file") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError and others for broken files
        raise ValueError(f"cannot decode the JPEG ({exc})") from exc
    if mode not in ("L", "RGB"):
        raise ValueError(f"unsupported JPEG pixel mode {mode} (expected grey L or RGB)")
    if pixels.size == 0:
        raise ValueError("the JPEG holds no image")
    if pixels.ndim == 2:
        return pixels
    planes = _JPEG_PLANES[channel]
    if len(planes) == 1:
        return np.ascontiguousarray(pixels[..., planes[0]])
    return ((pixels[..., 0].astype(np.uint16) + pixels[..., 1]) // 2).astype(np.uint8)


def read_channel_raw(path: str | Path) -> np.ndarray:
    """Read one single-channel image file at its own bit depth (uint8 or uint16)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing image file {path}")
    if path.suffix.lower() == ".jpg":
        channel = path.stem.rsplit("_", 1)[-1].lower()
        if channel not in CHANNELS:
            raise InputDataError(f"{path}: a channel JPEG is named {{ID}}_{{{','.join(CHANNELS)}}}.jpg")
        try:
            return decode_jpeg_channel(path.read_bytes(), channel)
        except ValueError as exc:
            raise InputDataError(f"cannot decode image file {path}: {exc}") from exc
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            image = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many types for broken files
            raise InputDataError(f"cannot decode image file {path}: {exc}") from exc
    else:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputDataError(f"cannot decode image file {path} (corrupt or not an image)")
    if image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[0] > 4:
        # Some exports save a grey channel as RGB(A) with equal planes; anything else is ambiguous.
        if not all(np.array_equal(image[..., 0], image[..., i]) for i in (1, 2)):
            raise InputDataError(f"{path}: expected a single-channel image, found {image.shape[2]} colour channels")
        image = image[..., 0]
    if image.ndim != 2:
        raise InputDataError(f"{path}: expected a 2-D single-channel image, found shape {image.shape}")
    if image.size == 0:
        raise InputDataError(f"{path}: empty image")
    if image.dtype not in (np.uint8, np.uint16):
        raise InputDataError(f"{path}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    return image


def channel_path(image_dir: str | Path, image_id: str, channel: str) -> Path:
    """Find the file of one channel: ``{image_dir}/{image_id}_{channel}.{png,tif,tiff,jpg}``.

    Raises:
        InputDataError: no file with any of the known suffixes exists.
    """
    image_dir = Path(image_dir)
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{image_id}_{channel}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputDataError(
        f"missing channel file {image_dir / f'{image_id}_{channel}.png'} "
        f"(image {image_id!r} needs {', '.join(CHANNELS)})"
    )


def read_rgby(image_dir: str | Path, image_id: str) -> np.ndarray:
    """Read the four channels of one image.

    Args:
        image_dir: folder holding ``{image_id}_{red,green,blue,yellow}.png`` (or .tif).
        image_id: the image's ID.

    Returns:
        A (4, H, W) uint8 array, channels red, green, blue, yellow.
    """
    return read_rgby_with_bit_depth(image_dir, image_id)[0]


def read_rgby_with_bit_depth(image_dir: str | Path, image_id: str) -> tuple[np.ndarray, int]:
    """Like :func:`read_rgby`, also returning the largest bit depth among the channel files (8 or 16)."""
    planes, bit_depth = read_rgby_planes(image_dir, image_id)
    return np.stack(planes), bit_depth


def read_rgby_planes(image_dir: str | Path, image_id: str) -> tuple[list[np.ndarray], int]:
    """The four channels as separate (H, W) uint8 planes (no copy into one array) and the bit depth."""
    paths = [channel_path(image_dir, image_id, channel) for channel in CHANNELS]
    raw = [read_channel_raw(path) for path in paths]
    bit_depth = max(plane.dtype.itemsize * 8 for plane in raw)
    planes = [to_uint8(plane, path) for plane, path in zip(raw, paths)]
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1:
        detail = ", ".join(f"{path.name} {plane.shape[1]}x{plane.shape[0]}" for path, plane in zip(paths, planes))
        raise InputDataError(f"channels of image {image_id!r} differ in size: {detail}")
    return planes, bit_depth


def _file_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    if path.suffix.lower() == ".png":
        with open(path, "rb") as handle:
            header = handle.read(24)
        if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
            raise InputDataError(f"cannot decode image file {path} (not a PNG)")
        return int.from_bytes(header[20:24], "big"), int.from_bytes(header[16:20], "big")
    if path.suffix.lower() == ".jpg":
        try:
            with Image.open(path, formats=["JPEG"]) as image:  # reads the header only
                return image.height, image.width
        except Exception as exc:
            raise InputDataError(f"cannot decode image file {path}: {exc}") from exc
    try:
        with tifffile.TiffFile(path) as tiff:
            return tuple(tiff.pages[0].shape[:2])
    except Exception as exc:
        raise InputDataError(f"cannot decode image file {path}: {exc}") from exc


def image_shape(image_dir: str | Path, image_id: str) -> tuple[int, int]:
    """(height, width) of an image, read from its four channel files' headers (which must agree)."""
    paths = [channel_path(image_dir, image_id, channel) for channel in CHANNELS]
    shapes = [_file_shape(path) for path in paths]
    if len(set(shapes)) > 1:
        detail = ", ".join(f"{path.name} {shape[1]}x{shape[0]}" for path, shape in zip(paths, shapes))
        raise InputDataError(f"channels of image {image_id!r} differ in size: {detail}")
    return shapes[0]
