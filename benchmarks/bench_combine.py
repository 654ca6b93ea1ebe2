"""Cost of combining members (ensemble.method) and of fitting member weights, on synthetic scores.

    python benchmarks/bench_combine.py [--cells 200000] [--members 4] [--seed 0]

Members are noisy copies of weak labels (every cell of an image carries its labels), each on its own
scale, as calibrations differ between models. Prints the wall time of each method's combination of one
split and of the weight fit, and the fit's scores: each member alone, the equal mean, the fitted weights
(mean AP against the weak labels, the fit's own objective, on the data it was fitted on).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hpa_pipeline.ensemble import fit_member_weights
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.predictions import PredictionSet, combine_predictions
from hpa_pipeline.labels import N_CLASSES


def synthetic_members(n_cells: int, n_members: int, seed: int) -> tuple[list[PredictionSet], np.ndarray]:
    rng = np.random.default_rng(seed)
    cells_per_image = 20
    n_images = n_cells // cells_per_image
    image_labels = rng.random((n_images, N_CLASSES)) < 0.15
    targets = np.repeat(image_labels, cells_per_image, axis=0)
    table = CellTable(
        [f"img{i}" for i in range(n_images)],
        np.arange(0, n_images * cells_per_image + 1, cells_per_image, dtype=np.int64),
        np.tile(np.arange(1, cells_per_image + 1, dtype=np.int32), n_images),
        datasets=["train"] * n_images,
    )
    members = []
    for member in range(n_members):
        noise = rng.normal(0, 0.5 + 0.3 * member, targets.shape)
        scale = 0.1 + 0.9 * member / max(n_members - 1, 1)
        probs = (1 / (1 + np.exp(-(targets * 2.0 - 1.0 + noise)))) * scale
        members.append(PredictionSet(table, probs[:, :, None].astype(np.float32), np.zeros((n_images, N_CLASSES, 1))))
    return members, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    members, targets = synthetic_members(args.cells, args.members, args.seed)
    sources = [f"m{i}" for i in range(args.members)]
    print(f"{args.cells} cells, {args.members} members, {N_CLASSES} classes")
    for method, weights in (("mean", None), ("rank_mean", None), ("weights", np.full(args.members, 1.0))):
        started = time.perf_counter()
        combine_predictions(members, sources, method, weights)
        print(f"combine {method:<9}: {time.perf_counter() - started:6.2f} s")
    started = time.perf_counter()
    fit = fit_member_weights([member.probs[:, :, 0] for member in members], targets, args.seed)
    print(f"fit weights      : {time.perf_counter() - started:6.2f} s -> {np.round(fit.weights, 4).tolist()}")
    print(f"members alone    : {np.round(fit.member_scores, 4).tolist()}")
    print(f"equal mean       : {fit.mean_score:.4f}")
    print(f"fitted weights   : {fit.score:.4f}")


if __name__ == "__main__":
    main()
