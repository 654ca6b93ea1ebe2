"""``hpa-pipeline init-config``: the folder checks, the written config and the summary."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import write_rgby
from workflow_helpers import REPO, copy_workflow, snakemake

from hpa_pipeline.cli import main
from hpa_pipeline.data.init_config import (
    PRESETS,
    DatasetSummary,
    SplitSummary,
    area_thresholds,
    estimate_disk_bytes,
    init_config,
    inspect_dataset,
    preset_blocks,
    shard_counts,
    validate_config,
)
from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.labels import TASK_CELLS, TASK_IMAGES

PRESETS_2021 = PRESETS[TASK_CELLS]


def hpa_pipeline_command(*args: str) -> subprocess.CompletedProcess:
    """The ``hpa-pipeline`` command as a user runs it, in the workflow folder."""
    command = [str(Path(sys.executable).parent / "hpa-pipeline"), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def write(dataset: Path, out: Path, preset: str = "demo", **options) -> dict:
    init_config(dataset, out, preset=preset, workflow_dir=REPO, **options)
    return yaml.safe_load(out.read_text())


def top_level_keys_without_comment(text: str) -> list[str]:
    lines = text.splitlines()
    return [
        line
        for number, line in enumerate(lines)
        if re.match(r"[a-z_]+:", line) and not (number and lines[number - 1].startswith("#"))
    ]


@pytest.mark.parametrize("preset", sorted(PRESETS_2021))
def test_written_config_is_valid_complete_and_commented(tiny_dataset, tmp_path, preset):
    out = tmp_path / "my.yaml"
    config = write(tiny_dataset, out, preset)
    validate_config(config, REPO)  # the schema and the start-up checks the workflow applies
    assert top_level_keys_without_comment(out.read_text()) == []
    assert config["input_dir"] == str(tiny_dataset.resolve())
    assert "truth_dir" not in config and "demo_data" not in config  # no truth here, and the data exists
    shipped = yaml.safe_load((REPO / PRESETS_2021[preset]).read_text())
    for key in ("seed", "preprocess", "segment", "folds", "model_defaults", "models", "ensembles"):
        assert config[key] == shipped[key], key
    assert config["submission"]["members"] == shipped["submission"]["members"]


def test_the_public_set_is_trained_on_when_the_folder_holds_its_list(tiny_dataset, tmp_path):
    without = write(tiny_dataset, tmp_path / "without.yaml", "full")
    assert without["extra_train_sets"] == {}
    assert "# To add them, put kaggle_2021.tsv into" in (tmp_path / "without.yaml").read_text()
    (tiny_dataset / "kaggle_2021.tsv").write_text("Image,Label_idx,in_trainset\n")
    config = write(tiny_dataset, tmp_path / "with.yaml", "full")
    validate_config(config, REPO)
    public = config["extra_train_sets"]["pubhpa"]
    assert public["download"]["tsv"] == str(tiny_dataset.resolve() / "kaggle_2021.tsv")
    assert public["images"] == str(tiny_dataset.resolve() / "pubhpa")
    assert write(tiny_dataset, tmp_path / "demo.yaml", "demo")["extra_train_sets"] == {}  # the demo's is synthetic


def test_truth_dir_is_written_only_when_the_folder_has_per_cell_truth(tiny_dataset, tmp_path):
    (tiny_dataset / "truth").mkdir()
    assert "truth_dir" not in write(tiny_dataset, tmp_path / "without.yaml")
    (tiny_dataset / "truth" / "cells.csv").write_text("split,ID,instance,Label\n")
    assert write(tiny_dataset, tmp_path / "with.yaml")["truth_dir"] == str((tiny_dataset / "truth").resolve())


@pytest.mark.parametrize("name", sorted(name for presets in PRESETS.values() for name in presets.values()))
def test_preset_blocks_keep_every_key_of_the_shipped_configs(name):
    text = (REPO / name).read_text()
    blocks = preset_blocks(text)
    assert yaml.safe_load("\n".join(blocks.values())) == yaml.safe_load(text)


def summary_of(n_train: int, n_test: int, side: int = 2048) -> DatasetSummary:
    def split(name: str, count: int) -> SplitSummary:
        return SplitSummary(name, [f"{name}{i}" for i in range(count)], sizes=Counter({(side, side): count}))

    return DatasetSummary(Path("/data"), split("train", n_train), split("test", n_test), [0] * 19, None, False)


@pytest.mark.parametrize(
    ("n_train", "n_test", "shards"),
    [(21806, 559, {"train": 64, "test": 4}), (12, 3, {"train": 1, "test": 1}), (3400, 700, {"train": 10, "test": 5})],
)
def test_shards_scale_with_the_image_count(n_train, n_test, shards):
    assert shard_counts(summary_of(n_train, n_test)) == shards


@pytest.mark.parametrize(("side", "edge", "center"), [(2048, 80000, 32000), (512, 5000, 2000), (1728, 56953, 22781)])
def test_area_thresholds_scale_with_the_test_image_area(side, edge, center):
    assert area_thresholds(summary_of(10, 10, side)) == {"edge_area_threshold": edge, "center_area_threshold": center}


def test_summary_names_counts_labels_bit_depth_disk_and_time(tiny_dataset, tmp_path):
    path = tiny_dataset / "test" / "test0_green.png"
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257)
    text = init_config(tiny_dataset, tmp_path / "my.yaml", preset="demo", workflow_dir=REPO)
    assert "train: 5 images, 96x96 (5); 8-bit" in text
    assert "test: 2 images, 96x96 (1), 120x80 (1); 8-bit, 16-bit" in text
    assert re.search(r"^\s+0 Nucleoplasm\s+2$", text, re.MULTILINE)  # img0 and img3 carry class 0
    assert re.search(r"^\s+18 Negative\s+1$", text, re.MULTILINE)
    assert re.search(r"expected disk use under results/: at most \d+ [KMG]?B", text)
    assert re.search(r"rough time: about \d+ minutes? on 2 CPU cores", text)
    assert "1 train and 1 test shards" in text


def test_existing_config_is_kept_without_force(tiny_dataset, tmp_path):
    out = tmp_path / "my.yaml"
    out.write_text("mine\n")
    with pytest.raises(ConfigError, match=re.escape(f"{out} exists already; pass --force to replace it")):
        init_config(tiny_dataset, out, preset="demo", workflow_dir=REPO)
    assert out.read_text() == "mine\n"
    init_config(tiny_dataset, out, preset="demo", workflow_dir=REPO, force=True)
    assert yaml.safe_load(out.read_text())["input_dir"] == str(tiny_dataset.resolve())


def corrupt_png(dataset: Path) -> str:
    (dataset / "train" / "img2_green.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    return f"cannot decode image file {dataset / 'train' / 'img2_green.png'}"


def truncated_png(dataset: Path) -> str:
    path = dataset / "train" / "img4_red.png"
    path.write_bytes(path.read_bytes()[:60])  # the header is intact, the pixels are not
    return f"cannot decode image file {path}"


def other_size(dataset: Path) -> str:
    write_rgby(dataset / "test", "test1", np.zeros((4, 80, 120), np.uint8))
    cv2.imwrite(str(dataset / "test" / "test1_blue.png"), np.zeros((60, 60), np.uint8))
    return "channels of image 'test1' differ in size"


def colour_png(dataset: Path) -> str:
    colour = np.zeros((96, 96, 3), np.uint8)
    colour[..., 2] = 255  # planes that differ: not a grey channel saved as RGB
    cv2.imwrite(str(dataset / "train" / "img1_red.png"), colour)
    return f"{dataset / 'train' / 'img1_red.png'}: expected a single-channel image, found 3 colour channels"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "train.csv").unlink() or f"missing table {d / 'train.csv'}",
        lambda d: (d / "sample_submission.csv").unlink() or f"missing table {d / 'sample_submission.csv'}",
        lambda d: (
            [p.unlink() for p in (d / "test").iterdir()]
            and (d / "test").rmdir()
            or f"missing image folder {d / 'test'}"
        ),
        lambda d: (d / "train" / "img3_yellow.png").unlink() or f"{d / 'train' / 'img3_yellow.png'}",
        lambda d: (d / "train.csv").write_text("ID,Label\nimg0,0\nimg1,25\n") and "unknown label '25'",
        lambda d: (d / "sample_submission.csv").write_text("ID\nimg0\n") and "ID(s) also in train.csv: img0",
        lambda d: (d / "train.csv").write_text("ID,Label\nimg0,0\n") and "lists 1 image(s), fewer than the 2 folds",
        corrupt_png,
        truncated_png,
        other_size,
        colour_png,
    ],
    ids=[
        "no-train-table",
        "no-test-table",
        "no-test-folder",
        "missing-channel",
        "unknown-label",
        "id-in-both",
        "fewer-images-than-folds",
        "corrupt-png",
        "truncated-png",
        "channel-sizes",
        "colour-png",
    ],
)
def test_bad_folder_is_one_clear_error_and_writes_nothing(tiny_dataset, tmp_path, damage):
    message = damage(tiny_dataset)
    out = tmp_path / "my.yaml"
    result = hpa_pipeline_command(
        "init-config", "--input-dir", str(tiny_dataset), "--out", str(out), "--preset", "demo", "--decode-all"
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert [path.name for path in tmp_path.iterdir()] == ["dataset"]  # no config, no temporary file


def test_missing_input_dir_is_named(tmp_path):
    with pytest.raises(InputDataError, match=re.escape(f"--input-dir {tmp_path / 'nowhere'} is not a folder")):
        inspect_dataset(tmp_path / "nowhere")


def test_cli_prints_the_summary_and_the_next_command(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "my.yaml"
    assert main(["init-config", "--input-dir", str(tiny_dataset), "--out", str(out), "--workflow-dir", str(REPO)]) == 0
    printed = capsys.readouterr().out
    assert f"next: snakemake submission --configfile {out}" in printed
    assert "days of GPU time" in printed  # the full preset is the default
    full = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    assert yaml.safe_load(out.read_text())["models"] == full["models"]


def test_version(capsys):
    import tomllib

    import hpa_pipeline

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hpa-pipeline {hpa_pipeline.__version__}"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == hpa_pipeline.__version__
    assert f"## {hpa_pipeline.__version__}" in (REPO / "CHANGELOG.md").read_text()


# ------------------------------------------------------------------------------------------ the 2018 layout


@pytest.fixture
def data_2018(tmp_path) -> Path:
    """A folder in the 2018 layout (train.csv Id,Target; truth/test.csv), not marked as the demo's."""
    from hpa_pipeline.data.synth2018 import write_demo_dataset_2018
    from hpa_pipeline.io.folders import SYNTHETIC_MARKER

    write_demo_dataset_2018(tmp_path / "data2018", n_train=6, n_test=2, image_size=64, progress=False)
    (tmp_path / "data2018" / SYNTHETIC_MARKER).unlink()
    return tmp_path / "data2018"


@pytest.mark.parametrize("preset", sorted(PRESETS[TASK_IMAGES]))
def test_a_2018_folder_gives_a_valid_commented_2018_config(data_2018, tmp_path, preset):
    out = tmp_path / "my.yaml"
    config = write(data_2018, out, preset)
    validate_config(config, REPO)
    assert top_level_keys_without_comment(out.read_text()) == []
    assert config["task"] == "hpa2018-images"
    assert config["input_dir"] == str(data_2018.resolve())
    assert config["truth_dir"] == str((data_2018 / "truth").resolve())  # truth/test.csv: Id,Target
    assert "demo_data" not in config and "segment" not in config
    assert config["shards"] == {"train": 1, "test": 1}
    shipped = yaml.safe_load((REPO / PRESETS[TASK_IMAGES][preset]).read_text())
    for key in ("seed", "preprocess", "folds", "thresholds", "model_defaults", "models", "ensembles"):
        assert config[key] == shipped[key], key
    assert config["submission"] == {"members": shipped["submission"]["members"]}  # no area thresholds


def test_the_2018_summary_names_the_task_its_classes_and_its_truth(data_2018, tmp_path):
    text = init_config(data_2018, tmp_path / "my.yaml", preset="demo", workflow_dir=REPO)
    assert text.startswith(f"dataset {data_2018.resolve()}: task hpa2018-images (Id,Target)\n")
    assert "  train: 6 images, 64x64 (6); 8-bit" in text
    assert re.search(r"^\s+27 Rods & rings\s+\d+$", text, re.MULTILINE)
    assert f"  truth_dir: {(data_2018 / 'truth').resolve()}" in text
    assert "1 train and 1 test shards, 2 models x 2 folds" in text
    assert "rough time: about 2 minutes on 2 CPU cores" in text  # 6 x 2.8 + 70 s of the 2018 demo preset
    (data_2018 / "truth" / "test.csv").unlink()
    text = init_config(data_2018, tmp_path / "my.yaml", preset="demo", workflow_dir=REPO, force=True)
    assert "  truth_dir: none (no truth/test.csv): no metrics" in text


def test_a_2018_bad_label_names_the_file_and_row(data_2018, tmp_path):
    table = data_2018 / "train.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], lines[1], lines[2].split(",")[0] + ",3 \u00b2", *lines[3:]]) + "\n")
    with pytest.raises(
        InputDataError, match=re.escape(f"{table} row 3 (Id {lines[2].split(',')[0]}): unknown label '²'")
    ):
        init_config(data_2018, tmp_path / "my.yaml", preset="demo", workflow_dir=REPO)
    assert not (tmp_path / "my.yaml").exists()


def test_a_train_table_of_neither_task_is_named(tiny_dataset, tmp_path):
    (tiny_dataset / "train.csv").write_text("Image,Labels\nimg0,0\n")
    message = (
        f"{tiny_dataset / 'train.csv'} row 1: columns Image,Labels; "
        "expected ID,Label (task hpa2021-cells) or Id,Target (task hpa2018-images)"
    )
    with pytest.raises(InputDataError, match=re.escape(message)):
        inspect_dataset(tiny_dataset)


def test_an_unknown_backbone_is_named_not_left_out_of_the_disk_estimate(tiny_dataset, tmp_path):
    config = write(tiny_dataset, tmp_path / "my.yaml")
    summary = inspect_dataset(tiny_dataset)
    name = sorted(config["models"])[0]
    config["models"][name]["backbone"] = "densenet12x"
    with pytest.raises(ConfigError, match=re.escape(f"models.{name}.backbone: unknown backbone 'densenet12x'")):
        estimate_disk_bytes(summary, config)


@pytest.mark.slow
def test_the_written_2018_config_passes_a_dry_run(data_2018, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    init_config(data_2018, workdir / "my.yaml", preset="demo", workflow_dir=workdir)
    result = snakemake(workdir, "submission", "--configfile", "my.yaml", "-n")
    assert re.search(r"^make_submission\s+1$", result.stdout, re.MULTILINE)
    assert re.search(r"^evaluate\s+1$", result.stdout, re.MULTILINE)  # truth/test.csv: the metrics too
    assert not re.search(r"^(segment|crop_cells|make_demo_data)\s", result.stdout, re.MULTILINE)
