import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import store_paths

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.predictions import PredictionSet, write_predictions
from hpa_pipeline.labels import NEGATIVE
from hpa_pipeline.settings import ModelData, ModelSettings
from hpa_pipeline.train.datasets import cell_targets_from_images
from hpa_pipeline.train.loop import Trainer, train_model

IMAGE_SETTINGS = dict(
    name="cam",
    kind="image",
    backbone="test_efficientnet",
    image_size=96,
    crop_size=64,
    epochs=2,
    batch_size=4,
    lr=1e-3,
    seed=0,
    n_folds=2,
    warmup_epochs=1,
    tta=2,
)
CELL_SETTINGS = dict(
    name="cell",
    kind="cell",
    backbone="test_resnet",
    image_size=96,
    epochs=2,
    batch_size=8,
    lr=1e-3,
    seed=0,
    n_folds=2,
    warmup_epochs=1,
    tta=2,
)


def training_data(stores, kind: str, **extra) -> ModelData:
    root = stores["root"]
    data = ModelData(
        index_paths=[root / "train/index.csv"],
        folds_paths=[root / "folds/train.csv"],
        cells_paths=store_paths(stores, "train", "cells"),
        **extra,
    )
    if kind == "image":
        data.images_paths = store_paths(stores, "train", "images_96")
        data.masks_paths = store_paths(stores, "train", "masks_96")
    else:
        data.crops_paths = store_paths(stores, "train", "crops_96")
    return data


def read_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("settings", [IMAGE_SETTINGS, CELL_SETTINGS], ids=["image", "cell"])
def test_training_writes_model_metrics_and_resolved_config(demo_stores, tmp_path, settings):
    model_settings = ModelSettings.from_dict(settings)
    train_model(
        model_settings, 1, training_data(demo_stores, settings["kind"]), tmp_path / "out", tmp_path / "ckpt", "cpu", 1
    )
    rows = read_rows(tmp_path / "out" / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for column in ("lr", "train_loss", "valid_image_map", "valid_image_macro_f1", "valid_cell_map"):
        assert column in rows[0]
    assert float(rows[0]["lr"]) == pytest.approx(1e-4)  # warm-up factor 0.1 in epoch 1
    run = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert run["settings"] == model_settings.to_dict() and run["fold"] == 1 and run["seed"] == 0
    assert {"torch", "timm", "numpy", "hpa_pipeline"} <= set(run["versions"])
    final = torch.load(tmp_path / "out" / "final.pt", weights_only=False)
    assert final["settings"]["backbone"] == settings["backbone"] and final["fold"] == 1
    assert (tmp_path / "ckpt" / "last.pt").is_file()


def run_training_cli(stores, settings: dict, out: Path, checkpoint: Path) -> subprocess.Popen:
    data = training_data(stores, "image")
    command = [
        sys.executable,
        "-m",
        "hpa_pipeline.cli",
        "train",
        "--settings",
        json.dumps(settings),
        "--fold",
        "0",
        "--index",
        *map(str, data.index_paths),
        "--folds",
        *map(str, data.folds_paths),
        "--cells",
        *map(str, data.cells_paths),
        "--images",
        *map(str, data.images_paths),
        "--masks",
        *map(str, data.masks_paths),
        "--checkpoint-dir",
        str(checkpoint),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_weights(path: Path) -> dict:
    return torch.load(path, weights_only=False)["model"]


@pytest.mark.slow
def test_killed_training_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(demo_stores, tmp_path):
    settings = dict(IMAGE_SETTINGS, epochs=4, validate_every=10)
    uninterrupted = run_training_cli(demo_stores, settings, tmp_path / "a", tmp_path / "ckpt_a")
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stdout.read()

    killed = run_training_cli(demo_stores, settings, tmp_path / "b", tmp_path / "ckpt_b")
    checkpoint = tmp_path / "ckpt_b" / "last.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    assert not (tmp_path / "b" / "final.pt").exists()
    done = torch.load(checkpoint, weights_only=False)["epoch"]
    assert done < 3

    resumed = run_training_cli(demo_stores, settings, tmp_path / "b", tmp_path / "ckpt_b")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert f"resuming from {checkpoint} after epoch {done + 1}" in output
    a, b = final_weights(tmp_path / "a" / "final.pt"), final_weights(tmp_path / "b" / "final.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert len(read_rows(tmp_path / "b" / "metrics.csv")) == 4


def test_unknown_backbone_is_a_clear_error(demo_stores, tmp_path):
    settings = ModelSettings.from_dict(dict(IMAGE_SETTINGS, backbone="efficientnet_b99"))
    with pytest.raises(ConfigError, match="efficientnet_b99"):
        train_model(settings, 0, training_data(demo_stores, "image"), tmp_path / "o", tmp_path / "c", "cpu", 1)


def test_missing_store_is_a_clear_error(demo_stores, tmp_path):
    data = training_data(demo_stores, "image")
    data.masks_paths = [tmp_path / "nowhere.zarr"]
    with pytest.raises(InputDataError, match="missing Zarr store .*nowhere.zarr"):
        train_model(ModelSettings.from_dict(IMAGE_SETTINGS), 0, data, tmp_path / "o", tmp_path / "c", "cpu", 1)
    assert not (tmp_path / "o").exists()


def _final_weights(path: Path) -> dict:
    return torch.load(path / "final.pt", weights_only=False)["model"]


def test_channels_last_changes_nothing_on_the_cpu(demo_stores, tmp_path):
    data = training_data(demo_stores, "image")
    for flag in (True, False):
        settings = ModelSettings.from_dict(dict(IMAGE_SETTINGS, epochs=1, channels_last=flag))
        train_model(settings, 0, data, tmp_path / str(flag), tmp_path / f"ckpt{flag}", "cpu", 1)
    on, off = _final_weights(tmp_path / "True"), _final_weights(tmp_path / "False")
    assert on.keys() == off.keys() and all(torch.equal(on[key], off[key]) for key in on)
    losses = [read_rows(tmp_path / str(flag) / "metrics.csv")[0]["train_loss"] for flag in (True, False)]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_compiled_training_matches_eager_training(demo_stores, tmp_path):
    pytest.importorskip("torch._inductor")
    data = training_data(demo_stores, "cell")
    for flag in (True, False):
        settings = ModelSettings.from_dict(dict(CELL_SETTINGS, epochs=1, compile=flag))
        train_model(settings, 0, data, tmp_path / str(flag), tmp_path / f"ckpt{flag}", "cpu", 1)
    compiled, eager = _final_weights(tmp_path / "True"), _final_weights(tmp_path / "False")
    assert compiled.keys() == eager.keys()  # the checkpoint holds the plain model's names, not _orig_mod.*
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- the image-level task

IMAGE_TASK_SETTINGS = dict(
    IMAGE_SETTINGS,
    name="gapgmp",
    backbone="test_resnet",
    task="hpa2018-images",
    head="gap_gmp",
    loss={"focal": 1.0, "lovasz_hinge": 0.5, "hard_example": 1.0},
)


def image_task_data(stores) -> ModelData:
    """The demo stores' images, index and folds (their 19-class labels are valid 2018 labels); no cells."""
    root = stores["root"]
    return ModelData(
        index_paths=[root / "train/index.csv"],
        folds_paths=[root / "folds/train.csv"],
        cells_paths=[],
        images_paths=store_paths(stores, "train", "images_96"),
    )


def test_swa_of_the_last_epoch_only_keeps_its_weights_and_recomputes_batchnorm(demo_stores, tmp_path):
    """Averaging one epoch's weights is those weights: only the BatchNorm statistics change."""
    outputs = {}
    for name, swa in (("plain", None), ("swa", {"start_epoch": 2, "every": 1})):
        settings = ModelSettings.from_dict(dict(IMAGE_TASK_SETTINGS, swa=swa))
        train_model(settings, 0, image_task_data(demo_stores), tmp_path / name, tmp_path / f"{name}-ckpt")
        outputs[name] = torch.load(tmp_path / name / "final.pt", weights_only=False)["model"]
    plain, averaged = outputs["plain"], outputs["swa"]
    assert plain.keys() == averaged.keys() and any(key.startswith("head.") for key in plain)
    statistics = [key for key in plain if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics
    for key in plain:
        if key not in statistics:
            assert torch.equal(plain[key], averaged[key]), key
    assert any(not torch.equal(plain[key], averaged[key]) for key in statistics if "running" in key)
    rows = list(csv.DictReader((tmp_path / "swa" / "metrics.csv").read_text().splitlines()))
    assert rows[-1]["swa_epochs"] == "1" and rows[-1]["swa_valid_image_macro_f1"] != ""
    assert "valid_cell_map" not in rows[-1] and "train_consistency_loss" not in rows[-1]
    assert "swa" in torch.load(tmp_path / "swa-ckpt" / "last.pt", weights_only=False)  # resumable


def test_image_task_refuses_cell_models():
    with pytest.raises(ConfigError, match="image models only"):
        ModelSettings.from_dict(dict(CELL_SETTINGS, task="hpa2018-images"))


@pytest.mark.parametrize("kind", ["image", "cell"])
def test_pseudo_labels_reach_training_sharpened_held_to_and_mixed_with_the_image_labels(demo_stores, tmp_path, kind):
    cells = read_cell_table(store_paths(demo_stores, "train", "cells")).identity()
    probs = np.random.default_rng(0).random((cells.n_cells, 19, 2)).astype(np.float32)
    image_probs = np.zeros((len(cells.ids), 19, 2), np.float32)
    write_predictions(tmp_path / "oof.zarr", PredictionSet(cells, probs, image_probs))
    common = IMAGE_SETTINGS if kind == "image" else CELL_SETTINGS
    settings = ModelSettings(
        **common,
        pseudo_labels="stage1",
        pseudo_label_sharpening=3.0,
        pseudo_labels_within_image_labels=True,
        pseudo_label_weight=0.75,
    )
    trainer = Trainer(
        settings, 0, training_data(demo_stores, kind, pseudo_labels=tmp_path / "oof.zarr"), torch.device("cpu"), 1
    )
    mean = probs.astype(np.float64).mean(axis=2)
    sharpened = mean**3 / (mean**3 + (1 - mean) ** 3)
    image_labels = cell_targets_from_images(trainer.cells, trainer.images.labels)
    allowed = image_labels > 0
    allowed[:, NEGATIVE] = True
    expected = 0.75 * np.where(allowed, sharpened, 0.0) + 0.25 * image_labels
    np.testing.assert_allclose(trainer.cell_targets, expected, rtol=1e-5, atol=1e-7)
    assert 0 < (trainer.cell_targets == 0).mean() < 1
