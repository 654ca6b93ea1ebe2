"""The report's figures: training curves, the metrics by stage with their references, segmentation overlays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import store_paths

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.report import plot_segmentation, plot_stage_metrics, plot_training_curves

METRICS_HEADER = "what\tname\tstage\tscored_on\tcell_map\n"


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a PNG"
    return image


#: matplotlib's first colours (BGR, as OpenCV decodes them): the first, second and third line of a
#: panel; the bars of models, ensembles and the submission.
BLUE, ORANGE, GREEN = (180, 119, 31), (14, 127, 255), (44, 160, 44)


def blobs(image: np.ndarray, colour: tuple[int, int, int], min_height: int = 20) -> list[tuple[int, int, int, int]]:
    """(left, top, width, height) of the areas of exactly ``colour`` at least ``min_height`` pixels high
    (lines and bars; legend swatches are smaller), left to right."""
    mask = np.all(image == colour, axis=2).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return sorted(tuple(int(v) for v in stat[:4]) for stat in stats[1:] if stat[3] >= min_height)


def write_training_metrics(path: Path, losses: list[float]) -> Path:
    rows = [f"{epoch},{loss},{1 - loss / 2},{0.5 - loss / 4}" for epoch, loss in enumerate(losses, start=1)]
    path.write_text("epoch,train_loss,valid_image_map,valid_cell_map\n" + "\n".join(rows) + "\n")
    return path


def test_training_curves_draw_every_fold(tmp_path):
    # the folds agree for two epochs; in the third fold 0 ends with the lower loss and the higher maps
    folds = [write_training_metrics(tmp_path / f"fold{fold}.csv", [0.9, 0.6, 0.4 + fold / 10]) for fold in range(2)]
    out = tmp_path / "curves.png"
    plot_training_curves(folds, ["fold0", "fold1"], "cam_tiny", out)
    image = read_png(out)
    assert len(list(tmp_path.glob(".*"))) == 0  # no temporary file left beside it
    width = image.shape[1]
    losses, image_level, cell_level = (image[:, panel * width // 3 : (panel + 1) * width // 3] for panel in range(3))
    for panel in (losses, image_level, cell_level):
        # one curve per fold, no third one
        assert (len(blobs(panel, BLUE)), len(blobs(panel, ORANGE)), len(blobs(panel, GREEN))) == (1, 1, 0)
    (_, fold0_top, _, fold0_height), (_, fold1_top, _, fold1_height) = blobs(losses, BLUE)[0], blobs(losses, ORANGE)[0]
    assert fold0_top + fold0_height > fold1_top + fold1_height  # fold 0's last loss is drawn lower
    for panel in (image_level, cell_level):
        assert blobs(panel, BLUE)[0][1] < blobs(panel, ORANGE)[0][1]  # and its last maps higher


def test_training_curves_refuse_mismatched_labels_and_foreign_files(tmp_path):
    fold = write_training_metrics(tmp_path / "fold0.csv", [0.9, 0.5])
    with pytest.raises(ValueError, match="1 metrics files but 2 labels"):
        plot_training_curves([fold], ["fold0", "fold1"], "m", tmp_path / "out.png")
    foreign = tmp_path / "other.csv"
    foreign.write_text("step,loss\n1,0.5\n")
    with pytest.raises(InputDataError, match="other.csv: not a training metrics file"):
        plot_training_curves([foreign], ["fold0"], "m", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("with_references", [True, False])
def test_stage_metrics_with_and_without_references(tmp_path, with_references):
    rows = [
        "model\tcam\t1\tout-of-fold (train)\t0.80",
        "ensemble\tstage1\t1\tout-of-fold (train)\t0.82",
        "model\tcell\t2\tout-of-fold (train)\t0.84",
        "submission\tsubmission.csv\t2\ttest\t0.85",
    ]
    if with_references:
        rows += ["reference\tchance\t\ttrain\t0.75", "reference\tceiling\t\ttrain\t0.99"]
    table = tmp_path / "metrics.tsv"
    table.write_text(METRICS_HEADER + "\n".join(rows) + "\n")
    out = tmp_path / "metrics.png"
    plot_stage_metrics(table, out)
    image = read_png(out)
    bars = sorted(
        (left, colour, top, height) for colour in (BLUE, ORANGE, GREEN) for left, top, _, height in blobs(image, colour)
    )
    # by stage, then ensembles before models: stage1, cam | cell, submission
    assert [colour for _, colour, _, _ in bars] == [ORANGE, BLUE, BLUE, GREEN]
    assert len({top + height for _, _, top, height in bars}) == 1  # on one baseline
    # the axis starts a tenth below the weakest row, the chance reference when drawn: heights tell
    floor = 0.6 if with_references else 0.7
    values = [0.82, 0.80, 0.84, 0.85]
    pixels_per_unit = bars[-1][3] / (values[-1] - floor)
    for (_, _, _, height), value in zip(bars, values):
        assert abs(height - (value - floor) * pixels_per_unit) <= 2, (height, value)


def test_segmentation_overlay_outlines_cells(demo_stores, tmp_path):
    images = store_paths(demo_stores, "train", "images_96")[0]
    masks = store_paths(demo_stores, "train", "masks_96")[0]
    out = tmp_path / "overlay.png"
    plot_segmentation(images, masks, out, n_images=2)
    image = read_png(out)
    assert image.shape[1] > image.shape[0]  # two images side by side
    first = image[:, : image.shape[1] // 2]
    height, width = first.shape[:2]
    inside = first[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4]  # within the first image
    assert (inside == 255).all(axis=2).sum() > 50  # white cell outlines


def test_segmentation_overlay_refuses_masks_of_other_images(demo_stores, tmp_path):
    images = store_paths(demo_stores, "train", "images_96")[0]
    other_masks = store_paths(demo_stores, "train", "masks_96")[1]
    with pytest.raises(InputDataError, match="does not hold the images"):
        plot_segmentation(images, other_masks, tmp_path / "overlay.png")
    assert not (tmp_path / "overlay.png").exists()
