"""End-to-end: the 2018 task (configs/demo_2018.yaml) through the real Snakemake workflow, and bad
2018 inputs stopped at the index with the file and row named and nothing partial left behind."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from workflow_helpers import copy_workflow, snakemake

from hpa_pipeline.kaggle.images2018 import labels_matrix, macro_f1, read_submission_2018
from hpa_pipeline.labels import read_train_table_2018

#: The bar colours of results/report/metrics.png, by the ``what`` of a metrics.tsv row (matplotlib's tab: colours).
BAR_COLOURS = {"model": (0x1F, 0x77, 0xB4), "ensemble": (0xFF, 0x7F, 0x0E), "submission": (0x2C, 0xA0, 0x2C)}


def colour_runs(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    """Runs of adjacent pixel columns that hold ``colour`` exactly (a bar or a legend patch each)."""
    columns = (image == np.array(colour, np.uint8)).all(axis=2).any(axis=0).astype(int)
    return int(np.count_nonzero(np.diff(np.r_[0, columns]) == 1))


@pytest.fixture(scope="module")
def demo_2018_run(tmp_path_factory) -> Path:
    """The README's `snakemake submission --configfile configs/demo_2018.yaml --cores 2`, in a copy."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo2018"))
    snakemake(workdir, "submission", "--configfile", "configs/demo_2018.yaml", "--cores", "2")
    return workdir


@pytest.mark.slow
def test_demo_2018_writes_a_valid_2018_submission_and_its_metrics(demo_2018_run):
    sample = (demo_2018_run / "resources/demo_data_2018/sample_submission.csv").read_text().splitlines()[1:]
    submission = read_submission_2018(demo_2018_run / "results/submission.csv")
    assert list(submission) == [line.split(",")[0] for line in sample]
    check = json.loads((demo_2018_run / "results/submission_check.json").read_text())
    assert check["images"] == len(sample) and len(check["images_per_class"]) == 28
    header = (demo_2018_run / "results/image_predictions.csv").read_text().splitlines()[0].split(",")
    assert header == ["ID", "labels", *(f"prob_{c}" for c in range(28))]
    thresholds = (demo_2018_run / "results/thresholds.csv").read_text().splitlines()
    assert len(thresholds) == 1 + 28 and thresholds[28].startswith("27,Rods & rings,")
    # no segmentation, masks or crops in the image-level task
    assert not list((demo_2018_run / "results").rglob("masks*")) and not list(
        (demo_2018_run / "results").rglob("crops*")
    )
    metrics = json.loads((demo_2018_run / "results/metrics.json").read_text())
    config = yaml.safe_load((demo_2018_run / "configs/demo_2018.yaml").read_text())
    assert set(metrics["models"]) == set(config["models"]) and set(metrics["ensembles"]) == {"both"}
    # the submission's score is that of the submitted file against the test labels
    truth = read_train_table_2018(demo_2018_run / "resources/demo_data_2018/truth/test.csv")
    truth_rows = dict(zip(truth["ID"], truth["labels"]))
    ids = list(truth_rows)
    scored = macro_f1(labels_matrix(truth_rows, ids, 28), labels_matrix(submission, ids, 28))
    assert metrics["submission"]["macro_f1"] == scored
    # and it beats both references on the test images (the README's claim; CPU runs are byte-deterministic)
    references = metrics["references"]["test"]
    assert set(references) == {"chance", "most_frequent"}
    assert scored > max(references["chance"]["macro_f1"], references["most_frequent"]["macro_f1"])
    rows = [row.split("\t") for row in (demo_2018_run / "results/metrics.tsv").read_text().splitlines()]
    assert rows[0] == ["what", "name", "stage", "scored_on", "macro_f1", "macro_f1_fitted"]
    assert [(row[0], row[1], row[3]) for row in rows[1:]] == [
        ("model", "resnet_gapgmp", "out-of-fold (train)"),
        ("model", "effnet_cam", "out-of-fold (train)"),
        ("ensemble", "both", "out-of-fold (train)"),
        ("ensemble", "submission members", "out-of-fold (train)"),
        ("ensemble", "image_predictions.csv", "test"),
        ("submission", "submission.csv", "test"),
        ("reference", "chance", "train"),
        ("reference", "most_frequent", "train"),
        ("reference", "chance", "test"),
        ("reference", "most_frequent", "test"),
    ]
    assert rows[6][4:] == ["", f"{scored:.6f}"]  # the file has labels only: no figure at 0.5
    # the averaged (SWA) model's validation is in the last row of its training metrics
    assert "swa_valid_image_macro_f1" in (demo_2018_run / "results/models/resnet_gapgmp/fold0/metrics.csv").read_text()
    # the metrics plot: one bar per scored row in its kind's colour, plus that kind's legend patch
    plot = cv2.imread(str(demo_2018_run / "results/report/metrics.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    for what, colour in BAR_COLOURS.items():
        assert colour_runs(plot, colour) == sum(row[0] == what for row in rows[1:]) + 1, what


@pytest.fixture
def data_2018(tmp_path) -> Path:
    from hpa_pipeline.data.synth2018 import write_demo_dataset_2018

    write_demo_dataset_2018(tmp_path / "data", n_train=6, n_test=2, image_size=64, progress=False)
    (tmp_path / "data" / ".hpa-pipeline-synthetic").unlink()  # the user's own data now
    return tmp_path / "data"


def _workflow(tmp_path: Path, data: Path) -> Path:
    workdir = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((workdir / "configs/demo_2018.yaml").read_text())
    config.pop("demo_data")
    config.pop("truth_dir")
    config["input_dir"] = str(data)
    (workdir / "configs/mine.yaml").write_text(yaml.safe_dump(config))
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (
            lambda data: (data / "train.csv").write_text(
                (data / "train.csv").read_text().replace("\n", "\nbadrow,28\n", 1)
            ),
            r"train.csv row 2 \(Id badrow\): unknown label '28'",
        ),
        (
            lambda data: next((data / "train").glob("*_yellow.png")).unlink(),
            r"train.csv lists images whose files are missing: .*_yellow.png \(row \d+\)",
        ),
        (
            lambda data: (data / "sample_submission.csv").write_text(
                (data / "sample_submission.csv").read_text() + "ghost,0\n"
            ),
            r"sample_submission.csv lists images whose files are missing: .*ghost_red.png \(row 4\)",
        ),
    ],
)
def test_bad_2018_inputs_name_file_and_row_and_leave_nothing_behind(tmp_path, data_2018, breakage, message):
    import re

    breakage(data_2018)
    workdir = _workflow(tmp_path, data_2018)
    result = snakemake(
        workdir,
        "results/train/index.csv",
        "results/test/index.csv",
        "--configfile",
        "configs/mine.yaml",
        "--cores",
        "1",
        "--keep-going",
        check=False,
    )
    logs = "".join(path.read_text() for path in (workdir / "logs").rglob("*.log"))
    assert result.returncode != 0 and re.search(message, result.stdout + result.stderr + logs), logs[-2000:]
    broken = "test" if "ghost" in message else "train"
    assert not (workdir / f"results/{broken}/index.csv").exists()
    assert [path for path in (workdir / "results").rglob("*") if ".partial" in path.name or "tmp" in path.name] == []
