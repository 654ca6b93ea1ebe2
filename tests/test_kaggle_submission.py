"""Mask encoding, confidence scaling, submission CSV writing and validation."""

from __future__ import annotations

import base64
import math
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.kaggle.submission import (
    SUBMISSION_COLUMNS,
    decode_binary_mask,
    encode_binary_mask,
    encode_cell_masks,
    format_prediction_string,
    parse_prediction_string,
    read_submission,
    validate_submission,
    write_submission,
)

_SHARED = Path(__file__).resolve().parents[2] / "shared"
REALDATA = (_SHARED if _SHARED.is_dir() else Path("/work/shared")) / "realdata" / "hpa_samples"
KAGGLE_MASKS = sorted((REALDATA / "kaggle2021_train" / "masks").glob("*_predictedmask.png"))
HPA_CELLMASK = REALDATA / "hpa_public_1000_A12_2" / "1000_A12_2_cellmask.png"
needs_realdata = pytest.mark.skipif(not KAGGLE_MASKS, reason=f"real sample masks not found under {REALDATA}")

# Reference section 3.2/3.3: the two example rows of the competition text.
GOLDEN = [
    # (string, height, width, pixels, (row min, row max), (col min, col max))
    ("eNqLi8xJM7BOTjS08DT2NfI38DfyM/Q3NMAJgJJ+RkBs7JecF5tnAADw+Q9I", 1600, 1118, 663, (1063, 1090), (468, 493)),
    ("eNqLiYrLN7DNCjDMMIj0N/Iz9DcwBEIDfyN/QyA2AAsBRfxMPcKTA1MMADVADIo=", 1066, 1600, 583, (710, 753), (966, 982)),
]


def read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None, path
    return mask


def cells_of(labels: np.ndarray) -> np.ndarray:
    values = np.unique(labels)
    return values[values > 0]


# -------------------- encoding


@pytest.mark.parametrize(("encoded", "height", "width", "pixels", "rows", "cols"), GOLDEN)
def test_golden_strings_decode_to_the_documented_blob(encoded, height, width, pixels, rows, cols):
    mask = decode_binary_mask(encoded, height, width)
    assert mask.shape == (height, width) and mask.dtype == bool
    assert int(mask.sum()) == pixels
    r, c = np.nonzero(mask)
    assert (r.min(), r.max()) == rows and (c.min(), c.max()) == cols
    _, n_blobs = ndimage.label(mask)
    assert n_blobs == 1


@pytest.mark.parametrize(("encoded", "height", "width", "pixels", "rows", "cols"), GOLDEN)
def test_golden_strings_reencode_byte_for_byte(encoded, height, width, pixels, rows, cols):
    mask = decode_binary_mask(encoded, height, width)
    assert encode_binary_mask(mask) == encoded
    # Integer 0/1 input encodes the same as bool.
    assert encode_binary_mask(mask.astype(np.uint8)) == encoded


def test_encoding_is_coco_rle_zlib_base64():
    mask = np.zeros((5, 4), dtype=bool)
    mask[1:3, 1] = True  # column-major runs: 6 zeros, 2 ones, 12 zeros
    counts = zlib.decompress(base64.b64decode(encode_binary_mask(mask)))
    import pycocotools.mask as mask_utils

    assert counts == mask_utils.frPyObjects({"size": [5, 4], "counts": [6, 2, 12]}, 5, 4)["counts"]


def _synthetic_labels(height: int, width: int, seed: int) -> np.ndarray:
    """Label image with awkward cells: pixel (0, 0), the last pixel, a full-height band spanning columns
    (runs that continue from the bottom of one column to the top of the next), holes, non-convex shapes."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.uint16)
    labels[0, 0] = 1
    labels[-1, -1] = 2
    labels[:, width // 3 : width // 3 + 3] = 3
    labels[height // 2 :, width // 3 + 3 : width // 3 + 4] = 3
    labels[: height // 4, width // 3 + 4 : width // 3 + 5] = 3  # continues from the previous column's bottom
    blob = rng.random((height, width)) < 0.3
    labels[(labels == 0) & blob & (np.arange(width) > width // 2)] = 4
    labels[2:5, 1 : width // 4] = 7
    labels[3:4, 2:3] = 0  # a hole
    labels[(labels == 0) & (np.arange(height)[:, None] == height - 1)] = 300
    return labels


@pytest.mark.parametrize(("height", "width"), [(37, 91), (64, 17), (1, 50), (50, 1)])
def test_round_trip_non_square_synthetic(height, width):
    labels = _synthetic_labels(height, width, seed=height * width)
    cells = cells_of(labels)
    encoded = encode_cell_masks(labels, cells)
    assert encoded == [encode_binary_mask(labels == k) for k in cells]
    for string, cell in zip(encoded, cells):
        assert np.array_equal(decode_binary_mask(string, height, width), labels == cell)


def test_full_and_empty_masks_round_trip():
    for mask in (np.ones((6, 9), bool), np.zeros((6, 9), bool)):
        assert np.array_equal(decode_binary_mask(encode_binary_mask(mask), 6, 9), mask)
    labels = np.full((6, 9), 5, dtype=np.uint8)
    assert encode_cell_masks(labels, [5]) == [encode_binary_mask(np.ones((6, 9), bool))]


@needs_realdata
def test_round_trip_real_mask_every_cell():
    labels = read_mask(KAGGLE_MASKS[0])
    cells = cells_of(labels)
    encoded = encode_cell_masks(labels, cells)
    assert encoded == [encode_binary_mask(labels == k) for k in cells]
    for string, cell in zip(encoded, cells):
        assert np.array_equal(decode_binary_mask(string, *labels.shape), labels == cell)
    # A non-square crop of a real mask (cells cut by the border, rectangular image).
    crop = labels[:1500, 300:]
    crop_cells = cells_of(crop)
    for string, cell in zip(encode_cell_masks(crop, crop_cells), crop_cells):
        assert np.array_equal(decode_binary_mask(string, *crop.shape), crop == cell)


@pytest.mark.slow
@needs_realdata
@pytest.mark.parametrize(
    "path", KAGGLE_MASKS + ([HPA_CELLMASK] if HPA_CELLMASK.is_file() else []), ids=lambda p: p.name[:12]
)
def test_round_trip_all_real_masks(path):
    labels = read_mask(path)  # uint8 Kaggle masks (one 3072x3072) and a uint16 HPA mask
    cells = cells_of(labels)
    encoded = encode_cell_masks(labels, cells)
    assert encoded == [encode_binary_mask(labels == k) for k in cells]
    for string, cell in zip(encoded, cells):
        assert np.array_equal(decode_binary_mask(string, *labels.shape), labels == cell)


def test_encode_cell_masks_order_and_errors():
    labels = _synthetic_labels(20, 30, seed=1)
    assert encode_cell_masks(labels, [7, 1]) == [encode_binary_mask(labels == 7), encode_binary_mask(labels == 1)]
    assert encode_cell_masks(labels, []) == []
    with pytest.raises(InputDataError, match="cell 9 "):
        encode_cell_masks(labels, [1, 9])
    with pytest.raises(InputDataError, match="cell 1000 "):
        encode_cell_masks(labels, [1000])
    with pytest.raises(PipelineError):
        encode_cell_masks(labels, [0])
    with pytest.raises(PipelineError):
        encode_cell_masks(labels.astype(np.float32), [1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("not base64!", "base64"),
        ("", "empty"),
        (_b64(b"plain bytes, not zlib"), "zlib"),
        (_b64(zlib.compress(b"")), "empty RLE"),
        (_b64(zlib.compress(b"\x01\x02")), "invalid character"),
        (_b64(zlib.compress(b"0o")), "truncated"),  # 'o' (0x3F) says "more follows"
        (_b64(zlib.compress(b"5")), "covers 5 pixels"),  # a valid RLE of 5 zeros, not 10x10
    ],
)
def test_decode_rejects_garbage(encoded, message):
    with pytest.raises(InputDataError, match=message):
        decode_binary_mask(encoded, 10, 10)


def test_decode_rejects_wrong_size():
    encoded = GOLDEN[0][0]
    with pytest.raises(InputDataError, match="1600x1117"):
        decode_binary_mask(encoded, 1600, 1117)
    with pytest.raises(InputDataError, match="pixels"):
        decode_binary_mask(encode_binary_mask(np.ones((4, 4), bool)), 4, 5)


def test_decode_rejects_negative_run():
    # counts "0" then a value with the sign bit: -1 pixels.
    negative = chr(48 + 0x1F)  # 5 bits all set, sign bit 0x10 set, no continuation -> -1
    with pytest.raises(InputDataError, match="negative"):
        decode_binary_mask(_b64(zlib.compress(("0" + negative).encode())), 1, 1)


# -------------------- geometry


# -------------------- prediction strings and CSV


def test_format_prediction_string_layout_and_precision():
    probs = np.array([np.linspace(0, 1, 19), np.full(19, 1 / 3)])
    probs[0, 5] = 1e-7
    probs[1, 0] = -0.0
    text = format_prediction_string(probs, ["maskA", "maskB"])
    tokens = text.split(" ")
    assert len(tokens) == 2 * 19 * 3
    assert tokens[0:3] == ["0", "0.0", "maskA"]
    assert [int(t) for t in tokens[0::3]] == list(range(19)) * 2
    assert tokens[2::3] == ["maskA"] * 19 + ["maskB"] * 19
    assert tokens[3 * 19 + 1] == "0.0"  # -0.0 written as 0.0
    assert tokens[3 * 5 + 1] == "1e-07"
    assert tokens[3 * 19 + 4] == "0.3333333333333333"
    # Every confidence reads back as exactly the same float64.
    assert [float(t) for t in tokens[1::3]] == [v + 0.0 for v in probs.ravel().tolist()]
    assert format_prediction_string(probs, ["maskA", "maskB"]) == text  # deterministic
    # float32 inputs are written as the float64 of the same value (round-trips exactly too).
    probs32 = np.float32([[0.1] * 19])
    assert float(format_prediction_string(probs32, ["m"]).split()[1]) == float(np.float32(0.1))


def test_format_prediction_string_empty_and_errors():
    assert format_prediction_string(np.zeros((0, 19)), []) == ""
    with pytest.raises(PipelineError):
        format_prediction_string(np.zeros((2, 19)), ["a"])
    with pytest.raises(PipelineError):
        format_prediction_string(np.zeros((1, 18)), ["a"])
    for bad in (1.5, -0.1, math.nan, math.inf):
        probs = np.zeros((1, 19))
        probs[0, 3] = bad
        with pytest.raises(PipelineError):
            format_prediction_string(probs, ["a"])
    with pytest.raises(PipelineError):
        format_prediction_string(np.zeros((1, 19)), ["a b"])


def test_parse_prediction_string():
    detections = parse_prediction_string("0 0.5 AAA 18 1e-05 BBB")
    assert [(d.cls, d.score, d.mask) for d in detections] == [(0, 0.5, "AAA"), (18, 1e-05, "BBB")]
    assert parse_prediction_string("") == []


def test_write_submission_format(tmp_path):
    path = tmp_path / "sub" / "submission.csv"
    rows = [("idA", 1118, 1600, f"0 0.637833 {GOLDEN[0][0]}"), ("idB", 2048, 2048, "")]
    write_submission(path, rows)
    text = path.read_bytes().decode("ascii")
    assert text == (
        f"ID,ImageWidth,ImageHeight,PredictionString\nidA,1118,1600,0 0.637833 {GOLDEN[0][0]}\nidB,2048,2048,\n"
    )
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left
    table = read_submission(path)
    assert tuple(table.columns) == SUBMISSION_COLUMNS
    assert table["ID"].tolist() == ["idA", "idB"]
    assert table["ImageWidth"].tolist() == [1118, 2048] and table["ImageHeight"].tolist() == [1600, 2048]
    assert table["PredictionString"].tolist() == [rows[0][3], ""]
    # Same input, same bytes.
    write_submission(tmp_path / "again.csv", rows)
    assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()


def test_write_submission_leaves_no_partial_file(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("previous content\n")

    def rows():
        yield ("idA", 10, 10, "")
        raise RuntimeError("crash while producing rows")

    with pytest.raises(RuntimeError):
        write_submission(path, rows())
    assert path.read_text() == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]
    with pytest.raises(PipelineError, match="duplicate image ID idA"):
        write_submission(path, [("idA", 10, 10, ""), ("idA", 10, 10, "")])
    with pytest.raises(PipelineError, match="idB"):
        write_submission(path, [("idB", 0, 10, "")])
    assert path.read_text() == "previous content\n"


def test_read_submission_errors(tmp_path):
    with pytest.raises(InputDataError, match="missing"):
        read_submission(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,ImageWidth,ImageHeight,PredictionString\nx,1,1,\n")
    with pytest.raises(InputDataError, match="header"):
        read_submission(bad)
    bad.write_text("ID,ImageWidth,ImageHeight,PredictionString\nx,wide,1,\n")
    with pytest.raises(InputDataError, match="ID x"):
        read_submission(bad)


# -------------------- validation


def _good_rows():
    labels_a = _synthetic_labels(37, 91, seed=3)
    labels_b = np.zeros((40, 40), np.uint8)
    labels_b[5:15, 5:15] = 1
    rows, expected = [], {}
    for image_id, labels in (("imgA", labels_a), ("imgB", labels_b), ("imgC", np.zeros((16, 16), np.uint8))):
        cells = cells_of(labels)
        probs = np.random.default_rng(len(cells)).random((len(cells), 19))
        rows.append(
            (
                image_id,
                labels.shape[1],
                labels.shape[0],
                format_prediction_string(probs, encode_cell_masks(labels, cells)),
            )
        )
        expected[image_id] = (labels.shape[1], labels.shape[0])
    return rows, expected


def test_validate_accepts_a_good_file(tmp_path):
    rows, expected = _good_rows()
    path = tmp_path / "submission.csv"
    write_submission(path, rows)
    report = validate_submission(path, expected)
    n_cells_a = len(cells_of(_synthetic_labels(37, 91, seed=3)))
    assert report.images == 3
    assert report.cells == n_cells_a + 1
    assert report.detections == 19 * (n_cells_a + 1)
    assert report.empty_images == 1
    assert report.to_dict()["empty_images"] == 1


def _replace_first(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def _mangle_triplet(prediction: str, index: int, value: str) -> str:
    tokens = prediction.split(" ")
    tokens[index] = value
    return " ".join(tokens)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda rows, exp: (rows[:2], exp), "missing: ID imgC"),
        (lambda rows, exp: (rows + [("imgX", 16, 16, "")], exp), r"ID imgX\): unknown image ID"),
        (lambda rows, exp: (rows, {**exp, "imgZ": (8, 8)}), "missing: ID imgZ"),
        (
            lambda rows, exp: ([rows[0], (rows[1][0], 41, 40, rows[1][3]), rows[2]], exp),
            r"ID imgB\): ImageWidth x ImageHeight is 41x40, expected 40x40",
        ),
        (
            lambda rows, exp: (
                [rows[0], (*rows[1][:3], _mangle_triplet(rows[1][3], 2, "@@notbase64@@")), rows[2]],
                exp,
            ),
            r"ID imgB\): detection 1: mask string is not valid base64",
        ),
        (
            lambda rows, exp: (
                [
                    rows[0],
                    (*rows[1][:3], _mangle_triplet(rows[1][3], 5, encode_binary_mask(np.ones((40, 41), bool)))),
                    rows[2],
                ],
                exp,
            ),
            r"ID imgB\): detection 2: RLE covers 1640 pixels",
        ),
        (
            lambda rows, exp: (
                [
                    rows[0],
                    (*rows[1][:3], _mangle_triplet(rows[1][3], 8, encode_binary_mask(np.zeros((40, 40), bool)))),
                    rows[2],
                ],
                exp,
            ),
            r"ID imgB\): detection 3: empty mask",
        ),
        (
            lambda rows, exp: ([rows[0], (*rows[1][:3], _mangle_triplet(rows[1][3], 0, "19")), rows[2]], exp),
            r"ID imgB\): detection 1: class '19'",
        ),
        (
            lambda rows, exp: ([rows[0], (*rows[1][:3], _mangle_triplet(rows[1][3], 0, "1.0")), rows[2]], exp),
            r"ID imgB\): detection 1: class '1.0'",
        ),
        (
            lambda rows, exp: ([rows[0], (*rows[1][:3], _mangle_triplet(rows[1][3], 4, "1.5")), rows[2]], exp),
            r"ID imgB\): detection 2: confidence '1.5'",
        ),
        (
            lambda rows, exp: ([rows[0], (*rows[1][:3], _mangle_triplet(rows[1][3], 4, "nan")), rows[2]], exp),
            r"ID imgB\): detection 2: confidence 'nan'",
        ),
        (
            lambda rows, exp: ([rows[0], (*rows[1][:3], _mangle_triplet(rows[1][3], 4, "high")), rows[2]], exp),
            r"ID imgB\): detection 2: confidence 'high' is not a number",
        ),
        (lambda rows, exp: ([rows[0], (*rows[1][:3], rows[1][3] + " 3"), rows[2]], exp), r"ID imgB\): 58 tokens"),
    ],
    ids=[
        "missing",
        "extra",
        "missing-expected",
        "wrong-size",
        "bad-base64",
        "mask-wrong-size",
        "empty-mask",
        "class-19",
        "class-float",
        "confidence-1.5",
        "confidence-nan",
        "confidence-text",
        "not-triplets",
    ],
)
def test_validate_reports_each_problem_with_the_image_id(tmp_path, mangle, message):
    rows, expected = _good_rows()
    rows, expected = mangle(rows, expected)
    path = tmp_path / "submission.csv"
    path.write_text(
        "ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(f"{i},{w},{h},{p}\n" for i, w, h, p in rows)
    )
    with pytest.raises(InputDataError, match=message):
        validate_submission(path, expected)


def test_validate_duplicates_header_and_problem_list(tmp_path):
    rows, expected = _good_rows()
    path = tmp_path / "submission.csv"
    path.write_text(
        "ID,ImageWidth,ImageHeight,PredictionString\n"
        + "".join(f"{i},{w},{h},{p}\n" for i, w, h, p in rows + rows[1:2])
    )
    with pytest.raises(InputDataError, match="ID imgB: appears 2 times"):
        validate_submission(path, expected)
    # Many problems: listed up to a limit, then counted.
    many = [(f"extra{i}", 4, 4, "") for i in range(30)]
    write_submission(path, rows + many)
    with pytest.raises(InputDataError, match=r"30 problem\(s\)[\s\S]*and 10 more") as info:
        validate_submission(path, expected)
    assert "extra0" in str(info.value) and str(path) in str(info.value)
    path.write_text("ImageID,ImageWidth,ImageHeight,PredictionString\n")
    with pytest.raises(InputDataError, match="header"):
        validate_submission(path, expected)


def test_submission_matches_pandas_to_csv(tmp_path):
    """The original wrote its CSV with pandas (index=False); the bytes are the same."""
    rows, _ = _good_rows()
    ours = tmp_path / "ours.csv"
    write_submission(ours, rows)
    theirs = tmp_path / "theirs.csv"
    pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS)).to_csv(theirs, index=False)
    assert ours.read_bytes() == theirs.read_bytes()
