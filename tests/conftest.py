"""Shared fixtures: paths to the real HPA samples and small hand-made datasets."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def _find_realdata() -> Path:
    """The shared real samples: $HPA_REALDATA, else ../shared next to the checkout, else /work/shared."""
    candidates = [
        os.environ.get("HPA_REALDATA"),
        REPO.parent / "shared/realdata/hpa_samples",
        "/work/shared/realdata/hpa_samples",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return REPO.parent / "shared/realdata/hpa_samples"


REALDATA = _find_realdata()
REAL_IMAGES = REALDATA / "kaggle2021_train" / "images"
REAL_MASKS = REALDATA / "kaggle2021_train" / "masks"
REAL_16BIT = REALDATA / "hpa_public_1000_A12_2" / "1000_A12_2_green.png"
CHANNELS = ("red", "green", "blue", "yellow")


def real_image_ids() -> list[str]:
    """IDs of the real Kaggle 2021 samples (empty when the shared folder is absent)."""
    return sorted({path.name.rsplit("_", 1)[0] for path in REAL_IMAGES.glob("*_blue.png")})


requires_realdata = pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason=f"real samples not found at {REALDATA}")


def write_rgby(directory: Path, image_id: str, image: np.ndarray) -> None:
    """Write a (4, H, W) uint8/uint16 image as four channel PNGs."""
    directory.mkdir(parents=True, exist_ok=True)
    for channel, plane in zip(CHANNELS, image):
        assert cv2.imwrite(str(directory / f"{image_id}_{channel}.png"), plane)


def blob_image(
    height: int, width: int, centers: list[tuple[int, int]], radius: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A (4, H, W) image of round cells with nuclei and the matching label mask."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.uint16)
    image = rng.integers(0, 8, size=(4, height, width)).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for k, (cy, cx) in enumerate(centers, start=1):
        distance = np.hypot(yy - cy, xx - cx)
        cell = distance < radius
        labels[cell] = k
        image[0][cell] = 90
        image[3][cell] = 70
        image[1][cell] = 20 + 10 * k
        image[2][distance < radius / 2] = 200
    return image, labels


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A Kaggle-layout dataset of five 96x96 train images and two test images (one non-square)."""
    root = tmp_path / "dataset"
    rows = []
    for i in range(5):
        image, _ = blob_image(96, 96, [(30, 30), (60, 66)], radius=16, seed=i)
        write_rgby(root / "train", f"img{i}", image)
        rows.append(f"img{i},{i % 3}|18" if i == 4 else f"img{i},{i % 3}")
    (root / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    write_rgby(root / "test", "test0", blob_image(96, 96, [(40, 40)], radius=16)[0])
    write_rgby(root / "test", "test1", blob_image(80, 120, [(40, 60)], radius=16)[0])
    (root / "sample_submission.csv").write_text(
        "ID,ImageWidth,ImageHeight,PredictionString\n"
        "test0,96,96,0 1 eNoLCAgIMAEABJkBdQ==\ntest1,120,80,0 1 eNoLCAgIMAEABJkBdQ==\n"
    )
    return root


@pytest.fixture(scope="session")
def demo_stores(tmp_path_factory) -> dict:
    """Preprocessed stores of a small synthetic dataset (2 train shards, 1 test shard), built with the
    package's own stage functions: the inputs of the learning-core tests."""
    from hpa_pipeline.data.index import build_index
    from hpa_pipeline.data.synth import write_demo_dataset
    from hpa_pipeline.io.folds import write_folds
    from hpa_pipeline.io.index import shard_ids, write_index
    from hpa_pipeline.labels import labels_to_matrix, parse_labels
    from hpa_pipeline.preprocess.crops import crop_shard
    from hpa_pipeline.preprocess.masks import resize_masks_shard, segment_shard
    from hpa_pipeline.preprocess.resize import resize_shard
    from hpa_pipeline.preprocess.segment import create_producer
    from hpa_pipeline.train.folds import make_folds

    root = tmp_path_factory.mktemp("demo_stores")
    data = root / "data"
    write_demo_dataset(data, n_train=10, n_test=3, image_size=256, cells_per_image=(4, 8), seed=3, progress=False)
    producer = create_producer("classical")
    paths: dict = {"root": root, "data": data, "size": 96, "crop_size": 24, "n_shards": {"train": 2, "test": 1}}
    for dataset, table in (("train", "train.csv"), ("test", "sample_submission.csv")):
        n_shards = paths["n_shards"][dataset]
        index = build_index(data / dataset, data / table, dataset, n_shards)
        write_index(root / dataset / "index.csv", index)
        for shard in range(n_shards):
            ids = shard_ids(index, shard)
            base = root / dataset
            resize_shard(data / dataset, ids, [96], [base / f"images_96/shard-{shard}.zarr"])
            segment_shard(ids, base / f"masks/shard-{shard}.zarr", producer, 0.125, image_dir=data / dataset)
            resize_masks_shard(
                base / f"masks/shard-{shard}.zarr",
                [96],
                [base / f"masks_96/shard-{shard}.zarr"],
                base / f"cells/shard-{shard}.zarr",
                dataset,
            )
            crop_shard(
                base / f"images_96/shard-{shard}.zarr",
                base / f"masks_96/shard-{shard}.zarr",
                base / f"cells/shard-{shard}.zarr",
                24,
                base / f"crops_96/shard-{shard}.zarr",
            )
        if dataset == "train":
            labels = labels_to_matrix([parse_labels(text) for text in index["Label"]])
            write_folds(root / "folds" / "train.csv", index["ID"].tolist(), make_folds(labels, 2, 0))
    return paths


def store_paths(stores: dict, dataset: str, kind: str) -> list[Path]:
    """The shard stores of one kind (``cells``, ``images_96``, ``masks_96``, ``crops_96``)."""
    return [stores["root"] / dataset / kind / f"shard-{shard}.zarr" for shard in range(stores["n_shards"][dataset])]


@pytest.fixture(scope="session", autouse=True)
def demo_in_background(request, tmp_path_factory):
    """The whole demo, as the README says (`snakemake submission --configfile configs/demo.yaml --cores 2`, in a
    copy of the workflow), started before the first test when a selected test needs it: the tests that come
    before those run meanwhile. None when no selected test needs it."""
    if not any("demo_run" in item.fixturenames for item in request.session.items):
        yield None
        return
    from workflow_helpers import BackgroundRun, copy_workflow

    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    run = BackgroundRun(workdir, "submission", "--configfile", "configs/demo.yaml", "--cores", "2")
    yield run
    run.stop()


@pytest.fixture(scope="session")
def demo_run(demo_in_background) -> Path:
    """The finished demo run's directory (once per session)."""
    return demo_in_background.wait()


class PixelwiseCAM(nn.Module):
    """A CAM model whose output is a pixel-wise function of the input (a 1x1 conv, stride 1): pooling,
    D4 views and CutMix commute with it exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 19, kernel_size=1, bias=False)

    def forward(self, x):
        return self.conv(x)


def write_random_bundle(run: Path, task: str = "hpa2021-cells") -> Path:
    """A bundle of random-weight members written from a run's own files (final.pt, thresholds, index) into
    ``run/bundle``: for hpa2021-cells a CAM and a cell model, for hpa2018-images a CAM model and a
    gap_gmp model; two folds each, 64 px, 2 TTA views."""
    import pandas as pd
    import torch

    from hpa_pipeline.bundle import write_bundle
    from hpa_pipeline.io.index import write_index
    from hpa_pipeline.io.thresholds import write_thresholds
    from hpa_pipeline.labels import class_names
    from hpa_pipeline.nets.models import create_model_from_settings
    from hpa_pipeline.settings import ModelSettings
    from hpa_pipeline.train.checkpoints import write_outputs

    common = dict(epochs=1, batch_size=2, lr=1e-3, n_folds=2, seed=7, tta=2, task=task)
    cam = ModelSettings(name="cam", kind="image", backbone="test_resnet", image_size=64, crop_size=32, **common)
    if task == "hpa2018-images":
        second = ModelSettings(
            name="gap", kind="image", backbone="test_efficientnet", image_size=64, crop_size=32, head="gap_gmp",
            **common,
        )  # fmt: skip
    else:
        second = ModelSettings(name="cell", kind="cell", backbone="test_efficientnet", image_size=64, **common)
    checkpoints = []
    for settings in (cam, second):
        for fold in range(2):
            torch.manual_seed(fold)
            model = create_model_from_settings(settings)
            out = run / f"results/models/{settings.name}/fold{fold}"
            write_outputs(
                out, model=model, settings=settings, fold=fold, metrics=[], device="cpu", threads=1, inputs=[]
            )
            checkpoints.append(out / "final.pt")
    names = class_names(task)
    write_thresholds(run / "thresholds.csv", np.full(len(names), 0.5), names, np.full(len(names), np.nan), "f1")
    write_index(run / "index.csv", pd.DataFrame({"ID": ["a"], "shard": 0, "Label": "0", "dataset": "train"}))
    cell_settings = {}
    if task != "hpa2018-images":
        cell_settings = dict(
            crop_image_sizes=[64], crop_size=16, edge_area_threshold=300, center_area_threshold=200,
            segment={"backend": "classical", "source": "original", "scale_factor": 0.125},
        )  # fmt: skip
    write_bundle(run / "bundle", checkpoints, run / "thresholds.csv", [run / "index.csv"], [64], **cell_settings)
    return run / "bundle"
