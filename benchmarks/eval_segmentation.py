"""Segmentation quality on the real HPA samples against their HPA-CNN cell masks.

Prints, for both ways the pipeline segments images, per-image and pooled recall, precision,
mean best IoU (over reference cells) and predicted vs reference cell counts:

* train path: image resized to 1536x1536 (cv2.INTER_AREA), labelled at scale factor 1.0, labels
  stored at 1536x1536; the reference mask is nearest-resized to 1536x1536.
* test path: original image, scale factor 0.5, labels stored at the original resolution.

A reference cell is matched when some predicted cell overlaps it with IoU >= 0.6 (at that
threshold a match is necessarily one-to-one).

Usage: python benchmarks/eval_segmentation.py [--backend classical] [--paths train test]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hpa_pipeline.io.channels import read_rgby
from hpa_pipeline.preprocess.segment import MapProducer, create_producer, segment_image

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "hpa_samples" / "kaggle2021_train"
if not SAMPLES.is_dir():  # the checkout may live elsewhere; the shared data does not move
    SAMPLES = Path("/work/shared/realdata/hpa_samples/kaggle2021_train")
IOU_THRESHOLD = 0.6
TRAIN_SIZE = 1536
PATHS = {"train": 1.0, "test": 0.5}  # path -> label_cell scale factor


@dataclass
class Match:
    """Matching of one predicted label image against its reference."""

    n_ref: int
    n_pred: int
    matched: int
    best_iou: np.ndarray  # per reference cell

    @property
    def recall(self) -> float:
        return self.matched / self.n_ref if self.n_ref else float("nan")

    @property
    def precision(self) -> float:
        return self.matched / self.n_pred if self.n_pred else float("nan")


def match_cells(reference: np.ndarray, predicted: np.ndarray, threshold: float = IOU_THRESHOLD) -> Match:
    """Match the cells of two label images of equal shape by IoU.

    Args:
        reference: (H, W) integer labels, 0 background.
        predicted: (H, W) integer labels, 0 background.
        threshold: IoU a pair needs to count as matched (>= 0.5 keeps matches one-to-one).

    Returns:
        Counts of reference, predicted and matched cells, and each reference cell's best IoU.
    """
    if reference.shape != predicted.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, predicted {predicted.shape}")
    # Compact the ids so the contingency table stays small whatever the label values are.
    ref_ids, ref = np.unique(reference, return_inverse=True)
    pred_ids, pred = np.unique(predicted, return_inverse=True)
    n_r, n_p = len(ref_ids), len(pred_ids)
    table = np.bincount(ref.ravel() * n_p + pred.ravel(), minlength=n_r * n_p).reshape(n_r, n_p)
    # Drop the background row/column when present (ids are sorted, so 0 comes first).
    if ref_ids[0] == 0:
        table = table[1:]
    if pred_ids[0] == 0:
        table = table[:, 1:]
    ref_area = np.bincount(ref.ravel(), minlength=n_r)[int(ref_ids[0] == 0) :]
    pred_area = np.bincount(pred.ravel(), minlength=n_p)[int(pred_ids[0] == 0) :]
    if table.size == 0:
        return Match(len(ref_area), len(pred_area), 0, np.zeros(len(ref_area)))
    iou = table / (ref_area[:, None] + pred_area[None, :] - table)
    best_ref = iou.max(axis=1)
    matched = int((best_ref >= threshold).sum())
    return Match(len(ref_area), len(pred_area), matched, best_ref)


def sample_ids() -> list[str]:
    return sorted(p.name.removesuffix("_predictedmask.png") for p in (SAMPLES / "masks").glob("*_predictedmask.png"))


def load_sample(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The (4, H, W) uint8 image and the (H, W) reference labels of one sample."""
    rgby = read_rgby(SAMPLES / "images", image_id)
    mask = cv2.imread(str(SAMPLES / "masks" / f"{image_id}_predictedmask.png"), cv2.IMREAD_UNCHANGED)
    return rgby, mask


def path_inputs(rgby: np.ndarray, reference: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Image and reference as the given pipeline path sees them."""
    if path == "test":
        return rgby, reference
    size = (TRAIN_SIZE, TRAIN_SIZE)
    image = np.stack([cv2.resize(plane, size, interpolation=cv2.INTER_AREA) for plane in rgby])
    return image, cv2.resize(reference, size, interpolation=cv2.INTER_NEAREST_EXACT)


def evaluate(producer: MapProducer, paths: list[str], verbose: bool = True) -> dict[str, Match]:
    """Per-path pooled matches (and per-image lines when verbose)."""
    samples = {image_id: load_sample(image_id) for image_id in sample_ids()}
    pooled: dict[str, Match] = {}
    for path in paths:
        scale = PATHS[path]
        total = Match(0, 0, 0, np.zeros(0))
        if verbose:
            print(f"\n{path} path (scale factor {scale}):")
            print(
                f"  {'image':10s} {'size':>9s} {'ref':>4s} {'pred':>4s} {'match':>5s} "
                f"{'recall':>6s} {'prec':>6s} {'mIoU':>5s} {'sec':>5s}"
            )
        for image_id, (rgby, reference) in samples.items():
            image, ref = path_inputs(rgby, reference, path)
            start = time.perf_counter()
            labels = segment_image(image, producer, scale)
            seconds = time.perf_counter() - start
            m = match_cells(ref, labels)
            total = Match(
                total.n_ref + m.n_ref,
                total.n_pred + m.n_pred,
                total.matched + m.matched,
                np.concatenate([total.best_iou, m.best_iou]),
            )
            if verbose:
                print(
                    f"  {image_id[:8]:10s} {image.shape[2]:>4d}x{image.shape[1]:<4d} {m.n_ref:4d} {m.n_pred:4d} "
                    f"{m.matched:5d} {m.recall:6.3f} {m.precision:6.3f} {m.best_iou.mean():5.3f} {seconds:5.2f}"
                )
        pooled[path] = total
        if verbose:
            print(
                f"  {'pooled':10s} {'':9s} {total.n_ref:4d} {total.n_pred:4d} {total.matched:5d} "
                f"{total.recall:6.3f} {total.precision:6.3f} {total.best_iou.mean():5.3f}"
            )
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="classical")
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["train", "test"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    producer = create_producer(args.backend, threads=args.threads)
    evaluate(producer, args.paths)


if __name__ == "__main__":
    main()
