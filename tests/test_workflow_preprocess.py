"""End-to-end: the real Snakemake workflow on the demo configuration, and its start-up checks."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.preprocess.masks import read_cell_table
from workflow_helpers import copy_workflow, snakemake


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    snakemake(workdir, "preprocess", "--configfile", "configs/demo.yaml", "--cores", "2")
    return workdir


@pytest.mark.slow
def test_demo_preprocess_builds_every_store(demo_run):
    config = yaml.safe_load((demo_run / "configs" / "demo.yaml").read_text())
    train_ids = (demo_run / "resources/demo_data/train.csv").read_text().split("\n")[1:]
    n_train = len([line for line in train_ids if line])
    seen = []
    for shard in range(config["shards"]["train"]):
        table = read_cell_table(demo_run / f"results/train/cells/shard-{shard}.zarr")
        seen += table.ids
        crops = open_store(demo_run / f"results/train/crops_192/shard-{shard}.zarr", "crops")
        assert crops["crops"].shape == (table.n_cells, 8, 48, 48)
        for size in config["preprocess"]["image_sizes"]:
            images = open_store(demo_run / f"results/train/images_{size}/shard-{shard}.zarr", "images")
            assert read_strings(images, "ids") == table.ids
            assert images["images"].shape[1:] == (4, size, size)
    assert len(seen) == n_train
    # test masks stay at the original size, incl. the non-square image; the empty image has no cells
    masks = open_store(demo_run / "results/test/masks/shard-0.zarr", "masks")
    shapes = {tuple(masks["labels"][str(row)].shape) for row in range(len(read_strings(masks, "ids")))}
    assert (512, 683) in shapes and (512, 512) in shapes
    assert 0 in masks["n_cells"][:].tolist()
    assert "without any cell" in (demo_run / "logs/segment/test-0.log").read_text()


@pytest.mark.slow
def test_finished_workflow_reruns_nothing(demo_run):
    result = snakemake(demo_run, "preprocess", "--configfile", "configs/demo.yaml", "--cores", "2", "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def write_config(workdir: Path, **changes) -> None:
    config = yaml.safe_load((workdir / "configs" / "demo.yaml").read_text())
    for dotted, value in changes.items():
        node = config
        *parents, key = dotted.split(".")
        for parent in parents:
            node = node[parent]
        node[key] = value
    (workdir / "configs" / "bad.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shards.train": "two"}, "'two' is not of type 'integer'"),
        ({"preprocess.crop_size": 4}, "crop_size"),
        ({"segment.backend": "cellpose"}, "'cellpose' is not one of"),
        ({"preprocess.crop_image_sizes": [100]}, "preprocess.crop_image_sizes: 100 is not one of preprocess.image_sizes"),
        ({"segment.inputs.train.source": 999}, "segment.inputs.train.source: 999"),
        ({"segment.backend": "hpacellseg"}, "segment.hpacellseg.nuclei_model must be set"),
        ({"preprocess.unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_config_is_reported_before_anything_runs(tmp_path, changes, message):
    workdir = copy_workflow(tmp_path)
    write_config(workdir, **changes)
    result = snakemake(workdir, "preprocess", "--configfile", "configs/bad.yaml", "-n", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_workflow_lints_clean(tmp_path):
    workdir = copy_workflow(tmp_path)
    for config in ("workflow_config.yaml", "configs/demo.yaml"):
        result = snakemake(workdir, "--lint", "--configfile", config)
        assert "Congratulations" in result.stdout + result.stderr
