"""The HPA-SCC 2021 submission format: mask encoding, prediction strings, the CSV and its validator.

Everything here is a pure function on arrays or a single file, so the workflow can call it from any step.

Mask encoding (the Open Images challenge recipe the competition prescribes):

1. a (H, W) boolean mask,
2. COCO run-length encoding (column-major runs, first run counts zeros) as pycocotools' compressed
   ``counts`` string,
3. ``zlib.compress(counts, level 9)``,
4. standard base64, as ASCII text.

Submission file: CSV with header ``ID,ImageWidth,ImageHeight,PredictionString``; the prediction string is
space-separated triplets ``class confidence mask``, the 19 classes 0..18 of every cell in cell order
(the 7th-place solution's layout), empty for an image without cells.

Confidence formatting: ``repr(float(value))``, i.e. the shortest text that reads back as exactly the same
float64 (Python's and numpy's ``str`` of a float64 give the same digits, which is what the original wrote).
Nothing is rounded away, so the ranking the metric sees is the ranking the model produced, and the text is
a deterministic function of the values. Very small values come out in exponent form (``1e-05``), as in the
original; any float parser reads them.
"""

from __future__ import annotations

import base64
import binascii
import csv
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pycocotools.mask as mask_utils
from scipy import ndimage

from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.io.files import atomic_file
from hpa_pipeline.labels import N_CLASSES

#: Header of a submission file, exactly.
SUBMISSION_COLUMNS: tuple[str, ...] = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
#: How many problems :func:`validate_submission` lists before summarising the rest.
MAX_LISTED_PROBLEMS = 20
#: Longest run-length value, in RLE characters, accepted by the decoder (6 characters hold 2**29).
_MAX_RLE_CHARS = 12


# ----------------------------------------------------------------------------------------------------------
# Mask encoding


def _compress_counts(counts: bytes) -> str:
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


def encode_binary_mask(mask: np.ndarray) -> str:
    """Encode one binary mask as the competition's mask string.

    Args:
        mask: (H, W) boolean array (any dtype is read as ``mask != 0``).

    Returns:
        base64(zlib level 9(COCO compressed RLE counts, column-major)), as ASCII text.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise PipelineError(f"encode_binary_mask: expected a 2-D mask, got shape {mask.shape}")
    fortran = np.asfortranarray(mask if mask.dtype == bool else mask != 0, dtype=np.uint8)
    return _compress_counts(mask_utils.encode(fortran)["counts"])


def _parse_counts(counts: bytes) -> np.ndarray:
    """Parse a COCO compressed RLE string into its run lengths (int64), without trusting it.

    Each value is a little-endian sequence of 5-bit groups stored as ``chr(48 + group)``; bit 0x20 of a
    character means "more groups follow", bit 0x10 of the last one is the sign. From the fourth value on,
    the stored number is the difference to the value two places earlier.
    """
    if not counts:
        raise InputDataError("empty RLE string")
    codes = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if codes.min() < 0 or codes.max() > 63:
        bad = int(np.flatnonzero((codes < 0) | (codes > 63))[0])
        raise InputDataError(f"RLE string has an invalid character {chr(counts[bad])!r} at position {bad}")
    last = (codes & 0x20) == 0
    if not last[-1]:
        raise InputDataError("RLE string is truncated (its last value is incomplete)")
    value_ends = np.flatnonzero(last)
    value_starts = np.concatenate(([0], value_ends[:-1] + 1))
    lengths = value_ends - value_starts + 1
    if lengths.max() > _MAX_RLE_CHARS:
        raise InputDataError("RLE string holds an implausibly long number")
    position = np.arange(codes.size) - np.repeat(value_starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * position), value_starts)
    negative = (codes[value_ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    # Undo the delta coding: x[i] += x[i - 2] for i >= 3, i.e. running sums over odd indices from 1 and
    # over even indices from 2.
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _checked_runs(encoded: str, height: int, width: int) -> tuple[np.ndarray, bytes]:
    """The run lengths and RLE bytes of a mask string, checked to cover exactly height * width pixels."""
    if not isinstance(encoded, str) or not encoded:
        raise InputDataError("empty mask string")
    try:
        compressed = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise InputDataError(f"mask string is not valid base64 ({exc})") from exc
    try:
        counts = zlib.decompress(compressed)
    except zlib.error as exc:
        raise InputDataError(f"mask string is not a zlib stream ({exc})") from exc
    runs = _parse_counts(counts)
    if runs.min() < 0:
        raise InputDataError("RLE has a negative run length")
    total = int(runs.sum())
    if total != height * width:
        raise InputDataError(f"RLE covers {total} pixels, but the image is {height}x{width} = {height * width} pixels")
    return runs, counts


def _decode_rle(encoded: str, height: int, width: int) -> tuple[dict, int]:
    """Check a mask string against (height, width); return its pycocotools RLE and its pixel count."""
    runs, counts = _checked_runs(encoded, height, width)
    return {"size": [int(height), int(width)], "counts": counts}, int(runs[1::2].sum())


def decode_binary_mask(encoded: str, height: int, width: int) -> np.ndarray:
    """Decode a mask string made by :func:`encode_binary_mask`.

    Args:
        encoded: the base64 text.
        height, width: the image size (the encoding does not store it).

    Returns:
        (height, width) bool array.

    Raises:
        InputDataError: the text is not base64, not zlib, not a COCO RLE, or its runs do not add up to
            height * width pixels.
    """
    if height <= 0 or width <= 0:
        raise PipelineError(f"decode_binary_mask: invalid size {height}x{width}")
    runs, _ = _checked_runs(encoded, height, width)
    values = np.arange(runs.size) % 2 == 1  # runs alternate background / mask, background first
    return np.ascontiguousarray(np.repeat(values, runs).reshape(width, height).T)  # runs are column-major


def _check_label_image(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise PipelineError(f"expected a 2-D label image, got shape {labels.shape}")
    if labels.dtype.kind not in "ui":
        raise PipelineError(f"expected an integer label image, got dtype {labels.dtype}")
    if labels.size == 0:
        raise PipelineError("empty label image")
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise PipelineError("label image has negative values")
    return labels


def _instance_array(instances: Iterable[int]) -> np.ndarray:
    array = np.asarray(list(instances) if not isinstance(instances, np.ndarray) else instances)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or array.dtype.kind not in "ui":
        raise PipelineError(f"instances must be a 1-D sequence of integers, got {array!r}")
    if array.min() <= 0:
        raise PipelineError(f"instance indices must be positive (0 is background), got {int(array.min())}")
    return array.astype(np.int64)


def cell_rles(labels: np.ndarray, instances: Iterable[int]) -> list[dict]:
    """COCO RLEs (``{'size': [H, W], 'counts': bytes}``) of the given instances of a label image.

    One pass over the image finds every bounding box; each cell's runs are then read from its box only.

    Raises:
        InputDataError: an instance does not occur in the label image.
    """
    labels = _check_label_image(labels)
    instances = _instance_array(instances)
    height, width = labels.shape
    if instances.size == 0:
        return []
    boxes = ndimage.find_objects(labels, max_label=int(instances.max()))
    rles = []
    for instance in instances:
        box = boxes[instance - 1] if instance <= len(boxes) else None
        if box is None:
            raise InputDataError(f"cell {instance} does not occur in the label image")
        rows, cols = box
        crop = labels[box] == instance
        h = crop.shape[0]
        # Column-major scan of the box with one background pixel above and below each column, so that
        # every run starts and ends inside its own column.
        padded = np.zeros((crop.shape[1], h + 2), dtype=np.int8)
        padded[:, 1:-1] = crop.T
        step = np.diff(padded.ravel())
        starts = np.flatnonzero(step == 1) + 1
        ends = np.flatnonzero(step == -1) + 1
        starts = (cols.start + starts // (h + 2)) * height + rows.start + starts % (h + 2) - 1
        ends = (cols.start + ends // (h + 2)) * height + rows.start + ends % (h + 2) - 1
        # A run that reaches the bottom of a column continues at the top of the next one: join them.
        keep = starts[1:] != ends[:-1]
        starts = np.concatenate((starts[:1], starts[1:][keep]))
        ends = np.concatenate((ends[:-1][keep], ends[-1:]))
        counts = np.empty(2 * starts.size + 1, dtype=np.int64)
        counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))
        counts[1::2] = ends - starts
        counts[-1] = height * width - ends[-1]
        if counts[-1] == 0:
            counts = counts[:-1]
        rles.append(mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width))
    return rles


def encode_cell_masks(labels: np.ndarray, instances: Iterable[int]) -> list[str]:
    """Mask strings of the given instances of a label image, in the given order.

    Equal to ``[encode_binary_mask(labels == k) for k in instances]`` but reads the image once plus
    each cell's bounding box, instead of the whole image per cell.

    Args:
        labels: (H, W) uint8/uint16 label image (0 = background).
        instances: the cell values to encode.

    Raises:
        InputDataError: an instance does not occur in the label image.
    """
    return [_compress_counts(rle["counts"]) for rle in cell_rles(labels, instances)]


# ----------------------------------------------------------------------------------------------------------
# Prediction strings and the CSV file


def format_confidence(value: float) -> str:
    """The text of one confidence: shortest round-trip repr of the float64 (``-0.0`` written as ``0.0``)."""
    return repr(float(value) + 0.0)


def format_prediction_string(probs: np.ndarray, encoded_masks: Sequence[str]) -> str:
    """The PredictionString of one image.

    Args:
        probs: (n_cells, 19) class confidences in [0, 1].
        encoded_masks: the n_cells mask strings, in the same order.

    Returns:
        ``"0 p00 m0 1 p01 m0 ... 18 p0,18 m0 0 p10 m1 ..."``: classes 0..18 of each cell, cells in the
        given order; the empty string when there is no cell.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != N_CLASSES:
        raise PipelineError(f"probs must have shape (n_cells, {N_CLASSES}), got {probs.shape}")
    if probs.shape[0] != len(encoded_masks):
        raise PipelineError(f"{probs.shape[0]} rows of probabilities but {len(encoded_masks)} masks")
    if probs.size and not (np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0):
        raise PipelineError("confidences must be finite and in [0, 1]")
    parts = []
    for row, mask in zip(probs.tolist(), encoded_masks):
        if not mask or any(ch in mask for ch in ' ,"\n\r'):
            raise PipelineError(f"invalid mask string {mask!r}")
        parts.extend(f"{cls} {format_confidence(value)} {mask}" for cls, value in enumerate(row))
    return " ".join(parts)


def write_submission(path: str | Path, rows: Iterable[tuple[str, int, int, str]]) -> None:
    """Write a submission CSV atomically (temporary file in the same folder, then rename).

    Args:
        path: the output file.
        rows: ``(ID, ImageWidth, ImageHeight, PredictionString)`` per image, written in the given order.
    """
    with atomic_file(path, "w", newline="", encoding="ascii") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        seen: set[str] = set()
        for number, row in enumerate(rows, start=1):
            if len(row) != 4:
                raise PipelineError(f"{path}: row {number} has {len(row)} fields, expected 4")
            image_id, width, height, prediction = row
            image_id = str(image_id)
            if not image_id or any(ch in image_id for ch in ' ,"\n\r'):
                raise PipelineError(f"{path}: invalid image ID {image_id!r} in row {number}")
            if image_id in seen:
                raise PipelineError(f"{path}: duplicate image ID {image_id}")
            seen.add(image_id)
            if int(width) != width or int(height) != height or width <= 0 or height <= 0:
                raise PipelineError(f"{path}: image {image_id}: invalid size {width}x{height}")
            if any(ch in prediction for ch in ',"\n\r'):
                raise PipelineError(f'{path}: image {image_id}: prediction string contains , " or a newline')
            writer.writerow((image_id, int(width), int(height), prediction))


def _read_raw(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(f"missing submission file {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as exc:
        raise InputDataError(f"cannot read submission file {path}: {exc}") from exc
    if tuple(table.columns) != SUBMISSION_COLUMNS:
        raise InputDataError(
            f"{path}: header is {','.join(map(str, table.columns))}, expected {','.join(SUBMISSION_COLUMNS)}"
        )
    return table


def _parse_size(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission CSV.

    Returns:
        The rows in file order: ``ID`` (str), ``ImageWidth``, ``ImageHeight`` (int64), ``PredictionString``
        (str, empty for an image without detections).

    Raises:
        InputDataError: missing/unreadable file, wrong header, or a width/height that is not a positive integer.
    """
    path = Path(path)
    table = _read_raw(path)
    for column in ("ImageWidth", "ImageHeight"):
        sizes = [_parse_size(text) for text in table[column]]
        for row, size in enumerate(sizes):
            if size is None:
                raise InputDataError(
                    f"{path} row {row + 2} (ID {table['ID'].iat[row]}): {column} {table[column].iat[row]!r} "
                    "is not a positive integer"
                )
        table[column] = np.asarray(sizes, dtype=np.int64)
    return table


# ----------------------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class SubmissionReport:
    """Summary of a valid submission."""

    images: int
    cells: int  # distinct masks per image, summed over images
    detections: int  # (class, confidence, mask) triplets
    empty_images: int  # images with an empty prediction string

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Detection:
    """One parsed triplet of a prediction string."""

    cls: int
    score: float
    mask: str


def parse_prediction_string(text: str) -> list[Detection]:
    """Split a PredictionString into triplets, checking class and confidence (not the masks).

    Raises:
        InputDataError: token count not a multiple of 3, class not an integer in 0..18, or confidence not
            a finite number in [0, 1]; the message names the detection (1-based).
    """
    tokens = text.split()
    if len(tokens) % 3:
        raise InputDataError(f"{len(tokens)} tokens, not a multiple of 3 (class confidence mask)")
    detections = []
    for number in range(len(tokens) // 3):
        cls_text, score_text, mask = tokens[3 * number : 3 * number + 3]
        where = f"detection {number + 1}"
        if not cls_text.isdigit() or int(cls_text) >= N_CLASSES:
            raise InputDataError(f"{where}: class {cls_text!r} is not an integer in 0..{N_CLASSES - 1}")
        try:
            score = float(score_text)
        except ValueError:
            raise InputDataError(f"{where}: confidence {score_text!r} is not a number") from None
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise InputDataError(f"{where}: confidence {score_text!r} is not a finite number in [0, 1]")
        detections.append(Detection(int(cls_text), score, mask))
    return detections


def decode_prediction_masks(detections: Sequence[Detection], height: int, width: int) -> tuple[list[dict], np.ndarray]:
    """Decode the distinct masks of one image's detections.

    Returns:
        (RLEs of the distinct masks in order of first use, index of each detection's mask in that list).

    Raises:
        InputDataError: a mask does not decode at (height, width) or is empty; the message names the detection.
    """
    index: dict[str, int] = {}
    rles: list[dict] = []
    mask_of = np.empty(len(detections), dtype=np.int64)
    for number, detection in enumerate(detections):
        if detection.mask not in index:
            try:
                rle, area = _decode_rle(detection.mask, height, width)
            except InputDataError as exc:
                raise InputDataError(f"detection {number + 1}: {exc}") from None
            if area == 0:
                raise InputDataError(f"detection {number + 1}: empty mask")
            index[detection.mask] = len(rles)
            rles.append(rle)
        mask_of[number] = index[detection.mask]
    return rles, mask_of


def format_problems(path: str | Path, problems: list[str]) -> str:
    listed = problems[:MAX_LISTED_PROBLEMS]
    text = f"{path}: {len(problems)} problem(s) in the submission:\n" + "\n".join(f"  - {p}" for p in listed)
    if len(problems) > len(listed):
        text += f"\n  ... and {len(problems) - len(listed)} more"
    return text


ImageCallback = Callable[[str, list[Detection], list[dict], np.ndarray], None]


def scan_submission(
    path: str | Path, expected: Mapping[str, tuple[int, int]], on_image: ImageCallback | None = None
) -> tuple[SubmissionReport, list[str]]:
    """Check a submission file row by row; the engine of :func:`validate_submission` and of the metric.

    Args:
        path: the submission CSV.
        expected: image ID -> (width, height) of every test image.
        on_image: called as ``on_image(image_id, detections, rles, det_mask)`` for every valid row while no
            problem has been found (see :func:`decode_prediction_masks` for ``rles`` and ``det_mask``).

    Returns:
        (report, problems): the problems, each naming its row and image ID; the report counts the valid rows.

    Raises:
        InputDataError: the file is missing, unreadable or has the wrong header.
    """
    path = Path(path)
    table = _read_raw(path)
    problems: list[str] = []
    ids = table["ID"].tolist()
    counts = pd.Series(ids, dtype=object).value_counts(sort=False)
    for image_id in [i for i in dict.fromkeys(ids) if counts[i] > 1]:
        problems.append(f"ID {image_id}: appears {counts[image_id]} times")
    missing = [image_id for image_id in expected if image_id not in counts.index]
    if missing:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        problems.append(f"{len(missing)} expected image(s) missing: ID {shown}")
    cells = detections_total = empty = 0
    for row, (image_id, width_text, height_text, prediction) in enumerate(table.itertuples(index=False), start=2):
        where = f"row {row} (ID {image_id})"
        if image_id not in expected:
            problems.append(f"{where}: unknown image ID")
            continue
        width, height = _parse_size(width_text), _parse_size(height_text)
        want_width, want_height = expected[image_id]
        if (width, height) != (want_width, want_height):
            problems.append(
                f"{where}: ImageWidth x ImageHeight is {width_text}x{height_text}, expected {want_width}x{want_height}"
            )
            continue
        try:
            detections = parse_prediction_string(prediction)
            rles, det_mask = decode_prediction_masks(detections, height, width)
        except InputDataError as exc:
            problems.append(f"{where}: {exc}")
            continue
        cells += len(rles)
        detections_total += len(detections)
        empty += not detections
        if on_image is not None and not problems:
            on_image(image_id, detections, rles, det_mask)
    report = SubmissionReport(images=len(table), cells=cells, detections=detections_total, empty_images=empty)
    return report, problems


def validate_submission(path: str | Path, expected: Mapping[str, tuple[int, int]]) -> SubmissionReport:
    """Check a submission file against the test images and decode every mask.

    Args:
        path: the submission CSV.
        expected: image ID -> (width, height) of every test image.

    Returns:
        A :class:`SubmissionReport`.

    Raises:
        InputDataError: listing the first problems (each with its image ID): wrong header, missing, unknown or
            duplicate IDs, wrong width/height, a prediction string that is not triplets, a class outside 0..18,
            a confidence that is not a finite number in [0, 1], a mask that does not decode at (H, W) or is empty.
    """
    report, problems = scan_submission(path, expected)
    if problems:
        raise InputDataError(format_problems(path, problems))
    return report
