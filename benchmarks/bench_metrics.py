"""Speed of the mask encoding, the submission validator and the competition metric on the real masks.

Prints:

* the time to encode every cell of each 2048x2048 (and the 3072x3072) real mask, with
  ``encode_cell_masks`` (one pass + bounding boxes) and with the naive ``encode_binary_mask(labels == k)``;
* writing a submission (19 classes per cell) and ``validate_submission`` per image;
* ``evaluate_label_masks`` and ``evaluate_submission`` per image.

The predictions are the truth masks shifted by a few pixels with random scores; truth classes are
random. Best of ``--repeat`` runs.

Usage: python benchmarks/bench_metrics.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hpa_pipeline.kaggle.metric import ImageEval, evaluate_label_masks, evaluate_submission
from hpa_pipeline.kaggle.submission import (
    encode_binary_mask,
    encode_cell_masks,
    format_prediction_string,
    validate_submission,
    write_submission,
)
from hpa_pipeline.labels import N_CLASSES

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "hpa_samples" / "kaggle2021_train"
if not SAMPLES.is_dir():  # the checkout may live elsewhere; the shared data does not move
    SAMPLES = Path("/work/shared/realdata/hpa_samples/kaggle2021_train")


def best_time(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    paths = sorted((SAMPLES / "masks").glob("*_predictedmask.png"))
    if not paths:
        raise SystemExit(f"no masks under {SAMPLES / 'masks'}")
    rng = np.random.default_rng(0)
    masks = {path.name.split("-")[0]: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in paths}

    print("encode all cells of one mask (ms)")
    print(f"  {'image':10s} {'size':>9s} {'cells':>5s} {'cell_masks':>10s} {'naive':>8s}")
    for image_id, labels in masks.items():
        cells = np.unique(labels)[1:]
        fast = best_time(lambda labels=labels, cells=cells: encode_cell_masks(labels, cells), args.repeat)
        naive = best_time(lambda labels=labels, cells=cells: [encode_binary_mask(labels == k) for k in cells], 1)
        size = f"{labels.shape[0]}x{labels.shape[1]}"
        print(f"  {image_id:10s} {size:>9s} {len(cells):5d} {fast * 1e3:10.1f} {naive * 1e3:8.1f}")

    items: dict[str, ImageEval] = {}
    rows = []
    for image_id, truth in masks.items():
        cells = [int(c) for c in np.unique(truth) if c]
        classes = {c: sorted(set(rng.integers(0, N_CLASSES, 2).tolist())) for c in cells}
        pred = np.roll(truth, int(rng.integers(0, 30)), axis=1)
        pred_cells = [int(c) for c in np.unique(pred) if c]
        probs = rng.random((len(pred_cells), N_CLASSES))
        items[image_id] = ImageEval(truth, classes, pred, dict(zip(pred_cells, probs)), image_id)
        rows.append(
            (
                image_id,
                truth.shape[1],
                truth.shape[0],
                format_prediction_string(probs, encode_cell_masks(pred, pred_cells)),
            )
        )
    n_images = len(items)
    truth_map = {k: (item.truth_labels, item.truth_classes) for k, item in items.items()}
    expected = {k: (item.truth_labels.shape[1], item.truth_labels.shape[0]) for k, item in items.items()}

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "submission.csv"
        write = best_time(lambda: write_submission(path, rows), args.repeat)
        validate = best_time(lambda: validate_submission(path, expected), args.repeat)
        by_labels = best_time(lambda: evaluate_label_masks(items.values()), args.repeat)
        by_submission = best_time(lambda: evaluate_submission(path, truth_map), args.repeat)
        result_labels = evaluate_label_masks(items.values())
        result_submission = evaluate_submission(path, truth_map)
        size_mb = path.stat().st_size / 1e6

    detections = sum(len(row[3].split()) // 3 for row in rows)
    print(f"\n{n_images} images, {detections} detections, submission {size_mb:.1f} MB (ms per image)")
    print(f"  write_submission       {write / n_images * 1e3:8.2f}")
    print(f"  validate_submission    {validate / n_images * 1e3:8.2f}")
    print(f"  evaluate_label_masks   {by_labels / n_images * 1e3:8.2f}")
    print(f"  evaluate_submission    {by_submission / n_images * 1e3:8.2f}")
    print(f"  mAP (both entry points) {result_labels.map:.6f} / {result_submission.map:.6f}")


if __name__ == "__main__":
    main()
