"""The submission stage on hand-made stores: averaging or combining members, area scaling, encoding, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_rgby
from test_masks import write_masks_store

from hpa_pipeline.data.index import build_index
from hpa_pipeline.data.synth import render_field
from hpa_pipeline.errors import InputDataError, PipelineError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.index import write_index
from hpa_pipeline.io.predictions import PredictionSet, read_predictions, write_predictions
from hpa_pipeline.io.weights import write_member_weights
from hpa_pipeline.kaggle.submission import (
    decode_binary_mask,
    parse_prediction_string,
    read_submission,
)
from hpa_pipeline.nets.models import create_model
from hpa_pipeline.predict import predict_split
from hpa_pipeline.preprocess.crops import crop_shard
from hpa_pipeline.preprocess.masks import resize_masks_shard
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.settings import ModelData, ModelSettings
from hpa_pipeline.submit.submission import area_scale, make_submission
from hpa_pipeline.submit.validation import check_submission


def make_test_set(tmp_path: Path, fields: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Path]:
    """Test-set stores of hand-made fields, their true masks standing in for the segmentation."""
    data = tmp_path / "data"
    for image_id, (channels, _) in fields.items():
        write_rgby(data / "test", image_id, channels)
    (data / "sample_submission.csv").write_text(
        "ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(f"{i},1,1,\n" for i in fields)
    )
    paths = {name: tmp_path / f"{name}.zarr" for name in ("images", "masks", "resized", "cells", "crops")}
    paths["data"], paths["index"] = data, tmp_path / "index.csv"
    write_index(paths["index"], build_index(data / "test", data / "sample_submission.csv", "test", 1))
    ids = list(fields)
    resize_shard(data / "test", ids, [128], [paths["images"]])
    write_masks_store(
        paths["masks"], ids, [mask for _, mask in fields.values()], [mask.shape for _, mask in fields.values()]
    )
    resize_masks_shard(paths["masks"], [128], [paths["resized"]], paths["cells"], "test")
    crop_shard(paths["images"], paths["resized"], paths["cells"], 16, paths["crops"])
    return paths


def untrained_checkpoint(tmp_path: Path, kind: str) -> tuple[ModelSettings, Path]:
    settings = ModelSettings.from_dict(
        dict(
            name=kind,
            kind=kind,
            backbone="test_efficientnet" if kind == "image" else "test_resnet",
            image_size=128,
            crop_size=64 if kind == "image" else None,
            epochs=1,
            batch_size=4,
            lr=1e-3,
            tta=2,
        )
    )
    torch.manual_seed(0)
    path = tmp_path / f"{kind}.pt"
    torch.save({"model": create_model(kind, settings.backbone).state_dict(), "settings": settings.to_dict()}, path)
    return settings, path


@pytest.mark.slow
def test_image_with_more_than_255_cells_flows_to_the_submission(tmp_path):
    many = render_field(np.random.default_rng(0), 640, 960, 300, [0])
    empty = render_field(np.random.default_rng(1), 200, 300, 0, [18])
    fields = {"many": (many.channels, many.cell_mask), "none": (empty.channels, empty.cell_mask)}
    n_cells = len(np.unique(many.cell_mask)) - 1
    assert n_cells > 255 and many.cell_mask.dtype == np.uint16
    paths = make_test_set(tmp_path, fields)
    predictions = []
    for kind in ("image", "cell"):
        settings, checkpoint = untrained_checkpoint(tmp_path, kind)
        data = ModelData(index_paths=[], folds_paths=[], cells_paths=[paths["cells"]])
        if kind == "image":
            data.images_paths, data.masks_paths = [paths["images"]], [paths["resized"]]
        else:
            data.crops_paths = [paths["crops"]]
        predictions.append(tmp_path / f"{kind}_test.zarr")
        predict_split(settings, checkpoint, data, predictions[-1], None, "cpu", 1)
        assert read_predictions(predictions[-1]).n_cells == n_cells
    make_submission(
        predictions, [paths["cells"]], [paths["masks"]], paths["index"], 20000, 8000, tmp_path / "submission.csv"
    )
    report = check_submission(tmp_path / "submission.csv", paths["data"] / "test", paths["index"])
    assert report.cells == n_cells and report.empty_images == 1
    rows = read_submission(tmp_path / "submission.csv").set_index("ID")
    assert (int(rows.loc["many", "ImageWidth"]), int(rows.loc["many", "ImageHeight"])) == (960, 640)
    assert rows.loc["none", "PredictionString"] == ""
    detections = parse_prediction_string(rows.loc["many", "PredictionString"])
    assert len(detections) == 19 * n_cells
    # the last cell's mask is exactly that cell of the original-size mask
    last = np.unique(many.cell_mask)[-1]
    assert np.array_equal(decode_binary_mask(detections[-1].mask, 640, 960), many.cell_mask == last)


def fake_predictions(cells_path: Path, value: float) -> PredictionSet:
    table = read_cell_table(cells_path)
    probs = np.full((table.n_cells, 19, 2), value, np.float32)
    return PredictionSet(table.identity(), probs, np.full((len(table.ids), 19, 2), value, np.float32))


def test_scores_are_the_member_mean_scaled_by_area(tmp_path):
    mask = np.zeros((100, 100), np.uint16)
    mask[0:20, 0:20] = 1  # edge cell, 400 px
    mask[40:60, 40:70] = 2  # centre cell, 600 px
    channels = np.full((4, 100, 100), 30, np.uint8)
    paths = make_test_set(tmp_path, {"img": (channels, mask)})
    for name, value in (("a", 0.2), ("b", 0.6)):
        write_predictions(tmp_path / f"{name}.zarr", fake_predictions(paths["cells"], value))
    make_submission(
        [tmp_path / "a.zarr", tmp_path / "b.zarr"],
        [paths["cells"]],
        [paths["masks"]],
        paths["index"],
        800,
        1200,
        tmp_path / "submission.csv",
    )
    detections = parse_prediction_string(read_submission(tmp_path / "submission.csv").loc[0, "PredictionString"])
    confidences = [d.score for d in detections]
    assert confidences[:19] == pytest.approx([0.4 * 400 / 800] * 19)  # edge: x0.5
    assert confidences[19:] == pytest.approx([0.4 * 600 / 1200] * 19)  # centre: x0.5


def test_predictions_of_other_cells_are_refused(tmp_path):
    mask = np.zeros((64, 64), np.uint16)
    mask[10:30, 10:30] = 1
    paths = make_test_set(tmp_path, {"img": (np.full((4, 64, 64), 30, np.uint8), mask)})
    wrong = fake_predictions(paths["cells"], 0.5)
    wrong.cells.instance = wrong.instance + 1
    write_predictions(tmp_path / "wrong.zarr", wrong)
    with pytest.raises(InputDataError, match="cells of image img differ"):
        make_submission(
            [tmp_path / "wrong.zarr"], [paths["cells"]], [paths["masks"]], paths["index"], 0, 0, tmp_path / "s.csv"
        )
    assert not (tmp_path / "s.csv").exists()


def test_area_scale_examples_from_the_original():
    area = np.array([40_000, 16_000, 100_000, 40_000, 16_000, 1_000])
    edge = np.array([True, False, True, False, True, False])
    scale = area_scale(area, edge, edge_threshold=80_000, center_threshold=32_000)
    np.testing.assert_allclose(scale, [0.5, 0.5, 1.0, 1.0, 0.2, 1_000 / 32_000])
    assert scale.dtype == np.float64


def test_area_scale_thresholds_at_or_below_zero_disable_their_branch():
    area = np.array([40_000, 16_000])
    edge = np.array([True, False])
    np.testing.assert_array_equal(area_scale(area, edge, -1, -1), [1.0, 1.0])
    np.testing.assert_allclose(area_scale(area, edge, 0, 32_000), [1.0, 0.5])
    np.testing.assert_allclose(area_scale(area, edge, 80_000, 0), [0.5, 1.0])
    assert area_scale(np.zeros(0), np.zeros(0, bool), 80_000, 32_000).shape == (0,)
    with pytest.raises(PipelineError):
        area_scale(area, edge[:1], 1, 1)


def test_other_methods_average_each_members_folds_then_combine_the_members(tmp_path):
    mask = np.zeros((100, 100), np.uint16)
    mask[0:20, 0:20] = 1  # edge cell, 400 px: x0.5
    mask[40:60, 40:70] = 2  # centre cell, 600 px: x0.5
    paths = make_test_set(tmp_path, {"img": (np.full((4, 100, 100), 30, np.uint8), mask)})
    stores = []
    for model, values in (("a", (0.2, 0.4)), ("b", (0.6, 0.8))):
        for fold, value in enumerate(values):
            stores.append(tmp_path / f"{model}{fold}.zarr")
            write_predictions(stores[-1], fake_predictions(paths["cells"], value), model=model)
    write_member_weights(tmp_path / "w.csv", ["b", "a"], np.array([0.75, 0.25]), np.zeros(2), 0.0)

    def scores(*combine) -> list[float]:
        out = tmp_path / "submission.csv"
        make_submission(stores, [paths["cells"]], [paths["masks"]], paths["index"], 800, 1200, out, *combine)
        return [d.score for d in parse_prediction_string(read_submission(out).loc[0, "PredictionString"])]

    # members a = 0.3 and b = 0.7 (their folds' means), weighted 0.25 / 0.75
    assert scores("weights", tmp_path / "w.csv") == pytest.approx([(0.25 * 0.3 + 0.75 * 0.7) * 0.5] * 38)
    assert scores("mean") == pytest.approx([0.5 * 0.5] * 38)
    # every cell ties within each member: the ranks leave the mean's values as they are
    assert scores("rank_mean") == pytest.approx([0.5 * 0.5] * 38)
    write_member_weights(tmp_path / "w.csv", ["a", "c"], np.array([0.5, 0.5]), np.zeros(2), 0.0)
    with pytest.raises(InputDataError, match="holds the weights of a, c, not of a, b"):
        scores("weights", tmp_path / "w.csv")
