"""Bad input through the real workflow: each case gives a clear error naming the culprit and leaves
no partial output, or (where the input is merely unusual) works."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from workflow_helpers import copy_workflow, small_config, snakemake

from hpa_pipeline.data.synth import write_demo_dataset
from hpa_pipeline.io.stores import open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "data"
    write_demo_dataset(root, n_train=4, n_test=2, image_size=256, cells_per_image=(4, 8), seed=11, progress=False)
    return root


def workflow(tmp_path: Path, clean_dataset: Path) -> tuple[Path, Path]:
    """A workflow copy whose config points at a private copy of the small dataset."""
    workdir = copy_workflow(tmp_path / "work")
    data = tmp_path / "data"
    shutil.copytree(clean_dataset, data)
    small_config(workdir, data, "bad.yaml")
    return workdir, data


def first_id(data: Path, split: str = "train") -> str:
    return sorted(path.name.rsplit("_", 1)[0] for path in (data / split).glob("*_blue.png"))[0]


def preprocess(workdir: Path, check: bool = False):
    return snakemake(workdir, "preprocess", "--configfile", "configs/bad.yaml", "--cores", "2", check=check)


def failure_text(workdir: Path, result) -> str:
    logs = "".join(path.read_text() for path in (workdir / "logs").rglob("*.log") if path.is_file())
    return result.stdout + result.stderr + logs


def assert_no_partial_output(workdir: Path, missing: list[str]) -> None:
    for relative in missing:
        assert not (workdir / relative).exists(), f"{relative} was left behind"
    leftovers = [path for path in (workdir / "results").rglob("*") if ".partial" in path.name]
    assert leftovers == []


def test_missing_channel_file_is_named(tmp_path, clean_dataset):
    workdir, data = workflow(tmp_path, clean_dataset)
    image_id = first_id(data)
    (data / "train" / f"{image_id}_yellow.png").unlink()
    result = preprocess(workdir)
    assert result.returncode != 0
    assert f"{image_id}_yellow.png" in failure_text(workdir, result)
    assert_no_partial_output(workdir, ["results/train/index.csv"])


def test_corrupt_png_is_named(tmp_path, clean_dataset):
    workdir, data = workflow(tmp_path, clean_dataset)
    image_id = first_id(data)
    (data / "train" / f"{image_id}_green.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    result = preprocess(workdir)
    assert result.returncode != 0
    assert f"cannot decode image file {data / 'train' / image_id}_green.png" in failure_text(workdir, result)
    assert_no_partial_output(workdir, ["results/train/images_96/shard-0.zarr"])


def test_channels_of_different_sizes_are_named(tmp_path, clean_dataset):
    workdir, data = workflow(tmp_path, clean_dataset)
    image_id = first_id(data)
    path = data / "train" / f"{image_id}_blue.png"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), (200, 256)))
    result = preprocess(workdir)
    assert result.returncode != 0
    assert f"channels of image '{image_id}' differ in size" in failure_text(workdir, result)
    assert_no_partial_output(workdir, ["results/train/images_96/shard-0.zarr"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: lines + ["ghost-image,3"], "ghost-image_red.png"),
        (lambda lines: [lines[0], lines[1].split(",")[0] + ",25", *lines[2:]], "unknown label '25'"),
        (lambda lines: lines + [lines[1]], "duplicate ID"),
    ],
    ids=["id-without-images", "unknown-label", "duplicate-id"],
)
def test_bad_train_table_row_is_named(tmp_path, clean_dataset, edit, message):
    workdir, data = workflow(tmp_path, clean_dataset)
    lines = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join(edit(lines)) + "\n")
    result = preprocess(workdir)
    assert result.returncode != 0
    assert message in failure_text(workdir, result)
    assert_no_partial_output(workdir, ["results/train/index.csv"])


def test_sixteen_bit_images_give_the_same_stores_as_eight_bit(tmp_path, clean_dataset):
    eight, _ = workflow(tmp_path / "eight", clean_dataset)
    sixteen, data = workflow(tmp_path / "sixteen", clean_dataset)
    for path in (data / "train").glob("*.png"):
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257)
    preprocess(eight, check=True)
    preprocess(sixteen, check=True)
    for store in ("images_96", "masks_96", "crops_96"):
        kind = {"images_96": "images", "masks_96": "masks_resized", "crops_96": "crops"}[store]
        array = {"images_96": "images", "masks_96": "masks", "crops_96": "crops"}[store]
        left = open_store(eight / f"results/train/{store}/shard-0.zarr", kind)[array][...]
        right = open_store(sixteen / f"results/train/{store}/shard-0.zarr", kind)[array][...]
        assert np.array_equal(left, right), store
    depth = open_store(sixteen / "results/train/images_96/shard-0.zarr", "images")["source_bit_depth"][...]
    assert depth.tolist() == [16] * len(depth)


def test_an_extra_set_reusing_train_ids_is_refused_before_preprocessing(tmp_path, clean_dataset):
    workdir, data = workflow(tmp_path, clean_dataset)
    shutil.copytree(data / "train", data / "public")
    shutil.copy(data / "train.csv", data / "public.csv")
    config = yaml.safe_load((workdir / "configs/bad.yaml").read_text())
    config["extra_train_sets"] = {
        "pubhpa": {"images": str(data / "public"), "table": str(data / "public.csv"), "shards": 1}
    }
    (workdir / "configs/bad.yaml").write_text(yaml.safe_dump(config))
    result = preprocess(workdir)
    assert result.returncode != 0
    text = failure_text(workdir, result)
    assert f"{data / 'public.csv'} lists image ID(s) " in text and "that dataset train" in text
    assert first_id(data) in text
    assert_no_partial_output(workdir, ["results/pubhpa/index.csv", "results/pubhpa/images_96"])
