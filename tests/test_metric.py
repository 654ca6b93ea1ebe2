"""The competition metric: mAP over 19 classes at mask IoU >= 0.6, Open Images Challenge semantics."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.kaggle.metric import (
    MAX_DETECTIONS_PER_CLASS,
    ImageEval,
    _Pool,
    average_precision,
    evaluate_label_masks,
    evaluate_submission,
    label_iou,
)
from hpa_pipeline.kaggle.submission import (
    encode_binary_mask,
    encode_cell_masks,
    format_prediction_string,
    write_submission,
)
from hpa_pipeline.labels import N_CLASSES

_SHARED = Path(__file__).resolve().parents[2] / "shared"
REALDATA = (_SHARED if _SHARED.is_dir() else Path("/work/shared")) / "realdata" / "hpa_samples"
KAGGLE_MASKS = sorted((REALDATA / "kaggle2021_train" / "masks").glob("*_predictedmask.png"))
needs_realdata = pytest.mark.skipif(not KAGGLE_MASKS, reason=f"real sample masks not found under {REALDATA}")


def scores(**per_class: float) -> np.ndarray:
    """A (19,) score vector: zeros except the given classes, e.g. ``scores(c0=0.9, c3=0.2)``."""
    vector = np.zeros(N_CLASSES)
    for key, value in per_class.items():
        vector[int(key[1:])] = value
    return vector


def first_pixels(shape: tuple[int, int], n: int, value: int, labels: np.ndarray | None = None, offset: int = 0):
    """Label the pixels offset..offset+n-1 (row-major) with value: exact, controllable overlaps."""
    labels = np.zeros(shape, dtype=np.uint8) if labels is None else labels
    labels.reshape(-1)[offset : offset + n] = value
    return labels


def strip_image(pred_pixels: int, shape=(10, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Truth cell 1 = the first 100 pixels; predicted cell 1 = the first ``pred_pixels``: IoU = pred_pixels / 100."""
    return first_pixels(shape, 100, 1), first_pixels(shape, pred_pixels, 1)


def write_rows(path: Path, images: dict[str, tuple[np.ndarray, list[tuple[int, float, np.ndarray]]]]) -> Path:
    """Write a submission from explicit detections: ID -> (shape source array, [(class, score, mask)])."""
    rows = []
    for image_id, (like, detections) in images.items():
        prediction = " ".join(f"{cls} {score!r} {encode_binary_mask(mask)}" for cls, score, mask in detections)
        rows.append((image_id, like.shape[1], like.shape[0], prediction))
    write_submission(path, rows)
    return path


def submission_from_items(path: Path, items: dict[str, ImageEval]) -> Path:
    """The submission the pipeline would write for these predicted label masks (cells in ascending order)."""
    rows = []
    for image_id, item in items.items():
        cells = sorted(item.pred_scores)
        probs = np.array([item.pred_scores[c] for c in cells]).reshape(len(cells), N_CLASSES)
        rows.append(
            (
                image_id,
                item.pred_labels.shape[1],
                item.pred_labels.shape[0],
                format_prediction_string(probs, encode_cell_masks(item.pred_labels, cells)),
            )
        )
    write_submission(path, rows)
    return path


def both_ways(tmp_path: Path, items: dict[str, ImageEval]):
    """Score the same predictions with both entry points; they must agree exactly."""
    by_labels = evaluate_label_masks(
        ImageEval(i.truth_labels, i.truth_classes, i.pred_labels, i.pred_scores, k) for k, i in items.items()
    )
    path = submission_from_items(tmp_path / "submission.csv", items)
    by_submission = evaluate_submission(path, {k: (i.truth_labels, i.truth_classes) for k, i in items.items()})
    assert by_labels.ap_per_class == by_submission.ap_per_class
    assert by_labels.map == by_submission.map
    assert by_labels.n_truth_per_class == by_submission.n_truth_per_class
    assert by_labels.n_detections_per_class == by_submission.n_detections_per_class
    return by_labels


# -------------------- AP core


def test_average_precision_hand_computed():
    # TP, FP, TP with N = 3: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> 1/3 * 1 + 1/3 * 2/3 = 5/9.
    assert average_precision(np.array([True, False, True]), 3) == pytest.approx(5 / 9)
    # FP, TP with N = 1: 1/2.
    assert average_precision(np.array([False, True]), 1) == pytest.approx(0.5)
    # Interpolation: FP, TP, TP, N = 2 -> precision 0, 1/2, 2/3, running max from the right 2/3, 2/3, 2/3:
    # recall changes at 1/2 (precision 2/3) and 1 (2/3) -> 2/3.
    assert average_precision(np.array([False, True, True]), 2) == pytest.approx(2 / 3)
    assert average_precision(np.array([True, True]), 2) == 1.0
    assert average_precision(np.zeros(0, bool), 4) == 0.0
    assert average_precision(np.array([False, False]), 1) == 0.0
    with pytest.raises(PipelineError):
        average_precision(np.array([True]), 0)


def test_hand_computed_ranked_list_end_to_end(tmp_path):
    # Three truth cells of class 0; predictions: match (0.9), a cell on background (0.8), match (0.7);
    # the third truth cell is missed. Ranked: TP, FP, TP with N = 3 -> AP 5/9.
    shape = (30, 30)
    truth = np.zeros(shape, np.uint8)
    truth[0:5, 0:5], truth[10:15, 0:5], truth[20:25, 0:5] = 1, 2, 3
    pred = np.zeros(shape, np.uint8)
    pred[0:5, 0:5], pred[0:5, 20:25], pred[10:15, 0:5] = 1, 2, 3
    item = ImageEval(truth, {1: [0], 2: [0], 3: [0]}, pred, {1: scores(c0=0.9), 2: scores(c0=0.8), 3: scores(c0=0.7)})
    result = both_ways(tmp_path, {"img": item})
    assert result.ap_per_class == {0: pytest.approx(5 / 9)}
    assert result.map == pytest.approx(5 / 9)
    assert result.n_truth_per_class[0] == 3


# -------------------- semantics


def test_perfect_prediction_scores_one(tmp_path):
    shape = (40, 50)
    truth = np.zeros(shape, np.uint16)
    truth[0:10, 0:10], truth[15:30, 5:20], truth[5:35, 30:45] = 3, 7, 300
    classes = {3: [0, 16], 7: [5], 300: [16, 18]}  # multi-label cells
    probs = {k: scores(**{f"c{c}": 1.0 for c in v}) for k, v in classes.items()}
    result = both_ways(tmp_path, {"a": ImageEval(truth, classes, truth.copy(), probs)})
    assert result.map == 1.0
    assert result.ap_per_class == {0: 1.0, 5: 1.0, 16: 1.0, 18: 1.0}
    assert result.n_truth_per_class[16] == 2 and result.n_truth_per_class[1] == 0


def test_perfect_masks_any_scores_score_one():
    # Exact masks and a class every cell carries: each detection of it is a TP, whatever its score.
    shape = (20, 20)
    truth = np.zeros(shape, np.uint8)
    truth[0:8, 0:8], truth[10:20, 10:20] = 1, 2
    rng = np.random.default_rng(0)
    item = ImageEval(truth, {1: [2], 2: [2]}, truth, {1: rng.random(19), 2: rng.random(19)})
    assert evaluate_label_masks([item]).map == 1.0


def test_duplicate_detection_of_the_same_cell_is_one_false_positive(tmp_path):
    # Truth: cells A and B of class 0. Detections: A (0.9), a copy of A (0.85), B (0.8).
    # Ranked TP, FP, TP with N = 2: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3 = 5/6.
    truth = np.zeros((20, 20), np.uint8)
    truth[0:5, 0:5], truth[10:15, 10:15] = 1, 2
    a, b = truth == 1, truth == 2
    path = write_rows(tmp_path / "s.csv", {"img": (truth, [(0, 0.9, a), (0, 0.85, a), (0, 0.8, b)])})
    result = evaluate_submission(path, {"img": (truth, {1: [0], 2: [0]})})
    assert result.ap_per_class[0] == pytest.approx(5 / 6)
    assert result.n_detections_per_class[0] == 3
    # Without the duplicate: 1.0. The duplicate at the lowest score costs nothing (FP after full recall).
    path = write_rows(tmp_path / "s.csv", {"img": (truth, [(0, 0.9, a), (0, 0.8, b), (0, 0.1, a)])})
    assert evaluate_submission(path, {"img": (truth, {1: [0], 2: [0]})}).map == 1.0


@pytest.mark.parametrize(("pred_pixels", "is_tp"), [(59, False), (60, True), (61, True), (100, True)])
def test_iou_threshold_is_inclusive_at_0_6(tmp_path, pred_pixels, is_tp):
    truth, pred = strip_image(pred_pixels)
    iou, _, _ = label_iou(truth, np.array([1]), pred, np.array([1]))
    assert iou[0, 0] == pred_pixels / 100
    item = ImageEval(truth, {1: [4]}, pred, {1: scores(c4=0.5)})
    result = both_ways(tmp_path, {"img": item})
    assert result.ap_per_class[4] == (1.0 if is_tp else 0.0)


def test_no_fallback_to_the_second_best_truth_cell(tmp_path):
    # With disjoint truth cells and a threshold >= 0.5 a second match above threshold cannot exist, so
    # the rule shows at a lower threshold: a detection whose best truth cell is taken is a FP even when
    # its second-best cell is free and above threshold.
    truth = np.zeros((10, 20), np.uint8)
    truth[:, 0:10], truth[:, 10:20] = 1, 2
    exact = truth == 1
    straddle = np.zeros_like(exact)
    straddle[:, 3:16] = True  # IoU with cell 1: 70/160 = 0.44 (best), with cell 2: 60/170 = 0.35
    path = write_rows(tmp_path / "s.csv", {"img": (truth, [(0, 0.9, exact), (0, 0.8, straddle)])})
    gt = {"img": (truth, {1: [0], 2: [0]})}
    assert evaluate_submission(path, gt, iou_threshold=0.3).ap_per_class[0] == pytest.approx(0.5)  # TP, FP
    # Alone, the straddling detection takes cell 1 (its best) and is a TP at that threshold.
    path = write_rows(tmp_path / "s.csv", {"img": (truth, [(0, 0.8, straddle)])})
    assert evaluate_submission(path, gt, iou_threshold=0.3).ap_per_class[0] == pytest.approx(0.5)  # TP, N = 2
    assert evaluate_submission(path, gt).ap_per_class[0] == 0.0  # FP at 0.6


def test_prediction_for_a_class_absent_from_the_image_has_no_effect(tmp_path):
    shape = (20, 20)
    truth = np.zeros(shape, np.uint8)
    truth[0:5, 0:5], truth[10:15, 10:15] = 1, 2
    pred = np.zeros(shape, np.uint8)
    pred[0:5, 0:5], pred[15:20, 0:5] = 1, 2  # cell 2 is a false detection
    base = {
        "imgA": ImageEval(truth, {1: [0]}, truth, {1: scores(c0=0.5)}),
        "imgB": ImageEval(truth, {1: [0], 2: [3]}, pred, {1: scores(c0=0.4), 2: scores(c0=0.1)}),
    }
    reference = both_ways(tmp_path, base)
    # Confident predictions of class 3 in imgA (whose truth has no class 3) and of class 7 everywhere.
    noisy = {
        "imgA": ImageEval(truth, {1: [0]}, truth, {1: scores(c0=0.5, c3=0.99, c7=1.0)}),
        "imgB": ImageEval(truth, {1: [0], 2: [3]}, pred, {1: scores(c0=0.4, c7=1.0), 2: scores(c0=0.1, c7=1.0)}),
    }
    result = both_ways(tmp_path, noisy)
    assert result.ap_per_class == reference.ap_per_class
    assert result.n_detections_per_class == reference.n_detections_per_class
    assert result.n_detections_per_class[7] == 0
    # Class 3 is evaluated in imgB only: its two detections there count (1 FP at 0.0, 1 FP at 0.0).
    assert result.n_detections_per_class[3] == 2


def test_classes_without_truth_are_left_out_of_the_mean(tmp_path):
    truth, pred = strip_image(100)
    truth2 = first_pixels((10, 20), 50, 2, labels=truth.copy(), offset=150)
    pred2 = first_pixels((10, 20), 50, 2, labels=pred.copy(), offset=100)  # misses truth cell 2
    item = ImageEval(truth2, {1: [1], 2: [2]}, pred2, {1: scores(c1=0.9), 2: scores(c2=0.9)})
    result = both_ways(tmp_path, {"img": item})
    assert set(result.ap_per_class) == {1, 2}
    assert result.ap_per_class == {1: 1.0, 2: 0.0}
    assert result.map == 0.5  # not 1/19
    assert result.n_truth_per_class == {c: int(c in (1, 2)) for c in range(N_CLASSES)}
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["map"] == 0.5 and payload["ap_per_class"] == {"1": 1.0, "2": 0.0}
    assert payload["classes_scored"] == 2 and payload["class_names"]["18"] == "Negative"


def test_class_with_truth_but_no_detections_scores_zero(tmp_path):
    truth, _ = strip_image(100)
    empty = np.zeros_like(truth)
    result = both_ways(tmp_path, {"img": ImageEval(truth, {1: [6]}, empty, {})})
    assert result.ap_per_class == {6: 0.0} and result.map == 0.0


def test_images_without_truth_only_ignore_their_detections(tmp_path):
    truth, pred = strip_image(100)
    blank = np.zeros_like(truth)
    items = {
        "labelled": ImageEval(truth, {1: [2]}, pred, {1: scores(c2=0.3)}),
        "unlabelled": ImageEval(blank, {}, pred, {1: scores(c2=0.9)}),
    }
    assert both_ways(tmp_path, items).map == 1.0


def test_pooling_over_images(tmp_path):
    # Class 0: imgA TP at 0.9, imgB FP at 0.8 and TP at 0.7, imgC a missed cell: N = 3 -> TP, FP, TP = 5/9.
    shape = (10, 30)
    truth = np.zeros(shape, np.uint8)
    truth[:, 0:10], truth[:, 20:30] = 1, 2
    pred_b = np.zeros(shape, np.uint8)
    pred_b[:, 0:10], pred_b[:, 10:20] = 1, 2
    items = {
        "imgA": ImageEval(first_pixels(shape, 60, 1), {1: [0]}, first_pixels(shape, 60, 1), {1: scores(c0=0.9)}),
        "imgB": ImageEval(truth, {1: [0]}, pred_b, {1: scores(c0=0.7), 2: scores(c0=0.8)}),
        "imgC": ImageEval(truth, {2: [0]}, np.zeros(shape, np.uint8), {}),
    }
    assert both_ways(tmp_path, items).ap_per_class[0] == pytest.approx(5 / 9)


# -------------------- ties, limits


def test_score_ties_between_images_go_to_the_earlier_image(tmp_path):
    # Same score 0.5 for a TP (in "good") and a FP (in "bad", IoU 0.5); both images have one class-0 cell: N = 2.
    truth, pred = strip_image(100)
    _, wrong = strip_image(50)  # IoU 0.5: FP
    good = ImageEval(truth, {1: [0]}, pred, {1: scores(c0=0.5)})
    bad = ImageEval(truth, {1: [0]}, wrong, {1: scores(c0=0.5)})
    # good first: TP, FP -> 1/2 * 1 = 0.5; bad first: FP, TP -> 1/2 * 1/2 = 0.25.
    first = both_ways(tmp_path, {"good": good, "bad": bad})
    assert first.map == pytest.approx(0.5)
    assert both_ways(tmp_path, {"bad": bad, "good": good}).map == pytest.approx(0.25)
    # Deterministic: the same call gives the same result.
    assert both_ways(tmp_path, {"good": good, "bad": bad}) == first


def test_score_ties_within_an_image_follow_detection_order(tmp_path):
    truth, _ = strip_image(100)
    match = truth == 1
    miss = np.zeros_like(match)
    miss.reshape(-1)[100:200] = True  # IoU 0
    gt = {"img": (truth, {1: [0]})}
    path = write_rows(tmp_path / "s.csv", {"img": (truth, [(0, 0.5, match), (0, 0.5, miss)])})
    assert evaluate_submission(path, gt).map == 1.0  # TP, FP
    path = write_rows(tmp_path / "s.csv", {"img": (truth, [(0, 0.5, miss), (0, 0.5, match)])})
    assert evaluate_submission(path, gt).map == 0.5  # FP, TP
    # Label masks: cells in ascending value, as the submission writer lists them.
    pred = np.zeros_like(truth)
    pred[match], pred[miss] = 2, 1
    item = ImageEval(truth, {1: [0]}, pred, {1: scores(c0=0.5), 2: scores(c0=0.5)})
    assert both_ways(tmp_path, {"img": item}).map == 0.5


def test_at_most_10000_detections_per_image_and_class():
    pool = _Pool(0.6)
    n = MAX_DETECTIONS_PER_CLASS + 1
    iou = np.zeros((n, 1))
    iou[-1, 0] = 1.0  # only the lowest-scoring detection matches: it is dropped
    pool.add_image(iou, [[0]], np.zeros(n, np.int64), np.linspace(1, 0, n), np.arange(n))
    result = pool.result()
    assert result.ap_per_class[0] == 0.0 and result.n_detections_per_class[0] == MAX_DETECTIONS_PER_CLASS


# -------------------- both entry points on real masks


@needs_realdata
def test_entry_points_agree_on_real_masks(tmp_path):
    rng = np.random.default_rng(7)
    items = {}
    for path in KAGGLE_MASKS[:4]:
        truth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cells = [int(c) for c in np.unique(truth) if c]
        classes = {c: sorted(set(rng.integers(0, N_CLASSES, rng.integers(1, 3)).tolist())) for c in cells[:-1]}
        # Prediction: the truth shifted by a few pixels (IoUs around the threshold), one cell dropped,
        # one cell split in two; scores random with deliberate ties (rounded to 1 decimal).
        pred = np.roll(truth, int(rng.integers(0, 40)), axis=1).astype(np.uint16)
        pred[pred == cells[0]] = 0
        split = pred == cells[1]
        split[: truth.shape[0] // 2] = False
        pred[split] = 500
        pred_cells = [int(c) for c in np.unique(pred) if c]
        items[path.name[:8]] = ImageEval(
            truth, classes, pred, {c: np.round(rng.random(N_CLASSES), 1) for c in pred_cells}
        )
    result = both_ways(tmp_path, items)
    assert 0.0 < result.map < 1.0


# -------------------- errors


def test_errors_name_the_image(tmp_path):
    truth, pred = strip_image(100)
    with pytest.raises(InputDataError, match="image cellA: truth mask is 10x20 but predicted mask is 20x10"):
        evaluate_label_masks([ImageEval(truth, {1: [0]}, pred.T.copy(), {}, "cellA")])
    with pytest.raises(InputDataError, match="image #0: truth cell 5 has classes but no pixel"):
        evaluate_label_masks([ImageEval(truth, {5: [0]}, pred, {})])
    with pytest.raises(InputDataError, match="image #1: predicted cell 9"):
        evaluate_label_masks([ImageEval(truth, {1: [0]}, pred, {}), ImageEval(truth, {1: [0]}, pred, {9: scores()})])
    with pytest.raises(InputDataError, match="class 19"):
        evaluate_label_masks([ImageEval(truth, {1: [19]}, pred, {})])
    with pytest.raises(InputDataError, match="predicted cell 1 must be 19 finite"):
        evaluate_label_masks([ImageEval(truth, {1: [0]}, pred, {1: np.full(19, np.nan)})])
    with pytest.raises(InputDataError, match="no labelled cell"):
        evaluate_label_masks([ImageEval(truth, {}, pred, {})])

    path = write_rows(tmp_path / "s.csv", {"imgA": (truth, [(0, 0.5, truth == 1)])})
    with pytest.raises(InputDataError, match="missing: ID imgB"):
        evaluate_submission(path, {"imgA": (truth, {1: [0]}), "imgB": (truth, {1: [0]})})
    with pytest.raises(InputDataError, match=r"ID imgA\): ImageWidth x ImageHeight is 20x10, expected 10x20"):
        evaluate_submission(path, {"imgA": (truth.T.copy(), {1: [0]})})
    with pytest.raises(InputDataError, match="image imgA: truth cell 4 does not occur"):
        evaluate_submission(path, {"imgA": (truth, {4: [0]})})


# -------------------- cross-checks


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_iou_matches_brute_force(dtype):
    rng = np.random.default_rng(3)
    for _ in range(30):
        shape = tuple(rng.integers(1, 30, 2))
        truth = rng.integers(0, 12, shape).astype(dtype)
        pred = rng.integers(0, 12, shape).astype(dtype)
        truth_cells = np.unique(rng.integers(1, 15, rng.integers(0, 6)))
        pred_cells = np.unique(rng.integers(1, 15, rng.integers(0, 6)))
        iou, truth_area, pred_area = label_iou(truth, truth_cells, pred, pred_cells)
        for i, p in enumerate(pred_cells):
            assert pred_area[i] == (pred == p).sum()
            for j, t in enumerate(truth_cells):
                union = ((pred == p) | (truth == t)).sum()
                assert iou[i, j] == (((pred == p) & (truth == t)).sum() / union if union else 0.0)
        np.testing.assert_array_equal(truth_area, [(truth == t).sum() for t in truth_cells])


def _naive_map(items: list[ImageEval], threshold: float = 0.6) -> dict[int, float]:
    """Straight transcription of the rules with per-cell boolean masks and Python loops."""
    pooled: dict[int, list[tuple[float, int, int, bool]]] = {}
    n_truth: dict[int, int] = {}
    for image, item in enumerate(items):
        classes = sorted({c for cs in item.truth_classes.values() for c in cs})
        for cls in classes:
            gts = [item.truth_labels == cell for cell in sorted(item.truth_classes) if cls in item.truth_classes[cell]]
            n_truth[cls] = n_truth.get(cls, 0) + len(gts)
            dets = sorted(
                (
                    (float(item.pred_scores[cell][cls]), position, item.pred_labels == cell)
                    for position, cell in enumerate(sorted(item.pred_scores))
                ),
                key=lambda d: (-d[0], d[1]),
            )
            taken: set[int] = set()
            for rank, (score, _, mask) in enumerate(dets):
                ious = [(mask & gt).sum() / (mask | gt).sum() for gt in gts]
                best = int(np.argmax(ious))
                tp = ious[best] >= threshold and best not in taken
                if tp:
                    taken.add(best)
                pooled.setdefault(cls, []).append((score, image, rank, tp))
    result = {}
    for cls, n in n_truth.items():
        ranked = sorted(pooled.get(cls, []), key=lambda d: (-d[0], d[1], d[2]))
        tps = 0
        precision, recall = [0.0], [0.0]
        for k, (_, _, _, tp) in enumerate(ranked, start=1):
            tps += tp
            precision.append(tps / k)
            recall.append(tps / n)
        precision.append(0.0)
        recall.append(1.0)
        for i in range(len(precision) - 2, -1, -1):
            precision[i] = max(precision[i], precision[i + 1])
        result[cls] = sum(
            (recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall)) if recall[i] != recall[i - 1]
        )
    return result


def _random_image(rng: np.random.Generator) -> ImageEval:
    shape = (24, 32)
    truth = np.zeros(shape, np.uint8)
    for cell in range(1, rng.integers(2, 7)):
        r, c = rng.integers(0, 20), rng.integers(0, 28)
        truth[r : r + rng.integers(3, 8), c : c + rng.integers(3, 8)] = cell
    cells = [int(c) for c in np.unique(truth) if c]
    classes = {c: rng.choice(4, rng.integers(0, 3), replace=False).tolist() for c in cells}
    pred = np.roll(truth, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    extra = rng.integers(0, 20), rng.integers(0, 28)
    pred[extra[0] : extra[0] + 4, extra[1] : extra[1] + 4] = 9
    pred_cells = [int(c) for c in np.unique(pred) if c]
    probs = {c: np.round(rng.random(N_CLASSES), 1) for c in pred_cells}  # many ties
    return ImageEval(truth, classes, pred, probs)


def test_matches_a_naive_transcription_on_random_data(tmp_path):
    rng = np.random.default_rng(11)
    for trial in range(25):
        items = [_random_image(rng) for _ in range(rng.integers(1, 5))]
        if not any(cs for item in items for cs in item.truth_classes.values()):
            continue
        expected = _naive_map(items)
        result = both_ways(tmp_path, {f"img{i}": item for i, item in enumerate(items)})
        assert result.ap_per_class.keys() == expected.keys(), trial
        for cls, ap in expected.items():
            assert result.ap_per_class[cls] == pytest.approx(ap, abs=1e-12), (trial, cls)
