"""Figures for Snakemake's HTML report: training curves, metrics by stage, segmentation overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from hpa_pipeline.errors import InputDataError  # noqa: E402
from hpa_pipeline.io.files import atomic_file  # noqa: E402
from hpa_pipeline.io.stores import open_store, read_strings  # noqa: E402

#: Curves drawn from a training's metrics.csv, one panel each, when present.
PANELS = (
    ("losses", ("train_loss", "train_class_loss", "train_consistency_loss")),
    ("image level", ("valid_image_map", "valid_image_macro_f1")),
    ("cell level", ("valid_cell_map",)),
)


def _save(figure: plt.Figure, path: Path) -> None:
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_training_curves(metrics_paths: Sequence[Path], labels: Sequence[str], title: str, out_path: Path) -> None:
    """One figure per model: each panel's metrics against the epoch, one line per fold."""
    if len(metrics_paths) != len(labels):
        raise ValueError(f"got {len(metrics_paths)} metrics files but {len(labels)} labels")
    tables = []
    for path in metrics_paths:
        table = pd.read_csv(path)
        if "epoch" not in table:
            raise InputDataError(f"{path}: not a training metrics file (no 'epoch' column)")
        tables.append(table)
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for axis, (panel, columns) in zip(axes, PANELS):
        for table, label in zip(tables, labels):
            for column in columns:
                if column in table and table[column].notna().any():
                    axis.plot(table["epoch"], table[column], marker="o", label=f"{label} {column}")
        axis.set_title(panel)
        axis.set_xlabel("epoch")
        if axis.lines:
            axis.legend(fontsize=7)
    figure.suptitle(title)
    _save(figure, out_path)


def plot_stage_metrics(metrics_tsv: Path, out_path: Path) -> None:
    """Cell-level mAP of every model and ensemble (out-of-fold) and of the submission and the stage
    submissions (test), by stage, with the chance and ceiling references of each split as horizontal lines."""
    table = pd.read_csv(metrics_tsv, sep="\t", dtype={"stage": str}, keep_default_na=False)
    # the task's metric: cell_map (hpa2021-cells), or macro_f1_fitted (hpa2018-images: F1 at the thresholds)
    metric = "cell_map" if "cell_map" in table else "macro_f1_fitted"
    table = table.rename(columns={metric: "cell_map"})
    references = table[table["what"] == "reference"]
    table = table[table["what"] != "reference"].astype({"stage": int})
    table = table.sort_values(["stage", "what", "name"], kind="stable")
    colours = {"model": "tab:blue", "ensemble": "tab:orange", "submission": "tab:green"}
    if "stage_submission" in set(table["what"]):
        colours["stage_submission"] = "tab:purple"
    figure, axis = plt.subplots(figsize=(max(7, 0.55 * len(table) + 2.5), 4.5))
    positions = np.arange(len(table))
    axis.bar(positions, table["cell_map"], color=[colours[what] for what in table["what"]])
    axis.set_xticks(
        positions,
        [f"{name}\n(stage {stage})" for name, stage in zip(table["name"], table["stage"])],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    axis.set_ylabel("cell mAP (IoU 0.6)" if metric == "cell_map" else "image macro F1 (fitted thresholds)")
    # the metric of the weakest row sets the floor: differences between stages are a few points
    lowest = min([*table["cell_map"], *references["cell_map"]], default=0.0)
    axis.set_ylim(max(0.0, np.floor(lowest * 10 - 1) / 10), 1.02)
    handles = [Patch(color=colour, label=what) for what, colour in colours.items()]
    styles = {"train": ":", "test": "--"}
    for reference in references.itertuples():
        handles.append(
            axis.axhline(
                reference.cell_map,
                color="black" if reference.name == "ceiling" else "grey",
                linestyle=styles.get(reference.scored_on, "-"),
                linewidth=1.2,
                label=f"{reference.name} ({reference.scored_on}) {reference.cell_map:.3f}",
            )
        )
    axis.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    tested = "submission and stage submissions" if "stage_submission" in colours else "submission"
    axis.set_title(f"competition metric: models and ensembles out-of-fold (train), {tested} (test)")
    _save(figure, out_path)


def _composite(image: np.ndarray) -> np.ndarray:
    """HPA display colours: red = microtubules (+ ER), green = protein (+ ER), blue = nuclei."""
    red, green, blue, yellow = (plane.astype(np.float32) for plane in image)
    rgb = np.stack([red + yellow / 2, green + yellow / 2, blue], axis=-1)
    return np.clip(rgb / max(float(np.percentile(rgb, 99.8)), 1.0), 0, 1)


def plot_segmentation(images_path: Path, masks_path: Path, out_path: Path, n_images: int = 4) -> None:
    """The first images of a shard with their cell outlines (white) on the RGB composite."""
    images = open_store(images_path, "images")
    masks = open_store(masks_path, "masks_resized")
    ids = read_strings(images, "ids")[:n_images]
    if read_strings(masks, "ids")[: len(ids)] != ids:
        raise InputDataError(f"{masks_path} does not hold the images of {images_path} in the same order")
    figure, axes = plt.subplots(1, max(len(ids), 1), figsize=(4 * max(len(ids), 1), 4.3), squeeze=False)
    for axis, row in zip(axes[0], range(len(ids))):
        rgb = _composite(images["images"][row])
        labels = masks["masks"][row]
        rgb[find_boundaries(labels, mode="inner")] = 1.0
        axis.imshow(rgb)
        axis.set_title(f"{ids[row][:18]}: {len(np.unique(labels)) - 1} cells", fontsize=8)
        axis.axis("off")
    _save(figure, out_path)
