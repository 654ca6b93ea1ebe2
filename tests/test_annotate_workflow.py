"""The workflow's annotate mode (configs/annotate.yaml, rules/annotate.smk): a trained bundle applied to a
folder of new images as Snakemake jobs on the preprocessing rules, into the layout of `hpa-pipeline annotate`.

The fast tests run `snakemake -n` (or fail before anything runs) on a random-weight bundle; the slow test
runs the DAG and finds the CLI's tables byte for byte.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import blob_image, write_random_bundle, write_rgby
from workflow_helpers import copy_workflow, snakemake

from hpa_pipeline.annotate.engine import annotate_folder
from hpa_pipeline.bundle import load_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "hpa2021-cells": write_random_bundle(root / "cells"),
        "hpa2018-images": write_random_bundle(root / "images", "hpa2018-images"),
    }


def write_images(folder: Path, n: int = 3) -> Path:
    """``n`` images of 2-3 round cells; one 16-bit, one not square."""
    for i in range(n):
        width = 128 if i == 2 else 96
        image, _ = blob_image(96, width, [(30, 30), (60, 66), (28, 70)][: 2 + i % 2], radius=14, seed=i)
        write_rgby(folder, f"img{i}", image.astype(np.uint16) * 257 if i == 1 else image)
    return folder


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = copy_workflow(tmp_path / "workflow")
    write_images(work / "new")
    return work


def write_config(workdir: Path, bundle: Path, **annotate) -> str:
    config = {"annotate": {"bundle": str(bundle), "input_dir": "new", "images_per_shard": 2, **annotate}}
    (workdir / "configs/mine.yaml").write_text(yaml.safe_dump(config))
    return "configs/mine.yaml"


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:") :]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_the_dag_shards_the_folder_and_predicts_every_member_and_fold(workdir, bundles):
    config = write_config(workdir, bundles["hpa2021-cells"])
    result = snakemake(workdir, "annotations", "-n", "--configfile", config)
    assert job_counts(result.stdout) == {
        "index_folder": 1,
        "prepare_bundle": 1,
        "resize_image": 2,
        "segment": 2,
        "resize_masks": 2,
        "crop_cells": 2,
        "predict_shard": 8,  # 2 members x 2 folds x 2 shards
        "annotate_shard": 2,
        "merge_annotations": 1,
        "annotations": 1,
        "total": 22,
    }
    assert not (workdir / "results").exists()


def test_an_image_task_bundle_plans_no_segmentation_or_crops(workdir, bundles):
    config = write_config(workdir, bundles["hpa2018-images"], images_per_shard=3)
    result = snakemake(workdir, "annotations", "-n", "--configfile", config)
    assert job_counts(result.stdout) == {
        "index_folder": 1,
        "prepare_bundle": 1,
        "resize_image": 1,
        "predict_shard": 4,
        "annotate_shard": 1,
        "merge_annotations": 1,
        "annotations": 1,
        "total": 10,
    }


def test_the_annotate_config_lints_clean(workdir, bundles):
    config = write_config(workdir, bundles["hpa2021-cells"])
    result = snakemake(workdir, "--lint", "--configfile", config)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_an_hpacellseg_bundle_takes_its_weights_from_segment_weights(workdir, bundles, tmp_path):
    bundle = tmp_path / "hpacellseg-bundle"
    shutil.copytree(bundles["hpa2021-cells"], bundle)
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest["segment"].update(
        backend="hpacellseg", nuclei_model="nuclei.pth", nuclei_model_sha256="a" * 64, cell_model="cell.pth",
        cell_model_sha256="b" * 64,
    )  # fmt: skip
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    refused = snakemake(workdir, "annotations", "-n", "--configfile", write_config(workdir, bundle), check=False)
    assert refused.returncode != 0
    assert (
        "invalid configuration: annotate.segment_weights: the bundle segments with hpacellseg; name the folder of "
        "its weight files (nuclei.pth, cell.pth" in refused.stdout + refused.stderr
    )
    (workdir / "weights").mkdir()
    config = write_config(workdir, bundle, segment_weights="weights")
    planned = snakemake(workdir, "annotations", "-n", "-p", "--configfile", config)
    assert (
        f"--backend hpacellseg --nuclei-model weights/nuclei.pth --nuclei-model-sha256 {'a' * 64} "
        f"--cell-model weights/cell.pth --cell-model-sha256 {'b' * 64}"
    ) in planned.stdout


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda work, config: config["annotate"].update(shards=4), r"Additional properties are not allowed \('shards'"),
        (
            lambda work, config: config["annotate"].update(bundle="gone/bundle.zip"),
            r"invalid configuration: annotate\.bundle: gone/bundle\.zip does not exist; give a bundle folder or \.zip",
        ),
        (
            lambda work, config: [path.unlink() for path in (work / "new").iterdir()],
            r"invalid configuration: annotate\.input_dir: no images in new: expected files named "
            r"\{ID\}_\{red,green,blue,yellow\}\.png",
        ),
        (
            lambda work, config: (work / "new/img1_yellow.png").unlink(),
            r"invalid configuration: annotate\.input_dir: missing channel file\(s\) in new: new/img1_yellow\.png",
        ),
    ],
    ids=["unknown-key", "missing-bundle", "empty-folder", "missing-channel"],
)
def test_a_bad_config_or_folder_stops_before_anything_runs(workdir, bundles, change, message):
    config = yaml.safe_load((workdir / write_config(workdir, bundles["hpa2021-cells"])).read_text())
    change(workdir, config)
    (workdir / "configs/mine.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "annotations", "--configfile", "configs/mine.yaml", "--cores", "1", check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), (result.stdout + result.stderr)[-3000:]
    assert not (workdir / "results").exists()


@pytest.mark.slow
def test_the_workflow_writes_the_clis_tables_byte_for_byte_and_then_has_nothing_to_do(workdir, bundles, tmp_path):
    bundle = bundles["hpa2021-cells"]
    config = write_config(workdir, bundle, out_dir="results/annotations")
    snakemake(workdir, "annotations", "--configfile", config, "--cores", "2")
    out = workdir / "results/annotations"
    # the CLI on the same images and shards, with the threads the prediction jobs had (--cores 2)
    annotate_folder(load_bundle(bundle), workdir / "new", tmp_path / "cli", images_per_shard=2, threads=2)
    for name in ("cells.csv", "images.csv"):
        assert (out / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    layout = {path.relative_to(out).as_posix() for path in out.rglob("*") if ".ome.zarr/" not in path.as_posix()}
    expected = {
        path.relative_to(tmp_path / "cli").as_posix()
        for path in (tmp_path / "cli").rglob("*")
        if ".ome.zarr/" not in path.as_posix()
    }
    assert layout == expected | {".snakemake_timestamp"}
    again = snakemake(workdir, "annotations", "-n", "--configfile", config)
    assert "Nothing to be done" in again.stdout + again.stderr
