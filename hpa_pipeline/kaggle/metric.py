"""The HPA-SCC 2021 competition metric: mAP over the 19 classes at mask IoU >= 0.6, Open Images semantics.

Semantics (those of the TF Object Detection API ``OpenImagesChallengeEvaluator`` the host ran, restated in
``shared/reference/hpacellseg_metric.md`` section 3.4):

* Ground truth: every labelled cell of an image is one instance per class it carries (same mask).
  An image's *evaluatable* classes are the classes of its ground truth; detections of any other class
  are discarded (neither true nor false positives).
* Per image and evaluatable class, detections are sorted by confidence (at most 10,000 kept). In that
  order each detection takes the ground-truth cell of that class with the highest mask IoU; it is a true
  positive if that IoU is >= 0.6 and the cell is not taken yet (the cell is then taken), otherwise a false
  positive. There is no fall-back to the second-best cell.
* Per class, the (confidence, TP/FP) pairs of all images are pooled and ranked by confidence; with N the
  number of ground-truth instances of the class, precision_k = TP_k / k and recall_k = TP_k / N. AP is
  the area under the interpolated curve: recall 0 / precision 0 prepended, recall 1 / precision 0 appended,
  precision made non-increasing from the right, summed over the points where recall changes. A class
  with ground truth but no true positive scores 0.
* mAP is the mean AP over the classes with N > 0; classes without ground truth are left out.

Group-of ground truth (Open Images' ``IsGroupOf``) is not implemented: HPA ground truth has none.

Ties: the original's order among equal confidences is whatever its (unstable) sort returned. Here it is
fixed: within an image, equal confidences keep detection order (cell order, and class order within a
cell, i.e. the order of the prediction string; for label masks, ascending cell value); when pooling, equal
confidences are ordered by image (the order in which images are given) and then by their rank in the image.
The result is therefore a deterministic function of the inputs.

Two entry points share one AP core: :func:`evaluate_label_masks` (predicted cells as a label image plus a
score vector per cell; IoUs from one pair-counting pass over the two label images) and
:func:`evaluate_submission` (a submission CSV against truth label masks; predicted masks are RLE-decoded and
may overlap, IoUs from pycocotools on RLEs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.kaggle.submission import cell_rles, format_problems, scan_submission
from hpa_pipeline.labels import CLASS_NAMES, N_CLASSES

#: Mask IoU a detection needs to be a true positive.
IOU_THRESHOLD: float = 0.6
#: Detections kept per image and class after sorting (the Open Images evaluator's NMS output limit).
MAX_DETECTIONS_PER_CLASS: int = 10_000


@dataclass
class ImageEval:
    """One image for :func:`evaluate_label_masks`.

    Attributes:
        truth_labels: (H, W) integer label image of the ground-truth cells (0 = background).
        truth_classes: ground-truth cell value -> its classes (0..18). Cells of the label image that are not
            keys, or have an empty list, are not ground truth.
        pred_labels: (H, W) integer label image of the predicted cells, same shape as ``truth_labels``.
        pred_scores: predicted cell value -> (19,) confidences. Each entry is 19 detections (one per class)
            with that cell's mask; cells of ``pred_labels`` that are not keys are ignored.
        image_id: name used in error messages (default: the item's position).
    """

    truth_labels: np.ndarray
    truth_classes: Mapping[int, Sequence[int]]
    pred_labels: np.ndarray
    pred_scores: Mapping[int, np.ndarray]
    image_id: str = ""


@dataclass(frozen=True)
class MetricResult:
    """The competition score and its parts."""

    map: float
    ap_per_class: dict[int, float]  # only classes with ground truth
    n_truth_per_class: dict[int, int]  # all 19 classes
    n_detections_per_class: dict[int, int]  # detections evaluated (in images where the class is evaluatable)
    n_images: int
    iou_threshold: float = IOU_THRESHOLD
    class_names: tuple[str, ...] = field(default=CLASS_NAMES, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready form (class keys as strings, with names)."""
        return {
            "map": self.map,
            "iou_threshold": self.iou_threshold,
            "n_images": self.n_images,
            "classes_scored": len(self.ap_per_class),
            "ap_per_class": {str(c): ap for c, ap in self.ap_per_class.items()},
            "n_truth_per_class": {str(c): n for c, n in self.n_truth_per_class.items()},
            "n_detections_per_class": {str(c): n for c, n in self.n_detections_per_class.items()},
            "class_names": {str(c): name for c, name in enumerate(self.class_names)},
        }


def average_precision(tp: np.ndarray, n_truth: int) -> float:
    """Open Images AP of detections already ranked by confidence.

    Args:
        tp: bool per detection in rank order (True = true positive).
        n_truth: number of ground-truth instances of the class (> 0).
    """
    if n_truth <= 0:
        raise PipelineError("average_precision: a class without ground truth has no AP")
    tp = np.asarray(tp, dtype=bool)
    tp_cum = np.cumsum(tp, dtype=np.float64)
    precision = tp_cum / np.arange(1, tp.size + 1, dtype=np.float64)
    recall = tp_cum / float(n_truth)
    precision = np.concatenate(([0.0], precision, [0.0]))
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changed = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[changed] - recall[changed - 1]) * precision[changed]))


class _Pool:
    """Matches each image's detections and pools them per class."""

    def __init__(self, iou_threshold: float) -> None:
        self.iou_threshold = float(iou_threshold)
        self.n_truth = np.zeros(N_CLASSES, dtype=np.int64)
        self.parts: list[list[tuple[np.ndarray, np.ndarray, int]]] = [[] for _ in range(N_CLASSES)]
        self.n_images = 0

    def add_image(
        self,
        iou: np.ndarray,
        truth_classes: Sequence[Sequence[int]],
        det_class: np.ndarray,
        det_score: np.ndarray,
        det_mask: np.ndarray,
        image_rank: int | None = None,
    ) -> None:
        """Add one image.

        Args:
            iou: (n_masks, n_truth) IoU of each predicted mask with each ground-truth cell.
            truth_classes: classes of each ground-truth cell (columns of ``iou``).
            det_class, det_score, det_mask: per detection, in detection order: class, confidence and
                row of ``iou``.
            image_rank: where the image goes among equal confidences of other images (default: the
                order of the calls).
        """
        image = self.n_images if image_rank is None else int(image_rank)
        self.n_images += 1
        truth_of_class: dict[int, list[int]] = {}
        for column, classes in enumerate(truth_classes):
            for cls in classes:
                truth_of_class.setdefault(int(cls), []).append(column)
        for cls, columns in truth_of_class.items():
            self.n_truth[cls] += len(columns)
            selected = np.flatnonzero(det_class == cls)
            if selected.size == 0:
                continue
            # Confidence descending, ties in detection order (lexsort: last key is primary).
            order = selected[np.lexsort((selected, -det_score[selected]))][:MAX_DETECTIONS_PER_CLASS]
            overlaps = iou[np.ix_(det_mask[order], columns)]
            best = np.argmax(overlaps, axis=1)
            best_iou = overlaps[np.arange(order.size), best]
            candidates = np.flatnonzero(best_iou >= self.iou_threshold)
            tp = np.zeros(order.size, dtype=bool)
            # The first candidate (in rank order) for each ground-truth cell takes it; later ones are FPs.
            _, first = np.unique(best[candidates], return_index=True)
            tp[candidates[first]] = True
            self.parts[cls].append((det_score[order].astype(np.float64), tp, image))

    def result(self) -> MetricResult:
        if self.n_truth.sum() == 0:
            raise InputDataError("the ground truth has no labelled cell: nothing to score")
        ap_per_class: dict[int, float] = {}
        n_detections: dict[int, int] = {}
        for cls in range(N_CLASSES):
            parts = self.parts[cls]
            n_detections[cls] = int(sum(part[1].size for part in parts))
            if self.n_truth[cls] == 0:
                continue
            if parts:
                scores = np.concatenate([part[0] for part in parts])
                tp = np.concatenate([part[1] for part in parts])
                images = np.concatenate([np.full(part[1].size, part[2]) for part in parts])
                ranks = np.concatenate([np.arange(part[1].size) for part in parts])
                tp = tp[np.lexsort((ranks, images, -scores))]
            else:
                tp = np.zeros(0, dtype=bool)
            ap_per_class[cls] = average_precision(tp, int(self.n_truth[cls]))
        return MetricResult(
            map=float(np.mean(list(ap_per_class.values()))),
            ap_per_class=ap_per_class,
            n_truth_per_class={cls: int(n) for cls, n in enumerate(self.n_truth)},
            n_detections_per_class=n_detections,
            n_images=self.n_images,
            iou_threshold=self.iou_threshold,
        )


def _clean_truth_classes(truth_classes: Mapping[int, Sequence[int]], where: str) -> dict[int, list[int]]:
    """Cells with at least one class, ascending cell value; classes checked and de-duplicated."""
    cleaned: dict[int, list[int]] = {}
    for cell in sorted(truth_classes):
        classes = list(dict.fromkeys(int(c) for c in truth_classes[cell]))
        bad = [c for c in classes if not 0 <= c < N_CLASSES]
        if bad:
            raise InputDataError(f"{where}: truth cell {cell} has class {bad[0]} (classes are 0..{N_CLASSES - 1})")
        if int(cell) <= 0:
            raise InputDataError(f"{where}: truth cell value {cell} is not a positive integer")
        if classes:
            cleaned[int(cell)] = classes
    return cleaned


def _compact(labels: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Map the given cell values to 1..n and everything else to 0 (one gather over the image)."""
    top = int(labels.max()) if labels.size else 0
    lut = np.zeros(top + 1, dtype=np.intp)
    inside = cells <= top
    lut[cells[inside]] = np.flatnonzero(inside) + 1
    return lut[labels]


def _pair_counts(truth_labels: np.ndarray, pred_labels: np.ndarray, truth_cells: np.ndarray, pred_cells: np.ndarray):
    """(pixel counts of (truth value, predicted value) pairs, with row/column 0 = any other value)."""
    if (
        truth_labels.dtype == np.uint8
        and pred_labels.dtype == np.uint8
        and truth_labels.size <= 1 << 24  # float32 histogram counts stay exact
    ):
        # 8-bit masks (the Kaggle ones): a 256x256 joint histogram of the raw values, ~8x faster than bincount.
        hist = cv2.calcHist(
            [np.ascontiguousarray(truth_labels), np.ascontiguousarray(pred_labels)],
            [0, 1],
            None,
            [256, 256],
            [0, 256, 0, 256],
        ).astype(np.int64)
        hist = np.pad(hist, ((0, 1), (0, 1)))  # index 256 = a cell value that cannot occur: zero counts
        rows = np.concatenate(([0], np.minimum(truth_cells, 256)))
        cols = np.concatenate(([0], np.minimum(pred_cells, 256)))
        counts = hist[np.ix_(rows, cols)]
        # Row/column 0 must hold everything outside the listed cells, for the areas below.
        counts[0, :] = hist[:, cols].sum(axis=0) - counts[1:, :].sum(axis=0)
        counts[:, 0] = hist[rows, :].sum(axis=1) - counts[:, 1:].sum(axis=1)
        return counts
    n_truth, n_pred = truth_cells.size, pred_cells.size
    pairs = _compact(truth_labels, truth_cells) * (n_pred + 1)
    pairs += _compact(pred_labels, pred_cells)
    return np.bincount(pairs.ravel(), minlength=(n_truth + 1) * (n_pred + 1)).reshape(n_truth + 1, n_pred + 1)


def label_iou(
    truth_labels: np.ndarray, truth_cells: np.ndarray, pred_labels: np.ndarray, pred_cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask IoU of every predicted cell with every truth cell, from one pass of pair counting.

    Args:
        truth_labels, pred_labels: (H, W) integer label images of the same shape.
        truth_cells, pred_cells: distinct positive cell values to compare (int64).

    Returns:
        (iou of shape (n_pred, n_truth), truth cell areas, predicted cell areas).
    """
    counts = _pair_counts(truth_labels, pred_labels, truth_cells, pred_cells)
    truth_area = counts[1:].sum(axis=1)
    pred_area = counts[:, 1:].sum(axis=0)
    intersection = counts[1:, 1:].T.astype(np.float64)
    union = pred_area[:, None] + truth_area[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, 0.0)
    return iou, truth_area, pred_area


def _check_labels(labels: np.ndarray, what: str, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise InputDataError(f"{where}: {what} must be a 2-D integer label image, got {labels.dtype} {labels.shape}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputDataError(f"{where}: {what} has negative values")
    return labels


def evaluate_label_masks(items: Iterable[ImageEval], iou_threshold: float = IOU_THRESHOLD) -> MetricResult:
    """Score predicted cells given as label images against truth label images.

    Args:
        items: the images (see :class:`ImageEval`); ties between images go to the earlier one.
        iou_threshold: mask IoU needed for a true positive (the competition: 0.6).

    Raises:
        InputDataError: shapes differ, a listed cell does not occur in its label image, a class is outside
            0..18, a score vector is not 19 finite numbers, or there is no ground truth at all. The message
            names the image.
    """
    pool = _Pool(iou_threshold)
    for index, item in enumerate(items):
        where = f"image {item.image_id or f'#{index}'}"
        truth_labels = _check_labels(item.truth_labels, "truth label image", where)
        pred_labels = _check_labels(item.pred_labels, "predicted label image", where)
        if truth_labels.shape != pred_labels.shape:
            raise InputDataError(
                f"{where}: truth mask is {truth_labels.shape[0]}x{truth_labels.shape[1]} but predicted mask is "
                f"{pred_labels.shape[0]}x{pred_labels.shape[1]} (resize them to the same resolution first)"
            )
        truth = _clean_truth_classes(item.truth_classes, where)
        truth_cells = np.fromiter(truth, dtype=np.int64, count=len(truth))
        pred_cells = np.array(sorted(int(k) for k in item.pred_scores), dtype=np.int64)
        if pred_cells.size and pred_cells[0] <= 0:
            raise InputDataError(f"{where}: predicted cell value {pred_cells[0]} is not a positive integer")
        scores = np.zeros((pred_cells.size, N_CLASSES), dtype=np.float64)
        for row, cell in enumerate(pred_cells):
            vector = np.asarray(item.pred_scores[cell], dtype=np.float64)
            if vector.shape != (N_CLASSES,) or not np.isfinite(vector).all():
                raise InputDataError(f"{where}: scores of predicted cell {cell} must be {N_CLASSES} finite numbers")
            scores[row] = vector
        iou, truth_area, pred_area = label_iou(truth_labels, truth_cells, pred_labels, pred_cells)
        if (truth_area == 0).any():
            raise InputDataError(
                f"{where}: truth cell {truth_cells[truth_area == 0][0]} has classes but no pixel in the truth mask"
            )
        if (pred_area == 0).any():
            raise InputDataError(
                f"{where}: predicted cell {pred_cells[pred_area == 0][0]} has scores but no pixel in the predicted mask"
            )
        # Detection order = prediction-string order: cell by cell, classes 0..18 within a cell.
        pool.add_image(
            iou,
            list(truth.values()),
            det_class=np.tile(np.arange(N_CLASSES), pred_cells.size),
            det_score=scores.ravel(),
            det_mask=np.repeat(np.arange(pred_cells.size), N_CLASSES),
        )
    return pool.result()


def evaluate_submission(
    submission_path: str | Path,
    truth: Mapping[str, tuple[np.ndarray, Mapping[int, Sequence[int]]]],
    iou_threshold: float = IOU_THRESHOLD,
) -> MetricResult:
    """Score a submission CSV against ground-truth label masks, as the competition did.

    Args:
        submission_path: the CSV. It is checked like :func:`hpa_pipeline.kaggle.submission.validate_submission`,
            with the truth masks' sizes as the expected image sizes (one row per truth image, no other rows).
        truth: image ID -> (truth label mask at the image's true resolution, cell value -> classes). Ties
            between images go to the earlier one in this mapping's order.
        iou_threshold: mask IoU needed for a true positive (the competition: 0.6).

    Raises:
        InputDataError: the submission is invalid (its problems listed, with image IDs), or the truth is.
    """
    expected: dict[str, tuple[int, int]] = {}
    position: dict[str, int] = {}
    for image_id, (truth_labels, _) in truth.items():
        truth_labels = _check_labels(truth_labels, "truth label image", f"image {image_id}")
        expected[image_id] = (truth_labels.shape[1], truth_labels.shape[0])
        position[image_id] = len(position)
    pool = _Pool(iou_threshold)

    def score_image(image_id: str, detections: list, pred_rles: list[dict], det_mask: np.ndarray) -> None:
        where = f"image {image_id}"
        truth_labels, truth_classes = truth[image_id]
        cells = _clean_truth_classes(truth_classes, where)
        try:
            truth_rles = cell_rles(np.asarray(truth_labels), list(cells))
        except InputDataError as exc:
            raise InputDataError(f"{where}: truth {exc} (it has classes)") from None
        if pred_rles and truth_rles:
            iou = np.asarray(mask_utils.iou(pred_rles, truth_rles, [0] * len(truth_rles)), dtype=np.float64)
        else:
            iou = np.zeros((len(pred_rles), len(truth_rles)), dtype=np.float64)
        pool.add_image(
            iou,
            list(cells.values()),
            det_class=np.array([d.cls for d in detections], dtype=np.int64),
            det_score=np.array([d.score for d in detections], dtype=np.float64),
            det_mask=det_mask,
            image_rank=position[image_id],
        )

    _, problems = scan_submission(submission_path, expected, on_image=score_image)
    if problems:
        raise InputDataError(format_problems(submission_path, problems))
    return pool.result()
