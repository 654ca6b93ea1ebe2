"""``hpa-pipeline annotate``: a bundle applied to a folder of new images.

The fast tests annotate small blob images with a bundle of random-weight models (a CAM and a cell model,
two folds each); the fidelity test annotates the finished demo's own test images with the demo's bundle,
moved away from the run, and finds the run's cells and the run's averaged per-cell test probabilities,
bit for bit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import blob_image, write_random_bundle, write_rgby
from workflow_helpers import snakemake

from hpa_pipeline.annotate.engine import annotate_folder, annotate_shard, merge_shards, predict_member_shard
from hpa_pipeline.bundle import load_bundle
from hpa_pipeline.data.index import write_folder_index
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.index import read_index
from hpa_pipeline.io.predictions import align_to_cells, average_predictions, read_predictions
from hpa_pipeline.labels import CLASS_NAMES
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.settings import ModelData

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("run"))


@pytest.fixture
def new_images(tmp_path: Path) -> Path:
    """Five images of 2-3 round cells, one 16-bit, one not square."""
    folder = tmp_path / "new"
    for i in range(5):
        height, width = (96, 128) if i == 3 else (96, 96)
        image, _ = blob_image(height, width, [(30, 30), (60, 66), (28, 70)][: 2 + i % 2], radius=14, seed=i)
        write_rgby(folder, f"img{i}", image.astype(np.uint16) * 257 if i == 1 else image)
    return folder


def cells_table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "cells.parquet")


def test_every_image_gets_its_cells_with_averaged_probabilities(bundle, new_images, tmp_path):
    out = tmp_path / "out"
    summary = annotate_folder(load_bundle(bundle), new_images, out, images_per_shard=2)
    assert summary.annotated == 5 and summary.already_done == 0
    assert set(summary.seconds) == {"resize", "segment", "masks", "crops", "predict", "write"}
    cells = cells_table(out)
    images = pd.read_csv(out / "images.csv")
    assert images["image_id"].tolist() == [f"img{i}" for i in range(5)]
    assert images["n_cells"].tolist() == [2, 3, 2, 3, 2]
    assert cells.groupby("image_id").size().tolist() == [2, 3, 2, 3, 2]
    assert images.loc[3, ["height", "width"]].tolist() == [96, 128]
    probabilities = cells[list(CLASS_NAMES)].to_numpy()
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert np.allclose(
        cells[[f"score: {name}" for name in CLASS_NAMES]].to_numpy(), probabilities * cells[["area_factor"]].to_numpy()
    )
    assert not (out / ".work").exists()


def test_the_shard_size_changes_no_result_beyond_rounding(bundle, new_images, tmp_path):
    annotate_folder(load_bundle(bundle), new_images, tmp_path / "by2", images_per_shard=2)
    annotate_folder(load_bundle(bundle), new_images, tmp_path / "by5", images_per_shard=5)
    by2, by5 = cells_table(tmp_path / "by2"), cells_table(tmp_path / "by5")
    assert by2[["image_id", "cell", "area", "bbox_y0", "bbox_x1"]].equals(
        by5[["image_id", "cell", "area", "bbox_y0", "bbox_x1"]]
    )
    assert np.allclose(by2[list(CLASS_NAMES)].to_numpy(), by5[list(CLASS_NAMES)].to_numpy(), atol=1e-5)


def test_a_failed_run_keeps_finished_shards_and_resumes_to_the_same_tables(bundle, new_images, tmp_path):
    annotate_folder(load_bundle(bundle), new_images, tmp_path / "whole", images_per_shard=2)
    broken = new_images / "img4_green.png"
    good = broken.read_bytes()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    out = tmp_path / "resumed"
    with pytest.raises(InputDataError, match=f"cannot decode image file {broken}"):
        annotate_folder(load_bundle(bundle), new_images, out, images_per_shard=2)
    assert not (out / ".work").exists() and not (out / "cells.parquet").exists()
    broken.write_bytes(good)
    resumed = annotate_folder(load_bundle(bundle), new_images, out, images_per_shard=2)
    assert (resumed.annotated, resumed.already_done) == (1, 4)  # only the last shard
    for table in ("cells.csv", "images.csv"):
        assert (out / table).read_bytes() == (tmp_path / "whole" / table).read_bytes(), table


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda folder: (folder / "img2_yellow.png").unlink(), r"missing channel file\(s\) in .*img2_yellow\.png"),
        (
            lambda folder: (
                write_rgby(folder, "img2", np.zeros((4, 40, 40), np.uint8))
                or (folder / "img2_red.png").write_bytes((folder / "img0_red.png").read_bytes())
            ),
            r"channels of image 'img2' differ in size: img2_red\.png 96x96, img2_green\.png 40x40",
        ),
        (
            lambda folder: (folder / "img2_blue.png").write_bytes(b"not a png"),
            r"cannot decode image file .*img2_blue\.png",
        ),
        (lambda folder: [path.unlink() for path in folder.iterdir()], r"no images in .*new: expected files named"),
    ],
    ids=["missing-channel", "channel-sizes", "corrupt-file", "empty-folder"],
)
def test_bad_input_is_named_and_leaves_nothing_behind(bundle, new_images, tmp_path, spoil, message):
    spoil(new_images)
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match=message):
        annotate_folder(load_bundle(bundle), new_images, out, images_per_shard=5)
    assert not out.exists() or not any(path.name in ("cells.parquet", "images.csv", ".work") for path in out.iterdir())


def annotate(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "hpa-pipeline"), "annotate", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_annotating_the_demos_test_images_gives_the_runs_cells_and_probabilities(demo_run, tmp_path):
    made = snakemake(demo_run, "bundle", "--configfile", "configs/demo.yaml", "--cores", "2")
    assert made.returncode == 0
    # the bundle alone, elsewhere; the run's results/ hidden while it annotates
    moved = tmp_path / "shared-with-a-colleague" / "demo-bundle.zip"
    moved.parent.mkdir()
    shutil.copy(demo_run / "results/bundle.zip", moved)
    new_images = tmp_path / "new-images"
    shutil.copytree(demo_run / "resources/demo_data/test", new_images)
    hidden = demo_run / "results.hidden-during-annotate"
    (demo_run / "results").rename(hidden)
    try:
        # the run predicted its test shard (all 6 images) with model_threads threads: the same batches and
        # reductions
        threads = str(yaml.safe_load((demo_run / "configs/demo.yaml").read_text())["model_threads"])
        result = annotate(
            ["--bundle", str(moved), "--input-dir", str(new_images), "--out", "annotations", "--threads", threads],
            cwd=tmp_path,
        )
    finally:
        hidden.rename(demo_run / "results")
    assert result.returncode == 0, result.stderr[-4000:]

    out = tmp_path / "annotations"
    cells = pd.read_parquet(out / "cells.parquet").set_index(["image_id", "cell"])
    table = read_cell_table(sorted((demo_run / "results/test/cells").glob("shard-*.zarr")))
    members = submission_members(demo_run)
    stores = [
        path for path in sorted((demo_run / "results/models").glob("*/fold*/test.zarr")) if path.parts[-3] in members
    ]
    assert len(stores) == 2 * len(members)
    average = average_predictions([read_predictions(path) for path in stores], [str(path) for path in stores])
    expected = pd.DataFrame(
        align_to_cells(average, table, "the run's test predictions").probs[:, :, 0],
        columns=list(CLASS_NAMES),
        index=pd.MultiIndex.from_arrays(
            [np.repeat(table.ids, np.diff(table.offsets)), table.instance.astype(np.int64)], names=["image_id", "cell"]
        ),
    )
    # the same cells, and per cell the same averaged probabilities, bit for bit
    assert sorted(cells.index) == sorted(expected.index) and len(expected) > 0
    got = cells.loc[expected.index, list(CLASS_NAMES)].to_numpy(np.float32)
    assert np.array_equal(got, expected.to_numpy(np.float32))
    images = pd.read_csv(out / "images.csv")
    assert images["image_id"].tolist() == sorted(table.ids)
    assert not (out / ".work").exists()


def submission_members(run: Path) -> set[str]:

    return set(yaml.safe_load((run / "configs/demo.yaml").read_text())["submission"]["members"])


def test_the_workflows_steps_give_the_clis_tables_for_an_image_task_bundle(new_images, tmp_path):
    """predict_member_shard per member and fold, annotate_shard and merge_shards (the annotate mode's jobs,
    rules/annotate.smk) on one shard of an hpa2018-images bundle: no segmentation, the CLI's tables."""
    bundle = load_bundle(write_random_bundle(tmp_path / "run", "hpa2018-images"))
    annotate_folder(bundle, new_images, tmp_path / "cli", images_per_shard=5)
    work = tmp_path / "results"
    write_folder_index(new_images, 5, "annotate", work / "index.csv", [work / "shard-0.csv"])
    ids = read_index(work / "shard-0.csv")["ID"].tolist()
    resize_shard(new_images, ids, [64], [work / "images_64.zarr"])
    data = ModelData(
        index_paths=[work / "shard-0.csv"], folds_paths=[], cells_paths=[], images_paths=[work / "images_64.zarr"]
    )
    predictions = []
    for member in bundle.members:
        for fold in range(2):
            predictions.append(work / f"{member.name}-{fold}.zarr")
            predict_member_shard(bundle, member.name, fold, data, predictions[-1])
    annotate_shard(bundle, new_images, work / "shard-0.csv", predictions, work / "shard-0", images_per_shard=5)
    merge_shards(bundle, new_images, work / "index.csv", [work / "shard-0"], tmp_path / "out", images_per_shard=5)
    assert (tmp_path / "out/images.csv").read_bytes() == (tmp_path / "cli/images.csv").read_bytes()
    assert not (tmp_path / "out/cells.csv").exists() and (tmp_path / "out/overview/img4.png").is_file()
