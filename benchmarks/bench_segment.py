"""Seconds per image of segmentation on the real 2048x2048 HPA samples, for both pipeline paths.

* train path: the image resized to 1536x1536 (not timed), labelled at scale factor 1.0 (2048 px),
  labels back at 1536.
* test path: the original 2048x2048 image, labelled at scale factor 0.5 (1024 px), labels at 2048.

"producer" is the map producer's ``predict``; "label_cell" is everything after it (map resize to
the labelling shape, label_cell, label resize), i.e. what ``segment_image`` adds.

Usage: python benchmarks/bench_segment.py [--threads 1] [--repeats 3] [--images N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
from eval_segmentation import load_sample, sample_ids

from hpa_pipeline.preprocess.label_cell import label_cell
from hpa_pipeline.preprocess.segment import create_producer, labelling_shape

PATHS = {"train": (1.0, 1536), "test": (0.5, None)}  # path -> (scale factor, input size or original)


def time_image(rgby: np.ndarray, producer, scale: float) -> tuple[float, float, int]:
    """(producer seconds, post-processing seconds, number of cells) for one image."""
    start = time.perf_counter()
    maps = producer.predict(rgby)
    middle = time.perf_counter()
    h, w = labelling_shape(rgby.shape[1:], scale)
    nuclei = cv2.resize(maps.nuclei, (w, h), interpolation=cv2.INTER_AREA)
    cell = cv2.resize(maps.cell, (w, h), interpolation=cv2.INTER_AREA)
    labels = label_cell(nuclei, cell, scale)
    labels = cv2.resize(labels, (rgby.shape[2], rgby.shape[1]), interpolation=cv2.INTER_NEAREST_EXACT)
    end = time.perf_counter()
    return middle - start, end - middle, int(labels.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (create_producer's threads)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per image; the fastest counts")
    parser.add_argument("--images", type=int, default=0, help="use only the first N images (0 = all 2048 px ones)")
    args = parser.parse_args()

    producer = create_producer("classical", threads=args.threads)
    images = []
    for image_id in sample_ids():
        rgby, _ = load_sample(image_id)
        if rgby.shape[1:] == (2048, 2048):
            images.append((image_id, rgby))
    if args.images:
        images = images[: args.images]
    print(f"classical producer, {len(images)} images of 2048x2048, threads={args.threads}, best of {args.repeats}")
    for path, (scale, size) in PATHS.items():
        produce, post = [], []
        for image_id, rgby in images:
            if size is not None:
                rgby = np.stack([cv2.resize(plane, (size, size), interpolation=cv2.INTER_AREA) for plane in rgby])
            runs = [time_image(rgby, producer, scale) for _ in range(args.repeats)]
            produce.append(min(r[0] for r in runs))
            post.append(min(r[1] for r in runs))
            print(
                f"  {path:5s} {image_id[:8]} input {rgby.shape[2]}x{rgby.shape[1]}: producer {produce[-1]:.3f} s, "
                f"label_cell {post[-1]:.3f} s, {runs[0][2]} cells"
            )
        total = [a + b for a, b in zip(produce, post)]
        print(
            f"{path} path (s = {scale}): producer {statistics.mean(produce):.3f} s/img, "
            f"label_cell {statistics.mean(post):.3f} s/img, total {statistics.mean(total):.3f} s/img "
            f"(median {statistics.median(total):.3f}, max {max(total):.3f})"
        )


if __name__ == "__main__":
    main()
