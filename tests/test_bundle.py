"""The bundle: a trained run's members as safetensors with the manifest that annotating needs; every refusal
names the file and the reason, and opening a bundle never unpickles anything."""

from __future__ import annotations

import csv
import hashlib
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from workflow_helpers import copy_workflow, snakemake

from hpa_pipeline import __version__
from hpa_pipeline.bundle import (
    BUNDLE_FORMAT,
    BundleError,
    copy_bundle,
    load_bundle,
    load_member_model,
    read_manifest,
    write_bundle,
)
from hpa_pipeline.cli import main
from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.index import write_index
from hpa_pipeline.io.thresholds import write_thresholds
from hpa_pipeline.labels import CLASS_NAMES, CLASS_NAMES_2018, TASK_IMAGES
from hpa_pipeline.nets.models import create_model
from hpa_pipeline.predict import load_trained_model
from hpa_pipeline.settings import ModelSettings
from hpa_pipeline.train.checkpoints import write_outputs

CPU = torch.device("cpu")
COMMON = dict(epochs=1, batch_size=2, lr=1e-3, n_folds=2, seed=7)
CAM = ModelSettings(name="cam", kind="image", backbone="test_resnet", image_size=64, crop_size=32, **COMMON)
# job settings as a GPU run would have them: the bundle leaves them out
CELL = ModelSettings(
    name="cell", kind="cell", backbone="test_efficientnet", image_size=32, cosine_head=True, compile=True, **COMMON
)
GAPGMP = ModelSettings(
    name="gapgmp", kind="image", backbone="test_resnet", image_size=64, crop_size=32, head="gap_gmp", task=TASK_IMAGES,
    **COMMON,
)  # fmt: skip
CELL_TASK_OPTIONS = dict(
    crop_image_sizes=[64],
    crop_size=32,
    segment={"backend": "classical", "source": "original", "scale_factor": 0.25},
    edge_area_threshold=5000,
    center_area_threshold=2000,
)


def _final_pt(run: Path, settings: ModelSettings, fold: int) -> Path:
    """A real checkpoint: a model of random weights written by training's own writer."""
    torch.manual_seed(100 * fold + len(settings.name))
    model = create_model(
        settings.kind,
        settings.backbone,
        cosine_head=settings.cosine_head,
        num_classes=settings.n_classes,
        head=settings.head,
    )
    # non-zero BatchNorm statistics, so that eval-mode outputs depend on every buffer
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    out_dir = run / f"results/models/{settings.name}/fold{fold}"
    write_outputs(out_dir, model=model, settings=settings, fold=fold, metrics=[], device="cpu", threads=1, inputs=[])
    return out_dir / "final.pt"


def _run(root: Path, members: tuple[ModelSettings, ...], names: tuple[str, ...]) -> dict:
    """A finished run's files that a bundle reads: checkpoints, thresholds and two training indexes."""
    checkpoints = [_final_pt(root, settings, fold) for settings in members for fold in range(2)]
    thresholds = root / "results/thresholds.csv"
    write_thresholds(thresholds, np.linspace(0.1, 0.9, len(names)), names, np.full(len(names), np.nan), "f1")
    indexes = []
    for dataset, ids in (("train", ["a", "b", "c"]), ("pubhpa", ["p1"])):
        frame = pd.DataFrame({"ID": ids, "shard": 0, "Label": "0", "dataset": dataset})
        write_index(root / f"results/{dataset}/index.csv", frame)
        indexes.append(root / f"results/{dataset}/index.csv")
    return {"checkpoints": checkpoints, "thresholds": thresholds, "train_index": indexes}


@pytest.fixture
def run(tmp_path: Path) -> dict:
    return _run(tmp_path / "run", (CAM, CELL), CLASS_NAMES)


def _write(run: dict, out: Path, zip_path: Path | None = None, **options) -> Path:
    write_bundle(
        out,
        run["checkpoints"],
        run["thresholds"],
        run["train_index"],
        [64],
        zip_path=zip_path,
        **(options or CELL_TASK_OPTIONS),
    )
    return out


@pytest.fixture
def bundle_dir(run: dict, tmp_path: Path) -> Path:
    return _write(run, tmp_path / "bundle")


def _edit_manifest(bundle: Path, change) -> Path:
    path = bundle / "manifest.yaml"
    manifest = yaml.safe_load(path.read_text())
    change(manifest)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def _csv_thresholds(path: Path) -> tuple[float, ...]:
    with open(path, newline="") as handle:
        return tuple(float(row["threshold"]) for row in csv.DictReader(handle))


def _inputs(settings: ModelSettings) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(1, 4 if settings.kind == "image" else 8, 32, 32, generator=generator) * 255


# ------------------------------------------------------------------------------------------------ contents


def test_weights_are_the_checkpoints_state_dicts_bit_for_bit(run, bundle_dir):
    bundle = load_bundle(bundle_dir)
    for member, settings in zip(bundle.members, (CAM, CELL)):
        assert member.weights == tuple(bundle_dir / f"weights/{settings.name}/fold{k}.safetensors" for k in (0, 1))
        for fold, path in enumerate(member.weights):
            expected = torch.load(run["checkpoints"][2 * (settings is CELL) + fold], weights_only=True)["model"]
            stored = load_file(path)
            assert set(stored) == set(expected)
            for key, tensor in expected.items():
                assert stored[key].dtype == tensor.dtype and torch.equal(stored[key], tensor), key


def test_a_member_model_gives_exactly_the_outputs_of_the_trained_checkpoint(run, bundle_dir):
    bundle = load_bundle(bundle_dir)
    for member, settings in zip(bundle.members, (CAM, CELL)):
        for fold in (0, 1):
            checkpoint = run["checkpoints"][2 * (settings is CELL) + fold]
            with torch.no_grad():
                expected = load_trained_model(checkpoint, settings, CPU)(_inputs(settings))
                actual = load_member_model(member, fold, CPU)(_inputs(settings))
            assert torch.equal(actual, expected)


def test_the_manifest_records_what_annotating_needs(run, bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.root == bundle_dir.resolve()
    assert (bundle.version, bundle.task, bundle.class_names) == (__version__, "hpa2021-cells", CLASS_NAMES)
    assert (bundle.image_sizes, bundle.crop_image_sizes, bundle.crop_size) == ((64,), (64,), 32)
    assert bundle.segment == {"backend": "classical", "source": "original", "scale_factor": 0.25}
    assert [member.name for member in bundle.members] == ["cam", "cell"]
    # the settings as trained, the job settings (compile: true at training) back at their defaults
    assert bundle.members[0].settings == CAM
    assert bundle.members[1].settings == ModelSettings.from_dict({**CELL.to_dict(), "compile": False})
    assert "compile" not in bundle.manifest["members"][1]["settings"]
    assert bundle.averaging == "mean"
    assert (bundle.edge_area_threshold, bundle.center_area_threshold) == (5000.0, 2000.0)
    assert bundle.class_thresholds == _csv_thresholds(run["thresholds"])
    concatenated = b"".join(path.read_bytes() for path in run["train_index"])
    assert bundle.training_index_sha256 == hashlib.sha256(concatenated).hexdigest()
    assert bundle.manifest["provenance"]["training_index"][1] == {
        "dataset": "pubhpa",
        "images": 1,
        "sha256": hashlib.sha256(run["train_index"][1].read_bytes()).hexdigest(),
    }
    assert bundle.manifest["members"][0]["trained_with"][0]["hpa_pipeline"] == __version__
    assert bundle.manifest["files"] == {
        f"weights/{name}/fold{k}.safetensors": hashlib.sha256(
            (bundle_dir / f"weights/{name}/fold{k}.safetensors").read_bytes()
        ).hexdigest()
        for name in ("cam", "cell")
        for k in (0, 1)
    }
    assert bundle.manifest["format"] == BUNDLE_FORMAT


def test_an_image_task_bundle_has_no_cell_settings(tmp_path):
    run = _run(tmp_path / "run", (GAPGMP,), CLASS_NAMES_2018)
    write_bundle(tmp_path / "bundle", run["checkpoints"], run["thresholds"], run["train_index"], [64])
    bundle = load_bundle(tmp_path / "bundle")
    assert (bundle.task, len(bundle.class_names), len(bundle.class_thresholds)) == (TASK_IMAGES, 28, 28)
    assert (bundle.segment, bundle.crop_image_sizes, bundle.crop_size) == ({}, (), None)
    assert (bundle.edge_area_threshold, bundle.center_area_threshold) == (None, None)
    with torch.no_grad():
        expected = load_trained_model(run["checkpoints"][1], GAPGMP, CPU)(_inputs(GAPGMP))
        assert torch.equal(load_member_model(bundle.members[0], 1, CPU)(_inputs(GAPGMP)), expected)
    with pytest.raises(ConfigError, match="task hpa2018-images has no cells, so a bundle of it takes no crop size"):
        write_bundle(tmp_path / "b2", run["checkpoints"], run["thresholds"], run["train_index"], [64], crop_size=32)


def test_hpacellseg_weights_are_recorded_by_name_and_sha256_never_by_path(run, tmp_path):
    digest = "ab" * 32
    segment = {
        "backend": "hpacellseg",
        "source": "original",
        "scale_factor": 0.5,
        "nuclei_model": "/home/someone/weights/dpn_unet_nuclei_v1.pth",
        "nuclei_model_sha256": digest.upper(),
        "cell_model": "resources/hpacellseg/dpn_unet_cell_3ch_v1.pth",
        "cell_model_sha256": digest,
    }
    _write(run, tmp_path / "bundle", **{**CELL_TASK_OPTIONS, "segment": segment})
    assert load_bundle(tmp_path / "bundle").segment == {
        "backend": "hpacellseg",
        "source": "original",
        "scale_factor": 0.5,
        "nuclei_model": "dpn_unet_nuclei_v1.pth",
        "nuclei_model_sha256": digest,
        "cell_model": "dpn_unet_cell_3ch_v1.pth",
        "cell_model_sha256": digest,
    }
    with pytest.raises(ConfigError, match="records its cell_model file by name and sha256; give both"):
        _write(run, tmp_path / "b2", **{**CELL_TASK_OPTIONS, "segment": {**segment, "cell_model_sha256": None}})


def test_channels_last_and_shared_tensors_are_stored_as_plain_copies(run, tmp_path):
    """A CUDA channels-last run saves non-contiguous weights; tied weights share one storage."""
    path = run["checkpoints"][0]
    state = torch.load(path, weights_only=True)
    conv = next(key for key, value in state["model"].items() if value.ndim == 4)
    state["model"][conv] = state["model"][conv].contiguous(memory_format=torch.channels_last)
    variances = [key for key in state["model"] if key.endswith("running_var")]
    shape = state["model"][variances[0]].shape
    tied = next(key for key in variances[1:] if state["model"][key].shape == shape)
    state["model"][tied] = state["model"][variances[0]]
    torch.save(state, path)
    bundle = load_bundle(_write(run, tmp_path / "bundle"))
    stored = load_file(bundle.members[0].weights[0])
    assert torch.equal(stored[conv], state["model"][conv]) and torch.equal(stored[tied], stored[variances[0]])
    with torch.no_grad():
        expected = load_trained_model(path, CAM, CPU)(_inputs(CAM))
        assert torch.equal(load_member_model(bundle.members[0], 0, CPU)(_inputs(CAM)), expected)


# ------------------------------------------------------------------------------------------- zip and moves


def test_the_zip_is_byte_identical_for_the_same_inputs(run, tmp_path):
    _write(run, tmp_path / "one/bundle", tmp_path / "one/bundle.zip")
    _write(run, tmp_path / "two/bundle", tmp_path / "two/bundle.zip")
    assert (tmp_path / "one/bundle.zip").read_bytes() == (tmp_path / "two/bundle.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "one/bundle.zip") as archive:
        names = archive.namelist()
        assert names == sorted(names) and names[0] == "manifest.yaml" and len(names) == 5
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        for name in names:
            assert archive.read(name) == (tmp_path / "one/bundle" / name).read_bytes()


def test_a_zip_loads_from_a_temporary_or_a_given_folder(run, tmp_path):
    zip_path = tmp_path / "bundle.zip"
    _write(run, tmp_path / "bundle", zip_path)
    temporary = load_bundle(zip_path)
    assert temporary.root.is_dir() and temporary.manifest == load_bundle(tmp_path / "bundle").manifest
    target = tmp_path / "extracted"
    assert load_bundle(zip_path, extract_to=target).root == target.resolve()
    assert load_bundle(zip_path, extract_to=target).members == load_bundle(target).members  # reused, verified
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    with pytest.raises(BundleError, match=f"cannot extract {zip_path} into {tmp_path / 'busy'}: the folder holds"):
        load_bundle(zip_path, extract_to=tmp_path / "busy")
    assert sorted(path.name for path in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_a_moved_bundle_loads_and_opening_it_never_unpickles(run, bundle_dir, tmp_path, monkeypatch):
    with torch.no_grad():
        expected = load_member_model(load_bundle(bundle_dir).members[1], 1, CPU)(_inputs(CELL))
    moved = tmp_path / "elsewhere/bundle"
    shutil.copytree(bundle_dir, moved)
    shutil.rmtree(bundle_dir)
    shutil.rmtree(tmp_path / "run")

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    bundle = load_bundle(moved)
    assert bundle.members[1].weights[1] == moved.resolve() / "weights/cell/fold1.safetensors"
    with torch.no_grad():
        assert torch.equal(load_member_model(bundle.members[1], 1, CPU)(_inputs(CELL)), expected)


# ------------------------------------------------------------------------------------------------ refusals


def test_a_changed_byte_of_a_weight_file_is_refused(bundle_dir):
    weights = bundle_dir / "weights/cell/fold0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"^{weights} does not match its sha256 in manifest.yaml"):
        load_bundle(bundle_dir)


def test_an_unlisted_weight_file_is_refused(bundle_dir):
    extra = bundle_dir / "weights/cam/fold2.safetensors"
    shutil.copy(bundle_dir / "weights/cam/fold0.safetensors", extra)
    with pytest.raises(BundleError, match=f"^{extra}: a weight file that manifest.yaml does not list"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "change, where",
    [
        (lambda manifest: manifest.update(colour_maps={}), "colour_maps"),
        (lambda manifest: manifest["members"][1]["settings"].update(new=3), "members[1].settings.new"),
        (lambda manifest: manifest["segment"].update(gpu_tiles=4), "segment.gpu_tiles"),
    ],
    ids=["top", "settings", "segment"],
)  # fmt: skip
def test_an_unknown_key_is_refused_as_from_a_newer_version(bundle_dir, change, where):
    manifest = _edit_manifest(bundle_dir, change)
    with pytest.raises(BundleError, match=rf"^{manifest}: unknown key {re.escape(where)} \(a bundle of a newer"):
        load_bundle(bundle_dir)


def test_a_newer_bundle_format_is_refused(bundle_dir):
    manifest = _edit_manifest(bundle_dir, lambda manifest: manifest.update(format=BUNDLE_FORMAT + 1))
    with pytest.raises(BundleError, match=f"^{manifest}: bundle format 2 \\(a bundle of a newer hpa-pipeline\\)"):
        load_bundle(bundle_dir)


def test_a_changed_task_is_refused(bundle_dir):
    manifest = _edit_manifest(bundle_dir, lambda manifest: manifest.update(task=TASK_IMAGES))
    with pytest.raises(BundleError, match=f"^{manifest}: 19 class names, but task hpa2018-images has 28 classes"):
        load_bundle(bundle_dir)


def test_a_member_of_another_task_is_refused(bundle_dir):
    manifest = _edit_manifest(bundle_dir, lambda manifest: manifest["members"][0]["settings"].update(task=TASK_IMAGES))
    with pytest.raises(BundleError, match=f"^{manifest}: member cam was trained for task hpa2018-images, the bundle"):
        load_bundle(bundle_dir)


def test_a_class_count_that_disagrees_is_refused(bundle_dir):
    manifest = _edit_manifest(bundle_dir, lambda manifest: manifest["class_names"].pop())
    with pytest.raises(BundleError, match=f"^{manifest}: 18 class names, but task hpa2021-cells has 19 classes"):
        load_bundle(bundle_dir)
    _edit_manifest(bundle_dir, lambda manifest: manifest.update(class_names=list(CLASS_NAMES)))
    _edit_manifest(bundle_dir, lambda manifest: manifest["class_thresholds"].append(0.5))
    with pytest.raises(BundleError, match=f"^{manifest}: class_thresholds must be 19 numbers in 0..1"):
        load_bundle(bundle_dir)


def test_a_backbone_missing_from_timm_is_refused(bundle_dir):
    manifest = _edit_manifest(
        bundle_dir, lambda manifest: manifest["members"][1]["settings"].update(backbone="efficientnet_b99")
    )
    with pytest.raises(
        BundleError, match=f"^{manifest}: member cell needs backbone 'efficientnet_b99', which the installed timm"
    ):
        load_bundle(bundle_dir)


def test_a_zip_entry_outside_the_bundle_is_refused(run, tmp_path):
    zip_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("manifest.yaml", "format: 1\n")
        archive.writestr("../outside.txt", "x")
    with pytest.raises(BundleError, match=f"^{zip_path}: entry '../outside.txt' points outside the bundle"):
        load_bundle(zip_path, extract_to=tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_the_member_are_refused(bundle_dir):
    cam, cell = (bundle_dir / f"weights/{name}/fold0.safetensors" for name in ("cam", "cell"))
    shutil.copy(cell, cam)
    _edit_manifest(bundle_dir, lambda manifest: manifest["files"].update({"weights/cam/fold0.safetensors": _sha(cam)}))
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match=f"^{cam} does not fit the model of member cam \\(test_resnet\\): Error"):
        load_member_model(bundle.members[0], 0, CPU)
    with pytest.raises(BundleError, match="member cam has folds 0..1, not fold 2"):
        load_member_model(bundle.members[0], 2, CPU)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------- writing


def test_a_failed_write_leaves_the_previous_bundle_and_nothing_partial(run, tmp_path):
    out = _write(run, tmp_path / "results/bundle", tmp_path / "results/bundle.zip")
    before = {path: path.read_bytes() for path in sorted(tmp_path.joinpath("results").rglob("*")) if path.is_file()}
    (tmp_path / "blocker").write_text("a file where the zip's folder should be")
    state = torch.load(run["checkpoints"][3], weights_only=True)
    state["model"] = {key: value + 1 if value.is_floating_point() else value for key, value in state["model"].items()}
    torch.save(state, run["checkpoints"][3])  # the retrained weights that fail to be bundled
    with pytest.raises(OSError):
        _write(run, out, tmp_path / "blocker/bundle.zip")
    after = {path: path.read_bytes() for path in sorted(tmp_path.joinpath("results").rglob("*")) if path.is_file()}
    assert after == before
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == ["bundle", "bundle.zip"]


def _other_architecture(run: dict) -> None:
    """Weights that no longer fit their settings' model (as after a timm upgrade that changed the architecture)."""
    path = run["checkpoints"][1]
    state = torch.load(path, weights_only=True)
    state["model"] = torch.load(run["checkpoints"][2], weights_only=True)["model"]
    torch.save(state, path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda run: run["checkpoints"].pop(), "cell has 2 folds, the checkpoints give fold(s) 0"),
        (lambda run: run["checkpoints"].append(run["checkpoints"][0]), "fold 0 of model cam is also"),
        (lambda run: run["checkpoints"][3].write_bytes(b"not a checkpoint"), "cannot read model checkpoint"),
        (lambda run: run["thresholds"].write_text("class,name,threshold\n0,Nucleoplasm,0.5\n"), "1 thresholds, the"),
        (_other_architecture, "fold1/final.pt cannot be bundled: "),
    ],
    ids=["missing-fold", "fold-twice", "corrupt", "thresholds", "unfit-weights"],
)
def test_bad_run_files_are_named_and_nothing_is_written(run, tmp_path, change, message):
    change(run)
    with pytest.raises(InputDataError, match=re.escape(message)):
        _write(run, tmp_path / "bundle", tmp_path / "bundle.zip")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "run"]


def test_the_cli_writes_a_bundle_that_loads(run, tmp_path):
    out, zip_path = tmp_path / "bundle", tmp_path / "bundle.zip"
    code = main(
        ["bundle", "--checkpoints", *map(str, run["checkpoints"]), "--thresholds", str(run["thresholds"]),
         "--train-index", *map(str, run["train_index"]), "--image-sizes", "64", "--crop-image-sizes", "64",
         "--crop-size", "32", "--segment-backend", "classical", "--segment-source", "original",
         "--segment-scale-factor", "0.25", "--edge-area-threshold", "5000", "--center-area-threshold", "2000",
         "--out", str(out), "--zip", str(zip_path)]
    )  # fmt: skip
    assert code == 0
    _write(run, tmp_path / "api/bundle", tmp_path / "api/bundle.zip")
    assert zip_path.read_bytes() == (tmp_path / "api/bundle.zip").read_bytes()


# ---------------------------------------------------------------------------------------------- workflow


@pytest.mark.slow
def test_snakemake_bundle_packs_the_finished_demo(demo_run):
    # another test may have bundled the demo already: packed again, the zip has the same bytes
    zip_path = demo_run / "results/bundle.zip"
    before = zip_path.read_bytes() if zip_path.exists() else None
    result = snakemake(
        demo_run, "bundle", "--configfile", "configs/demo.yaml", "--cores", "2", "--forcerun", "make_bundle"
    )
    assert "make_bundle" in result.stdout + result.stderr
    assert before is None or zip_path.read_bytes() == before
    config = yaml.safe_load((demo_run / "configs/demo.yaml").read_text())
    bundle = load_bundle(demo_run / "results/bundle.zip")
    assert [member.name for member in bundle.members] == config["submission"]["members"]
    assert all(len(member.weights) == config["folds"]["n_folds"] for member in bundle.members)
    assert bundle.segment == {"backend": "classical", "source": "original", "scale_factor": 0.25}
    assert bundle.class_thresholds == _csv_thresholds(demo_run / "results/thresholds.csv")
    assert bundle.manifest == load_bundle(demo_run / "results/bundle").manifest
    member = bundle.members[-1]
    checkpoint = demo_run / f"results/models/{member.name}/fold1/final.pt"
    with torch.no_grad():
        expected = load_trained_model(checkpoint, member.settings, CPU)(_inputs(member.settings))
        assert torch.equal(load_member_model(member, 1, CPU)(_inputs(member.settings)), expected)
    again = snakemake(demo_run, "bundle", "--configfile", "configs/demo.yaml", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_the_bundle_rule_runs_on_a_run_s_files(tmp_path):
    """The rule's wiring without training: a run's files made here, every other rule left out."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = yaml.safe_load((workdir / "configs/demo_2018.yaml").read_text())
    members = [
        ModelSettings.from_dict(
            {**config["model_defaults"]["image"], **config["models"][name], "name": name, "seed": 0, "n_folds": 2,
             "task": TASK_IMAGES}
        )
        for name in config["submission"]["members"]
    ]  # fmt: skip
    run = _run(workdir, tuple(members), CLASS_NAMES_2018)
    run["train_index"][1].unlink()  # the 2018 demo trains on train alone
    snakemake(workdir, "bundle", "--configfile", "configs/demo_2018.yaml", "--cores", "1",
              "--allowed-rules", "make_bundle", "bundle")  # fmt: skip
    bundle = load_bundle(workdir / "results/bundle.zip")
    assert [member.name for member in bundle.members] == config["submission"]["members"]
    assert bundle.image_sizes == tuple(config["preprocess"]["image_sizes"]) and bundle.task == TASK_IMAGES
    assert (workdir / "logs/benchmarks/make_bundle/make_bundle.tsv").is_file()


# ---------------------------------------------------------------------------- the workflow's annotate mode


def test_the_manifest_reads_from_a_folder_or_zip_without_hashing_the_weights(run, tmp_path):
    folder = _write(run, tmp_path / "bundle", tmp_path / "bundle.zip")
    expected = load_bundle(folder).manifest
    assert read_manifest(folder) == expected
    assert read_manifest(tmp_path / "bundle.zip") == expected
    (folder / "weights/cell/fold0.safetensors").write_bytes(b"damaged")  # load_bundle's job finds it
    assert read_manifest(folder) == expected
    with pytest.raises(BundleError, match=f"^{tmp_path / 'nothing.zip'} is not a bundle: neither a folder nor"):
        (tmp_path / "nothing.zip").write_bytes(b"not a zip")
        read_manifest(tmp_path / "nothing.zip")
    with pytest.raises(BundleError, match=f"^bundle {tmp_path / 'gone'} does not exist$"):
        read_manifest(tmp_path / "gone")


def test_a_copy_is_put_in_place_only_once_verified(run, tmp_path):
    _write(run, tmp_path / "bundle", tmp_path / "bundle.zip")
    copy_bundle(tmp_path / "bundle.zip", tmp_path / "from-zip")
    copy_bundle(tmp_path / "bundle", tmp_path / "from-folder")
    for copy in ("from-zip", "from-folder"):
        assert load_bundle(tmp_path / copy).manifest == load_bundle(tmp_path / "bundle").manifest
    (tmp_path / "bundle/weights/cam/fold1.safetensors").write_bytes(b"damaged")
    with pytest.raises(BundleError, match="weights/cam/fold1.safetensors does not match its sha256"):
        copy_bundle(tmp_path / "bundle", tmp_path / "refused")
    assert sorted(path.name for path in tmp_path.iterdir() if "refused" in path.name) == []
