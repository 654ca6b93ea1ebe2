"""A new user's first hour: from the demo to their own data.

The path the README gives, `make demo` -> `hpa-pipeline init-config --input-dir DATA --out my.yaml` ->
`snakemake submission --configfile my.yaml`, on a synthetic folder that is not the demo's, and the pitfalls
on the way, each of which must end with one clear sentence in the terminal (not only in a log file).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from workflow_helpers import copy_workflow, small_config, snakemake

from hpa_pipeline.data.synth import write_demo_dataset
from hpa_pipeline.io.folders import SYNTHETIC_MARKER

BIN = Path(sys.executable).parent


def hpa_pipeline_command(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hpa-pipeline"), *args], cwd=workdir, capture_output=True, text=True, timeout=600)


def terminal(result: subprocess.CompletedProcess) -> str:
    """What a user sees: the command's stdout and stderr (never the job log files)."""
    return result.stdout + result.stderr


def own_data(root: Path, seed: int = 7) -> Path:
    """A folder of 'real' images: synthetic fields of another seed, size and count than the demo's,
    without the generator's marker, the test split saved as 16-bit PNGs as HPA's are."""
    write_demo_dataset(root, n_train=12, n_test=3, image_size=256, cells_per_image=(4, 8), seed=seed, progress=False)
    (root / SYNTHETIC_MARKER).unlink()
    for path in (root / "test").glob("*.png"):
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257)
    return root


# ------------------------------------------------------------------------------------------ pitfalls


def test_demo_config_on_real_images_names_demo_data_and_the_fix(tmp_path, tiny_dataset):
    """The issue's first attempt: the demo config pointed at one's own folder."""
    workdir = copy_workflow(tmp_path / "work")
    result = snakemake(
        workdir,
        "submission",
        "--configfile",
        "configs/demo.yaml",
        "--config",
        f"input_dir={tiny_dataset}",
        "-n",
        check=False,
    )
    assert result.returncode != 0
    assert (
        f"demo_data is set, but input_dir {tiny_dataset} holds images that the demo generator did not write"
        in terminal(result)
    )
    assert f"hpa-pipeline init-config --input-dir {tiny_dataset} --out my.yaml" in terminal(result)
    assert "MissingInputException" not in terminal(result)
    assert not (workdir / "results").exists()


def test_following_the_demo_configs_advice_literally_gives_a_config_that_runs(tmp_path, tiny_dataset):
    """The error's advice, done to the letter: remove exactly the keys it names, and nothing else."""
    workdir = copy_workflow(tmp_path / "work")
    config = yaml.safe_load((workdir / "configs/demo.yaml").read_text())
    config["input_dir"] = str(tiny_dataset)
    (workdir / "configs/mine.yaml").write_text(yaml.safe_dump(config))
    refused = snakemake(workdir, "submission", "--configfile", "configs/mine.yaml", "-n", check=False)
    assert refused.returncode != 0
    advice = re.search(r"so the demo would replace them: remove (.+?) from the config", terminal(refused))
    assert advice, terminal(refused)[-3000:]
    keys = re.split(r", | and ", advice.group(1))
    assert keys == ["demo_data", "truth_dir", "extra_train_sets.pubhpa"]
    for key in keys:
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        del node[name]
    (workdir / "configs/mine.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "submission", "--configfile", "configs/mine.yaml", "-n", check=False)
    assert result.returncode == 0, terminal(result)[-3000:]
    assert "MissingInputException" not in terminal(result)
    assert re.search(r"^train_model\s+14$", result.stdout, re.MULTILINE)  # 7 models x 2 folds


def test_truth_dir_that_nothing_makes_names_the_key_and_the_fix(tmp_path, tiny_dataset):
    workdir = copy_workflow(tmp_path / "work")
    config = yaml.safe_load((workdir / "configs/demo.yaml").read_text())
    config.pop("demo_data")  # the user removed demo_data but kept the demo's truth_dir
    config["input_dir"] = str(tiny_dataset)
    (workdir / "configs/mine.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "submission", "--configfile", "configs/mine.yaml", "-n", check=False)
    assert result.returncode != 0
    assert "truth_dir: resources/demo_data/truth does not exist and no rule makes it" in terminal(result)
    assert "remove truth_dir from the config" in terminal(result)
    assert "MissingInputException" not in terminal(result)


def test_demo_truth_dir_is_accepted_before_the_demo_data_exists(tmp_path):
    workdir = copy_workflow(tmp_path / "work")
    result = snakemake(workdir, "submission", "--configfile", "configs/demo.yaml", "-n")
    assert re.search(r"^evaluate\s+1$", result.stdout, re.MULTILINE)


def test_demo_generator_refuses_a_folder_of_real_images(tmp_path, tiny_dataset):
    before = {path: path.read_bytes() for path in tiny_dataset.rglob("*") if path.is_file()}
    result = hpa_pipeline_command(
        tmp_path,
        "demo-data",
        "--out",
        str(tiny_dataset),
        "--overwrite",
        "--n-train",
        "2",
        "--n-test",
        "1",
        "--image-size",
        "64",
    )
    assert result.returncode == 1
    assert f"refusing to write synthetic data into {tiny_dataset}: it holds images" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {path: path.read_bytes() for path in tiny_dataset.rglob("*") if path.is_file()} == before


def test_demo_generator_asks_for_overwrite_by_its_option_name(tmp_path):
    (tmp_path / "data").mkdir()
    result = hpa_pipeline_command(
        tmp_path, "demo-data", "--out", "data", "--n-train", "1", "--n-test", "1", "--image-size", "64"
    )
    assert result.returncode == 1
    assert "data exists already; remove it, or pass --overwrite" in result.stderr


def test_failed_jobs_message_reaches_the_terminal(tmp_path, tiny_dataset):
    """The corrupt PNG of tests/test_bad_input.py: its message is printed, not only logged."""
    workdir = copy_workflow(tmp_path / "work")
    config = small_config(workdir, tiny_dataset)
    broken = tiny_dataset / "train" / "img1_green.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    result = snakemake(
        workdir, "results/train/images_96/shard-0.zarr", "--configfile", config, "--cores", "2", check=False
    )
    assert result.returncode != 0
    assert f"cannot decode image file {broken} (corrupt or not an image)" in terminal(result)


@pytest.mark.parametrize("profile", [[], ["--profile", "profiles/slurm"]], ids=["default", "slurm"])
def test_both_profiles_print_failed_jobs_logs(tmp_path, profile):
    """Snakemake's own parsing of the command line with each profile (the SLURM run itself is in
    tests/test_slurm.py)."""
    workdir = copy_workflow(tmp_path / "work")
    code = (
        "import sys\nsys.argv = ['snakemake', *sys.argv[1:]]\nfrom snakemake.cli import parse_args\n"
        "print(parse_args(sys.argv[1:])[1].show_failed_logs)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "submission", *profile], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True"


# ------------------------------------------------------------------------------------ the whole path


@pytest.mark.slow
def test_new_user_path_from_the_demo_to_own_data(demo_run, tmp_path):
    """`make demo` (the demo_run fixture runs its command), then in that same checkout: init-config on
    one's own folder and `snakemake submission --configfile my.yaml`."""
    data = own_data(tmp_path / "hpa-data")
    workdir = tmp_path / "checkout"
    shutil.copytree(demo_run, workdir, symlinks=True)  # the demo's results stay: they must not leak in
    start = time.monotonic()
    made = hpa_pipeline_command(
        workdir, "init-config", "--input-dir", str(data), "--out", "my.yaml", "--preset", "demo"
    )
    assert made.returncode == 0, made.stderr
    assert "test: 3 images, 256x256 (2), 341x256 (1); 16-bit" in made.stdout
    assert "next: snakemake submission --configfile my.yaml" in made.stdout
    config = yaml.safe_load((workdir / "my.yaml").read_text())
    assert config["input_dir"] == str(data) and config["truth_dir"] == str(data / "truth")
    assert "demo_data" not in config
    snakemake(workdir, "submission", "--configfile", "my.yaml", "--cores", "2")
    print(f"new user's run: {time.monotonic() - start:.0f} s")
    check = json.loads((workdir / "results/submission_check.json").read_text())
    test_ids = [line.split(",")[0] for line in (data / "sample_submission.csv").read_text().splitlines()[1:]]
    assert check["images"] == len(test_ids) == 3
    submission = (workdir / "results/submission.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in submission] == test_ids
    train_ids = [line.split(",")[0] for line in (data / "train.csv").read_text().splitlines()[1:]]
    folds = (workdir / "results/folds/train.csv").read_text()
    assert all(image_id in folds for image_id in train_ids) and len(folds.splitlines()) == 1 + len(train_ids)
    metrics = json.loads((workdir / "results/metrics.json").read_text())
    assert set(metrics["models"]) == set(config["models"])
    # the run's score of its submission is the competition metric of that file against the user's truth
    from hpa_pipeline.kaggle.metric import evaluate_submission
    from hpa_pipeline.submit.evaluation import read_truth_classes, read_truth_mask

    classes = read_truth_classes(data / "truth", "test")
    truth = {
        image_id: (read_truth_mask(data / "truth", "test", image_id), classes.get(image_id, {}))
        for image_id in test_ids
    }
    scored = evaluate_submission(workdir / "results/submission.csv", truth).map
    assert metrics["submission"]["map"] == pytest.approx(scored, abs=1e-6)
    assert snakemake(workdir, "submission", "--configfile", "my.yaml", "-n").stdout.count("Nothing to be done") == 1
    # the demo's own data and results were not touched by the user's run
    assert (workdir / "resources/demo_data" / SYNTHETIC_MARKER).is_file()
