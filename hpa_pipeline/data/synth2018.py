"""Synthetic data of the 2018 image task in Kaggle's 2018 layout: ``train/{Id}_{color}.png``, ``train.csv``
(``Id,Target``, space-separated classes 0..27), ``test/``, ``sample_submission.csv`` (``Id,Predicted``) and
the test labels in ``truth/test.csv`` (same columns as ``train.csv``), for the 2018 demo and tests.

The fields are drawn by the 2021 generator (:func:`hpa_pipeline.data.synth.render_field`): each of the 28
classes is shown with the 2021 pattern closest to it (e.g. 11 Intermediate filaments with 8, 8 Peroxisomes
with 17 Vesicles). Classes that share a pattern are told apart by a change of the green channel
(``_VARIANTS``: dimmer, blurred, sharper-contrast, dilated), so every class has its own look; an image
never holds two classes of one pattern, nor two altered looks. Class frequencies follow the 2018 training
set's skew (Nucleoplasm and Cytosol common, Rods & rings rare), smoothed so that every class occurs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hpa_pipeline.data.synth import _image_id, _write_csv, _write_png, dataset_folder, render_field
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.folders import SYNTHETIC_MARKER
from hpa_pipeline.labels import CLASS_NAMES_2018

N_CLASSES_2018 = len(CLASS_NAMES_2018)

#: 2018 class -> (2021 pattern class that draws it, look variant of the green channel).
PATTERN: dict[int, tuple[int, int]] = {
    0: (0, 0), 1: (1, 0), 2: (2, 0), 3: (3, 0), 4: (4, 0), 5: (5, 0), 6: (6, 0), 7: (7, 0),
    8: (17, 1), 9: (17, 2), 10: (17, 3), 11: (8, 0), 12: (9, 0), 13: (9, 1), 14: (10, 0), 15: (10, 1),
    16: (10, 2), 17: (11, 0), 18: (12, 1), 19: (12, 0), 20: (17, 4), 21: (13, 0), 22: (13, 1), 23: (14, 0),
    24: (15, 0), 25: (16, 0), 26: (17, 0), 27: (17, 5),
}  # fmt: skip

#: Share of the 2018 training images carrying each class (Kaggle's train.csv, rounded).
FREQUENCY: tuple[float, ...] = (
    0.41, 0.04, 0.12, 0.05, 0.06, 0.08, 0.03, 0.09, 0.002, 0.001, 0.001, 0.04, 0.02, 0.02, 0.04, 0.001,
    0.02, 0.01, 0.03, 0.05, 0.01, 0.12, 0.03, 0.09, 0.02, 0.27, 0.01, 0.001,
)  # fmt: skip


def _variant(green: np.ndarray, variant: int) -> np.ndarray:
    """The green channel in one of the looks that tell classes of one pattern apart."""
    plane = green.astype(np.float32)
    if variant == 1:
        plane = plane * 0.45
    elif variant == 2:
        plane = cv2.GaussianBlur(plane, (0, 0), 2.0)
    elif variant == 3:
        plane = cv2.GaussianBlur(plane, (0, 0), 2.0) * 0.45
    elif variant == 4:
        plane = plane**2 / 255.0 * 1.8
    elif variant == 5:
        plane = cv2.dilate(plane, np.ones((3, 3), np.uint8))
    return np.clip(plane, 0, 255).astype(np.uint8)


def image_classes_2018(rng: np.random.Generator, primary: int) -> list[int]:
    """The primary class plus 0-2 others drawn by (smoothed) 2018 frequency, one class per pattern and
    at most one altered look per image."""
    weights = np.sqrt(np.asarray(FREQUENCY))
    chosen = [primary]
    for _ in range(int(rng.choice([0, 1, 2], p=[0.45, 0.35, 0.2]))):
        patterns = {PATTERN[c][0] for c in chosen}
        altered = any(PATTERN[c][1] for c in chosen)
        pool = [
            c
            for c in range(N_CLASSES_2018)
            if PATTERN[c][0] not in patterns and not (altered and PATTERN[c][1]) and PATTERN[c][0] != 11
        ]
        if not pool:
            break
        p = weights[pool] / weights[pool].sum()
        chosen.append(int(rng.choice(pool, p=p)))
    return sorted(chosen)


def render_image_2018(
    rng: np.random.Generator, size: int, n_cells: int, classes: list[int]
) -> tuple[np.ndarray, list[int]]:
    """One (4, size, size) uint8 field showing ``classes``; returns it with the classes some cell shows."""
    patterns = sorted({PATTERN[c][0] for c in classes})
    field = render_field(rng, size, size, n_cells, patterns)
    channels = field.channels.copy()
    variant = max(PATTERN[c][1] for c in classes)
    if variant:
        channels[1] = _variant(channels[1], variant)
    shown = [c for c in classes if PATTERN[c][0] in field.image_labels] or [classes[0]]
    return channels, shown


def write_demo_dataset_2018(
    out_dir: str | Path,
    *,
    n_train: int,
    n_test: int,
    image_size: int = 256,
    cells_per_image: tuple[int, int] = (4, 8),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Write a synthetic 2018-layout dataset into ``out_dir`` (atomically: a temporary sibling renamed).

    Args:
        out_dir: the dataset folder; must not exist unless ``overwrite``.
        n_train, n_test: number of train and test images.
        image_size: side of the square fields (Kaggle's 2018 images are 512 px).
        cells_per_image: inclusive range of cells per field.
        seed: the same seed gives byte-identical files.
        overwrite: replace an existing ``out_dir`` unless it holds images this generator did not write.
        progress: show a progress bar.
    """
    out_dir = Path(out_dir)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"need n_train, n_test >= 1 (got {n_train}, {n_test})")
    with dataset_folder(out_dir, overwrite) as tmp:
        for sub in ("train", "test", "truth"):
            (tmp / sub).mkdir(parents=True)
        tables: dict[str, list[list[object]]] = {"train": [], "test": []}
        plan = [(split, index) for split, count in (("train", n_train), ("test", n_test)) for index in range(count)]
        for split, index in tqdm(plan, desc="synthetic 2018 fields", unit="field", disable=not progress):
            # cycle through a seeded order of the 28 classes, so any 28 consecutive images show every class
            order = np.random.default_rng([seed, 2018, split == "test", 1000]).permutation(N_CLASSES_2018)
            rng = np.random.default_rng([seed, 2018, split == "test", index])
            classes = image_classes_2018(rng, int(order[index % N_CLASSES_2018]))
            n_cells = int(rng.integers(cells_per_image[0], cells_per_image[1] + 1))
            channels, shown = render_image_2018(rng, image_size, n_cells, classes)
            image_id = _image_id(seed + 2018, split, index)
            for channel, plane in zip(CHANNELS, channels):
                _write_png(tmp / split / f"{image_id}_{channel}.png", plane)
            tables[split].append([image_id, " ".join(str(c) for c in shown)])
        _write_csv(tmp / "train.csv", ["Id", "Target"], tables["train"])
        _write_csv(tmp / "sample_submission.csv", ["Id", "Predicted"], [[row[0], "0"] for row in tables["test"]])
        _write_csv(tmp / "truth" / "test.csv", ["Id", "Target"], tables["test"])
        (tmp / SYNTHETIC_MARKER).write_text(
            f"Synthetic 2018-layout dataset written by hpa_pipeline.data.synth2018 (seed {seed}, {n_train} train "
            f"and {n_test} test images).\nThe workflow may replace this folder; without this file it is treated "
            "as real data.\n",
            encoding="utf-8",
        )
