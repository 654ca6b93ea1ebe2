"""``hpa-pipeline annotate``: a bundle applied to a folder of new images.

The fidelity test annotates the finished demo's own test images with the demo's bundle, moved away from
the run, and finds the run's cells and the run's averaged per-cell test probabilities, bit for bit.
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
from workflow_helpers import snakemake

from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.predictions import align_to_cells, average_predictions, read_predictions
from hpa_pipeline.labels import CLASS_NAMES

BIN = Path(sys.executable).parent


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
        # the run predicted its test shard (all 6 images) with 2 threads: the same batches and reductions
        result = annotate(
            ["--bundle", str(moved), "--input-dir", str(new_images), "--out", "annotations", "--threads", "2"],
            cwd=tmp_path,
        )
    finally:
        hidden.rename(demo_run / "results")
    assert result.returncode == 0, result.stderr[-4000:]

    out = tmp_path / "annotations"
    cells = pd.read_parquet(out / "cells.parquet")
    table = read_cell_table(sorted((demo_run / "results/test/cells").glob("shard-*.zarr")))
    run_cells = [
        (image_id, int(cell))
        for row, image_id in enumerate(table.ids)
        for cell in table.instance[table.offsets[row] : table.offsets[row + 1]]
    ]
    assert list(zip(cells["image_id"], cells["cell"].astype(int))) == run_cells
    members = sorted((demo_run / "results/models").glob("*/fold*/test.zarr"))
    submitted = [path for path in members if path.parts[-3] in submission_members(demo_run)]
    average = average_predictions([read_predictions(path) for path in submitted], [str(p) for p in submitted])
    expected = align_to_cells(average, table, "run").probs[:, :, 0]
    assert np.array_equal(cells[list(CLASS_NAMES)].to_numpy(np.float32), expected)
    images = pd.read_csv(out / "images.csv")
    assert images["image_id"].tolist() == sorted(table.ids)
    assert not (out / ".work").exists()


def submission_members(run: Path) -> set[str]:
    import yaml

    return set(yaml.safe_load((run / "configs/demo.yaml").read_text())["submission"]["members"])
