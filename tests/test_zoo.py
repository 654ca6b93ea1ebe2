"""The 2018 task's image model as a BioImage Model Zoo package (hpa_pipeline/zoo/bioimageio.py): the package
validates with bioimageio.spec, passes bioimageio.core's test, and its test output is the workflow's own
prediction of its test input. Everything runs offline."""

from __future__ import annotations

import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hpa_pipeline.cli import main
from hpa_pipeline.data.synth2018 import write_demo_dataset_2018
from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.cells import CellTable
from hpa_pipeline.io.stores import ShardedArray, open_store
from hpa_pipeline.labels import CLASS_NAMES_2018
from hpa_pipeline.nets.models import create_model
from hpa_pipeline.nets.tta import predict_rows
from hpa_pipeline.predict import load_trained_model
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.settings import ModelSettings
from hpa_pipeline.train.checkpoints import write_outputs
from hpa_pipeline.zoo.bioimageio import INSTALL_HINT, export_bioimageio

bioimageio_spec = pytest.importorskip(
    "bioimageio.spec", reason=f"the bioimageio extra is not installed: {INSTALL_HINT}"
)
bioimageio_core = pytest.importorskip(
    "bioimageio.core", reason=f"the bioimageio extra is not installed: {INSTALL_HINT}"
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

SIZE = 32  # the smallest image_size the config schema allows: the tests pay for every forward pass
COMMON = dict(image_size=SIZE, crop_size=SIZE, epochs=1, batch_size=2, lr=1e-3, n_folds=2, seed=0)
MODELS = {
    # bestfitting's head, as in configs/demo_2018.yaml
    "gapgmp": dict(kind="image", backbone="test_resnet", task="hpa2018-images", head="gap_gmp", tta_crops=4),
    "cam2018": dict(kind="image", backbone="test_efficientnet", task="hpa2018-images", head="cam"),
    "cam2021": dict(kind="image", backbone="test_resnet", task="hpa2021-cells"),
    "cells2021": dict(kind="cell", backbone="test_resnet", task="hpa2021-cells"),
}


def _settings(name: str) -> ModelSettings:
    values = {"name": name, **MODELS[name], **COMMON}
    if values["kind"] == "cell":
        values.pop("crop_size")
    return ModelSettings.from_dict(values)


def _store(run_dir: Path) -> Path:
    return run_dir / "results" / "test" / f"images_{SIZE}" / "shard-0.zarr"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2018 run as the workflow leaves it: the test images at the models' size and each model's final.pt
    (random weights, seeded), written by training's own writer."""
    root = tmp_path_factory.mktemp("run")
    write_demo_dataset_2018(root / "data", n_train=1, n_test=2, image_size=64, cells_per_image=(3, 5), progress=False)
    ids = pd.read_csv(root / "data" / "sample_submission.csv")["Id"].tolist()
    resize_shard(root / "data" / "test", ids, [SIZE], [_store(root)])
    for name in MODELS:
        settings = _settings(name)
        torch.manual_seed(len(name))
        model = create_model(settings.kind, settings.backbone, num_classes=settings.n_classes, head=settings.head)
        write_outputs(
            root / "results" / "models" / name / "fold0",
            model=model,
            settings=settings,
            fold=0,
            metrics=[{"epoch": 0}],
            device="cpu",
            threads=1,
            inputs=[],
        )
    return root


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory: pytest.TempPathFactory):
    """bioimageio's cache in a temporary folder: nothing is fetched, and nothing is left in the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bioimageio_spec.settings, "cache_path", tmp_path_factory.mktemp("bioimageio-cache"))
        yield


@pytest.fixture(scope="module")
def package(run_dir: Path, tmp_path_factory: pytest.TempPathFactory, offline_cache: None) -> Path:
    """The gap_gmp model exported as a zip through the command line."""
    out = tmp_path_factory.mktemp("export") / "gapgmp.zip"
    argv = ["export-bioimageio", "gapgmp", "--run-dir", str(run_dir), "--author", "A. Biologist", "--out", str(out)]
    assert main(argv) == 0
    return out


def _read_npy(package: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(package) as archive:
        return np.load(io.BytesIO(archive.read(name)))


def _workflow_probabilities(run_dir: Path, name: str, rows: list[int]) -> np.ndarray:
    """(n, 28) image probabilities of the prediction stage's own path, without test-time augmentation."""
    settings = _settings(name)
    model = load_trained_model(
        run_dir / "results" / "models" / name / "fold0" / "final.pt", settings, torch.device("cpu")
    )
    ids = [str(i) for i in open_store(_store(run_dir), "images")["ids"][:]]
    cells = CellTable(ids, np.zeros(len(ids) + 1, np.int64), np.zeros(0, np.int32), datasets=["test"] * len(ids))
    images = ShardedArray([_store(run_dir)], "images", "images")
    predictions = predict_rows(model, settings, np.asarray(rows), cells, n_tta=1, images=images)
    return predictions.image_probs[:, :, 0]


def test_package_validates_with_bioimageio_spec(package: Path):
    description = bioimageio_spec.load_description(package, perform_io_checks=True)
    assert not isinstance(description, bioimageio_spec.InvalidDescr), description.validation_summary
    # "valid-format" is the best a format validation gives; "passed" needs the test run (below)
    assert description.validation_summary.status == "valid-format"
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        assert {"README.md", "cover.png", "weights.pt", "weights_torchscript.pt"} <= set(archive.namelist())
    assert rdf["format_version"] == "0.5.12"
    assert rdf["license"] == "MIT"
    assert rdf["authors"] == [{"name": "A. Biologist"}]
    assert [cite["doi"] for cite in rdf["cite"]] == [
        "10.1038/s41592-019-0658-6",
        "10.1038/s41592-019-0658-6",
        "10.1126/science.aal3321",
    ]
    (image,) = rdf["inputs"]
    assert [axis["type"] for axis in image["axes"]] == ["batch", "channel", "space", "space"]
    assert image["axes"][1]["channel_names"] == ["red", "green", "blue", "yellow"]
    assert [image["axes"][2]["size"], image["axes"][3]["size"]] == [SIZE, SIZE]
    assert image["data"] == {"type": "float32", "range": [0.0, 255.0]}
    (probabilities,) = rdf["outputs"]
    assert probabilities["axes"][1]["channel_names"] == list(CLASS_NAMES_2018)
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"] == {
        "backbone": "test_resnet",
        "head": "gap_gmp",
        "cosine_head": False,
        "instance_norm_input": True,
        "num_classes": 28,
    }
    assert rdf["config"]["hpa_pipeline"]["settings"] == _settings("gapgmp").to_dict()


def test_bioimageio_core_test_passes_for_both_weight_formats(package: Path):
    summary = bioimageio_core.test_model(package)
    assert summary.status == "passed", summary.format()
    tested = {detail.loc[1] for detail in summary.details if len(detail.loc) > 1 and detail.loc[0] == "weights"}
    assert tested == {"pytorch_state_dict", "torchscript"}


def test_test_output_is_the_workflows_prediction_of_the_test_input(package: Path, run_dir: Path):
    test_input = _read_npy(package, "test_input.npy")
    first_image = open_store(_store(run_dir), "images")["images"][0]
    np.testing.assert_array_equal(test_input, first_image[None].astype(np.float32))
    expected = _workflow_probabilities(run_dir, "gapgmp", [0])
    np.testing.assert_allclose(_read_npy(package, "test_output.npy"), expected, rtol=0, atol=1e-5)


def test_torchscript_weights_follow_their_input(package: Path, run_dir: Path, tmp_path: Path):
    """The traced network computes from its input (tracing can freeze values into constants): on the second
    test image it gives the workflow's prediction of that image."""
    with zipfile.ZipFile(package) as archive:
        archive.extract("weights_torchscript.pt", tmp_path)
    network = torch.jit.load(str(tmp_path / "weights_torchscript.pt"))
    second = open_store(_store(run_dir), "images")["images"][1]
    with torch.inference_mode():
        probabilities = network(torch.from_numpy(second[None].astype(np.float32))).numpy()
    expected = _workflow_probabilities(run_dir, "gapgmp", [1])
    assert not np.allclose(expected, _workflow_probabilities(run_dir, "gapgmp", [0]), atol=1e-4)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)


def test_a_folder_package_of_a_cam_model_replaces_an_older_package(run_dir: Path, tmp_path: Path, offline_cache: None):
    older = tmp_path / "cam2018"
    older.mkdir()
    (older / "rdf.yaml").write_text("type: model\n")
    (older / "weights_of_an_older_export.pt").write_bytes(b"")
    (tmp_path / ".cam2018.partial").mkdir()  # left by a killed export
    out = export_bioimageio("cam2018", older, run_dir=run_dir)
    assert out == older
    assert sorted(path.name for path in out.iterdir()) == [
        "README.md",
        "cover.png",
        "environment.yaml",
        "rdf.yaml",
        "sample_input.tif",
        "sample_output.tif",
        "test_input.npy",
        "test_output.npy",
        "weights.pt",
        "weights_torchscript.pt",
    ]
    assert [path.name for path in tmp_path.iterdir()] == ["cam2018"]  # no partial or replaced package left
    description = bioimageio_spec.load_description(out / "rdf.yaml", perform_io_checks=True)
    assert description.validation_summary.status == "valid-format"
    np.testing.assert_allclose(
        np.load(out / "test_output.npy"), _workflow_probabilities(run_dir, "cam2018", [0]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("cells2021", "model 'cells2021' has kind: cell; only an image model of task hpa2018-images is 'image in"),
        ("cam2021", "model 'cam2021' has task: hpa2021-cells; only an image model of task hpa2018-images is"),
    ],
)
def test_only_the_2018_image_model_is_exported(run_dir: Path, tmp_path: Path, model: str, fragment: str):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        export_bioimageio(model, tmp_path / "out.zip", run_dir=run_dir)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_is_named(run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    argv = ["export-bioimageio", "gapgmp", "--run-dir", str(run_dir), "--fold", "1", "--out", str(tmp_path / "o.zip")]
    assert main(argv) == 1
    checkpoint = run_dir / "results" / "models" / "gapgmp" / "fold1" / "final.pt"
    assert caplog.records[-1].getMessage() == f"missing model checkpoint {checkpoint} (train model 'gapgmp' first)"
    assert list(tmp_path.iterdir()) == []


def test_a_test_image_of_another_size_is_refused(run_dir: Path, tmp_path: Path):
    store = tmp_path / "images_64" / "shard-0.zarr"
    ids = pd.read_csv(run_dir / "data" / "sample_submission.csv")["Id"].tolist()
    resize_shard(run_dir / "data" / "test", ids, [64], [store])
    with pytest.raises(InputDataError, match=r"holds images of shape \(4, 64, 64\); the model takes \(4, 32, 32\)"):
        export_bioimageio("gapgmp", tmp_path / "out.zip", run_dir=run_dir, images=store)


def test_an_existing_folder_that_is_no_package_is_kept(run_dir: Path, tmp_path: Path):
    (tmp_path / "results").mkdir()
    with pytest.raises(ConfigError, match="exists and is not a model package: choose another path"):
        export_bioimageio("gapgmp", tmp_path / "results", run_dir=run_dir)
    assert list(tmp_path.iterdir()) == [tmp_path / "results"]


def test_without_the_bioimageio_extra_the_error_says_how_to_install_it(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)  # what Python does for a package not installed
    with pytest.raises(ConfigError, match=r'pip install "hpa-pipeline\[bioimageio\]"'):
        export_bioimageio("gapgmp", tmp_path / "out.zip", run_dir=run_dir)
    assert list(tmp_path.iterdir()) == []
