import copy
import re
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, copy_workflow, snakemake

from hpa_pipeline.config import (
    DOWNLOAD_DEFAULTS,
    JOB_SETTINGS_ENV,
    annotate_hpacellseg_weights,
    check_annotate_config,
    check_config,
    check_input_paths,
    download_settings,
    export_job_settings,
    exported_job_settings,
    job_settings,
    resolve_model,
    settings_json,
    train_datasets,
)
from hpa_pipeline.errors import ConfigError
from hpa_pipeline.settings import ModelSettings


@pytest.fixture
def demo_config() -> dict:
    return yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())


@pytest.fixture
def full_config() -> dict:
    return yaml.safe_load((REPO / "workflow_config.yaml").read_text())


def test_shipped_configs_pass_the_checks(demo_config, full_config):
    check_config(demo_config)
    check_config(full_config)


def test_every_resolved_model_builds_its_settings(demo_config, full_config):
    for config in (demo_config, full_config):
        for name in config["models"]:
            settings = ModelSettings.from_dict(resolve_model(config, name))
            assert settings.name == name and settings.seed == config["seed"]


def test_model_keys_override_the_kind_defaults(demo_config):
    demo_config["models"]["cam_effnet_192"]["lr"] = 0.5
    settings = resolve_model(demo_config, "cam_effnet_192")
    assert settings["lr"] == 0.5 and settings["epochs"] == demo_config["model_defaults"]["image"]["epochs"]
    assert settings_json(settings) == settings_json(dict(reversed(list(settings.items()))))


def edit(config: dict, path: str, value) -> dict:
    config = copy.deepcopy(config)
    node = config
    *parents, key = path.split(".")
    for parent in parents:
        node = node[parent]
    node[key] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("preprocess.crop_image_sizes", [999], "preprocess.crop_image_sizes: 999"),
        ("segment.inputs.test.source", 333, "segment.inputs.test.source: 333"),
        ("models.cam_effnet_192.image_size", 100, "models.cam_effnet_192.image_size: 100"),
        ("models.cam_effnet_192.crop_size", 500, "models.cam_effnet_192.crop_size 500 exceeds"),
        (
            "models.cell_resnet_192_stage2.crop_size",
            32,
            "models.cell_resnet_192_stage2: crop_size only apply to image models",
        ),
        ("models.cam_effnet_192.init_from", "ghost", "models.cam_effnet_192.init_from: unknown model 'ghost'"),
        ("models.cam_effnet_192.init_from", "cell_resnet_192_stage2", "a checkpoint only fits the same architecture"),
        (
            "models.cam_effnet_192.pseudo_labels",
            "stage9",
            "models.cam_effnet_192.pseudo_labels: unknown ensemble 'stage9'",
        ),
        ("ensembles.stage1", ["cam_effnet_192", "nobody"], "ensembles.stage1: unknown model 'nobody'"),
        ("submission.members", ["cell_resnet_192_stage3", "stage2"], "submission.members: unknown model 'stage2'"),
        (
            "ensembles.cam_effnet_192",
            ["cell_resnet_192"],
            "ensembles.cam_effnet_192: a model has this name; names must be unique across models and ensembles",
        ),
        ("extra_train_sets", {"test": {"images": "x", "table": "y", "shards": 1}}, "names train and test are taken"),
        ("extra_train_sets.pubhpa.table", "p.csv", "extra_train_sets.pubhpa: give either `table`.*not both"),
        ("extra_train_sets", {"more": {"images": "x", "shards": 1}}, "extra_train_sets.more: give either.*one of them"),
    ],
)
def test_config_mistakes_name_the_key(demo_config, path, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(edit(demo_config, path, value))


def test_dependency_cycle_is_reported_with_its_path(demo_config):
    config = edit(demo_config, "models.cam_effnet_192.pseudo_labels", "stage2")
    with pytest.raises(ConfigError, match=r"cycle: .*cam_effnet_192 -> .* -> cam_effnet_192"):
        check_config(config)


def test_train_datasets_include_the_extra_sets_in_order(demo_config):
    demo_config["extra_train_sets"] = {
        "public_hpa": {"images": "a", "table": "b", "shards": 2},
        "more": {"images": "c", "table": "d", "shards": 1},
    }
    assert train_datasets(demo_config) == ["train", "public_hpa", "more"]


def test_download_settings_fill_in_the_defaults(demo_config):
    settings = download_settings(demo_config, "pubhpa")
    assert settings["tsv"] == "resources/demo_data/public_hpa/kaggle_2021.tsv" and settings["workers"] == 2
    assert settings["format"] == "tif" and settings["limit"] is None


# ------------------------------------------------------------------------------------------- tasks


@pytest.fixture
def demo_2018_config() -> dict:
    return yaml.safe_load((REPO / "configs" / "demo_2018.yaml").read_text())


def test_the_2018_demo_and_recipe_pass_and_their_models_get_the_task(demo_2018_config):
    check_config(demo_2018_config)
    recipe = yaml.safe_load((REPO / "workflow_2018.yaml").read_text())
    check_config(recipe)
    densenet = ModelSettings.from_dict(resolve_model(recipe, "densenet121_1536"))
    assert (densenet.head, densenet.tta_crops, densenet.tta_combine, densenet.crop_size) == ("gap_gmp", 4, "max", 1024)
    settings = ModelSettings.from_dict(resolve_model(demo_2018_config, "resnet_gapgmp"))
    assert settings.task == "hpa2018-images" and settings.n_classes == 28 and settings.image_level
    assert (
        ModelSettings.from_dict(
            resolve_model(yaml.safe_load((REPO / "configs/demo.yaml").read_text()), "cam_effnet_192")
        ).n_classes
        == 19
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("models.effnet_cam.kind", "cell", "models.effnet_cam.kind: cell models classify cell crops"),
        ("models.effnet_cam.pseudo_labels", "both", "models.effnet_cam.pseudo_labels: pseudo labels are per-cell"),
        (
            "models.effnet_cam.consistency_weight",
            1.0,
            r"models.effnet_cam.consistency_weight \(on the model .*\): the cell",
        ),
        ("segment", {"backend": "classical", "inputs": {}}, "segment: task hpa2018-images has no cells"),
        ("preprocess.crop_size", 48, "preprocess.crop_size: task hpa2018-images has no cells"),
        ("preprocess.crop_image_sizes", [128], "preprocess.crop_image_sizes: task hpa2018-images"),
        ("submission.edge_area_threshold", 5000, "submission.edge_area_threshold: task hpa2018-images"),
        ("demo_data.empty_test_images", 1, "demo_data.empty_test_images: task hpa2018-images has no cells"),
        ("models.effnet_cam.swa", {"start_epoch": 9}, "models.effnet_cam.swa.start_epoch 9 is after its last epoch"),
        ("models.effnet_cam.image_size", 64, "models.effnet_cam.image_size: 64 is not one of preprocess.image_sizes"),
        ("ensemble", {"method": "rank_mean"}, "ensemble.method: rank_mean needs task hpa2021-cells"),
    ],
)
def test_settings_that_make_no_sense_for_the_2018_task_name_the_key(demo_2018_config, path, value, message):
    with pytest.raises(ConfigError, match=message):
        check_config(edit(demo_2018_config, path, value))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("models.cam_effnet_192.head", "gap_gmp", "models.cam_effnet_192.head: gap_gmp gives no class activation"),
        ("models.cam_effnet_192.tta_crops", 4, "models.cam_effnet_192.tta_crops: task hpa2021-cells predicts"),
        ("models.cell_resnet_192_stage2.head", "cam", "models.cell_resnet_192_stage2: head only apply to image"),
    ],
)
def test_settings_that_make_no_sense_for_the_2021_task_name_the_key(demo_config, path, value, message):
    with pytest.raises(ConfigError, match=message):
        check_config(edit(demo_config, path, value))


def test_the_2021_task_requires_its_cell_keys(demo_config):
    del demo_config["segment"]
    with pytest.raises(ConfigError, match="segment is required by task hpa2021-cells"):
        check_config(demo_config)


# ------------------------------------------------------------------------------------- job settings


def test_settings_json_leaves_out_what_only_changes_how_a_job_runs(demo_config):
    before = settings_json(resolve_model(demo_config, "cam_effnet_192"))
    demo_config["model_defaults"]["image"].update(compile=True, channels_last=False, predict_batch_size=3)
    assert settings_json(resolve_model(demo_config, "cam_effnet_192")) == before
    assert '"compile"' not in before and '"epochs":2' in before
    demo_config["models"]["cam_effnet_192"]["epochs"] = 3
    assert settings_json(resolve_model(demo_config, "cam_effnet_192")) != before


def test_job_settings_carry_downloads_devices_and_model_settings(demo_config, monkeypatch):
    demo_config["models"]["cam_effnet_192"]["compile"] = True
    settings = job_settings(demo_config)
    assert settings["downloads"] == {"pubhpa": {"workers": 2, "retries": 2, "timeout": 10}}
    assert settings["train_device"] == "auto" and settings["segment_device"] == "cpu"
    assert settings["models"]["cam_effnet_192"] == {"compile": True}
    assert settings["models"]["cell_resnet_192"] == {}
    monkeypatch.delenv(JOB_SETTINGS_ENV, raising=False)
    assert exported_job_settings() == {}
    export_job_settings(demo_config)
    assert exported_job_settings() == settings


def test_unreadable_exported_job_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv(JOB_SETTINGS_ENV, "{workers")
    with pytest.raises(ConfigError, match=f"\\${JOB_SETTINGS_ENV} is not valid JSON"):
        exported_job_settings()


# ---------------------------------------------------------------------------------------- input paths


@pytest.fixture
def in_workdir(tmp_path, monkeypatch):
    """The demo config's relative paths taken from an empty working directory (no demo data yet)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_demo_config_before_its_data_exists_passes(demo_config, in_workdir):
    check_input_paths(demo_config)


def test_the_full_config_in_a_checkout_without_data_passes(full_config, in_workdir):
    """Its public list is not there yet, nor input_dir: linting and listing rules must still work."""
    check_input_paths(full_config)


def test_demo_config_on_real_images_names_every_key_of_the_demos_data(demo_config, in_workdir, tiny_dataset):
    demo_config["input_dir"] = str(tiny_dataset)
    with pytest.raises(ConfigError) as error:
        check_input_paths(demo_config)
    assert "remove demo_data, truth_dir and extra_train_sets.pubhpa from the config (the demo's data)" in str(
        error.value
    )


def test_the_demos_public_list_without_demo_data_is_named(demo_config, in_workdir, tiny_dataset):
    del demo_config["demo_data"], demo_config["truth_dir"]
    demo_config["input_dir"] = str(tiny_dataset)
    with pytest.raises(ConfigError) as error:
        check_input_paths(demo_config)
    assert str(error.value) == (
        "extra_train_sets.pubhpa.download.tsv: resources/demo_data/public_hpa/kaggle_2021.tsv does not exist and "
        "no rule makes it (only demo_data writes one, into input_dir/public_hpa/kaggle_2021.tsv): remove "
        "extra_train_sets.pubhpa from the config, or point tsv at the public image list (a file or an http(s) URL)"
    )


def test_the_demos_data_next_to_real_images_is_named(demo_config, in_workdir, tiny_dataset):
    """After `make demo`, the demo's truth and public list exist, but they are synthetic."""
    from hpa_pipeline.data.synth import write_demo_dataset

    write_demo_dataset(
        in_workdir / "resources/demo_data", n_train=1, n_test=1, image_size=64, n_public=1, progress=False
    )
    del demo_config["demo_data"]
    demo_config["input_dir"] = str(tiny_dataset)
    with pytest.raises(ConfigError) as error:
        check_input_paths(demo_config)
    assert str(error.value).startswith("truth_dir (resources/demo_data/truth), extra_train_sets.pubhpa.images")
    assert str(error.value).endswith(
        f"but input_dir {tiny_dataset} holds your own images: remove truth_dir and extra_train_sets.pubhpa from "
        "the config"
    )


def test_a_missing_table_of_an_extra_set_is_named(demo_config, in_workdir, tiny_dataset):
    del demo_config["demo_data"], demo_config["truth_dir"]
    demo_config["input_dir"] = str(tiny_dataset)
    demo_config["extra_train_sets"] = {
        "mine": {"images": str(tiny_dataset / "train"), "table": "mine.csv", "shards": 1}
    }
    with pytest.raises(
        ConfigError, match=r"^extra_train_sets.mine.table: mine.csv does not exist and no rule makes it: "
    ):
        check_input_paths(demo_config)
    (in_workdir / "mine.csv").write_text("ID,Label\n")
    check_input_paths(demo_config)


# ------------------------------------------------------------------------ a finished run and its job settings


def planned_jobs(workdir: Path, config: dict, *options: str) -> dict[str, int]:
    """The jobs that `snakemake submission -n` plans for ``config`` in ``workdir``, by rule ({}: nothing to do)."""
    (workdir / "configs/changed.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "submission", "--configfile", "configs/changed.yaml", "-n", *options)
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return {}
    table = re.search(r"^job\s+count\n-+\s+-+\n(.*?)^total", output, re.MULTILINE | re.DOTALL)
    assert table, output[-3000:]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table.group(1), re.MULTILINE)}


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory) -> Path:
    """The demo's workflow as a finished run whose download table is over 1 MB.

    The demo data and the public set's download are made for real; the download's table is then that of
    the full public set (80,000 images: Snakemake checksums only files up to 1,000,000 bytes, so an unchanged
    table could not spare the jobs below a rerun download), and every later output is put in place and
    recorded by `snakemake --touch`, which stores the params, code and inputs of each job as a run does.
    """
    workdir = copy_workflow(tmp_path_factory.mktemp("finished"))
    table = workdir / "results/pubhpa/download/labels.csv"
    snakemake(workdir, str(table.relative_to(workdir)), "--configfile", "configs/demo.yaml", "--cores", "1")
    log = (workdir / "logs/download_extra_set/pubhpa.log").read_text()
    assert "downloading with 2 workers, 2 retries, a 10 s timeout" in log  # the config's, through the environment
    rows = table.read_text().splitlines()
    rows += [f"{10000 + i}_{i % 997}_B{i % 12}_{i % 4},{i % 19}|{(i + 7) % 19}" for i in range(80000)]
    table.write_text("\n".join(rows) + "\n")
    assert table.stat().st_size > 1_000_000
    summary = snakemake(workdir, "submission", "--configfile", "configs/demo.yaml", "--summary").stdout
    for line in summary.splitlines()[1:]:
        path, *_, status, _plan = line.split("\t")
        if status == "missing":
            path = workdir / path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir() if path.suffix == ".zarr" else path.write_text("")
    snakemake(workdir, "submission", "--configfile", "configs/demo.yaml", "--touch", "--forceall", "--cores", "1")
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("extra_train_sets.pubhpa.download.workers", 5),
        ("extra_train_sets.pubhpa.download.retries", 5),
        ("extra_train_sets.pubhpa.download.timeout", 30),
        ("model_defaults.image.compile", True),
        ("model_defaults.cell.channels_last", False),
        ("models.cam_effnet_192.predict_batch_size", 4),
        ("train_device", "cpu"),
        ("segment.device", "auto"),
        ("jobs_per_gpu", 4),
    ],
)
def test_changing_a_job_setting_of_a_finished_run_reruns_nothing(finished_demo, demo_config, path, value):
    assert planned_jobs(finished_demo, edit(demo_config, path, value)) == {}


@pytest.mark.slow
def test_changing_threads_of_a_finished_run_reruns_nothing(finished_demo, demo_config):
    threads = ["train_model=1", "predict_valid=2", "resize_image=1", "segment=2", "download_extra_set=3"]
    assert planned_jobs(finished_demo, demo_config, "--cores", "1", "--set-threads", *threads) == {}


@pytest.mark.slow
def test_changing_what_a_finished_run_computes_reruns_it(finished_demo, demo_config):
    """The control: the same finished run does rerun for settings that change results."""
    assert planned_jobs(finished_demo, demo_config) == {}
    limited = planned_jobs(finished_demo, edit(demo_config, "extra_train_sets.pubhpa.download.limit", 4))
    # with truth, the stage submissions too: 12 more test predictions and 3 make_stage_submission
    assert limited["download_extra_set"] == 1 and limited["train_model"] == 14 and sum(limited.values()) == 79
    # cam_effnet_192, the model initialised from it and the stage-2 and stage-3 models trained on its
    # ensemble; the stage-1 cell models stay
    longer = planned_jobs(finished_demo, edit(demo_config, "models.cam_effnet_192.epochs", 3))
    assert longer["train_model"] == 2 + 2 + 4 + 2 and "download_extra_set" not in longer


@pytest.mark.slow
def test_ensemble_method_mean_keeps_a_finished_run_and_weights_refits_what_it_combines(finished_demo, demo_config):
    assert planned_jobs(finished_demo, edit(demo_config, "ensemble", {"method": "mean"})) == {}
    weighted = planned_jobs(finished_demo, edit(demo_config, "ensemble.method", "weights"))
    assert (weighted["fit_weights"], weighted["fit_submission_weights"], weighted["average_ensemble"]) == (2, 1, 2)
    # new pseudo labels retrain stages 2 and 3; the stage-1 models stay
    assert weighted["train_model"] == 2 * (2 + 1) and weighted["make_stage_submission"] == 3


# ------------------------------------------------------------------------------------------ downloads

V18_SET = {"images": "data/hpav18", "shards": 1, "download": {"tsv": "data/v18.csv"}}


def test_a_2018_download_reads_the_v18_list_from_the_v18_server(demo_2018_config):
    demo_2018_config["extra_train_sets"] = {"hpav18": copy.deepcopy(V18_SET)}
    check_config(demo_2018_config)
    settings = download_settings(demo_2018_config, "hpav18")
    assert (settings["source"], settings["base_url"], settings["format"]) == (
        "hpa_v18",
        "http://v18.proteinatlas.org/images",
        "jpg",
    )
    assert (settings["workers"], settings["max_failed_fraction"], settings["limit"]) == (16, 0.01, None)
    recipe = yaml.safe_load((REPO / "workflow_2018.yaml").read_text())
    assert download_settings(recipe, "hpav18")["source"] == "hpa_v18"


def test_a_2021_download_keeps_its_list_and_server(demo_config):
    settings = download_settings(demo_config, "pubhpa")
    assert (settings["source"], settings["format"]) == ("hpa2021", "tif")
    del demo_config["extra_train_sets"]["pubhpa"]["download"]["base_url"]
    assert download_settings(demo_config, "pubhpa")["base_url"] == "https://images.proteinatlas.org"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "extra_train_sets.hpav18.download.source",
            "hpa2021",
            "extra_train_sets.hpav18.download.source: hpa2021 lists labels of task hpa2021-cells, this config's "
            "task is hpa2018-images; use source hpa_v18",
        ),
        (
            "extra_train_sets.hpav18.download.format",
            "png",
            r"extra_train_sets.hpav18.download.format: png is not a file type of source hpa_v18 \(jpg\)",
        ),
        ("extra_train_sets.hpav18.table", "v18.csv", "extra_train_sets.hpav18: give either `table`.*not both"),
        ("extra_train_sets.test", V18_SET, "extra_train_sets.test: the names train and test are taken"),
    ],
)
def test_a_2018_download_the_task_cannot_use_is_refused_naming_the_key(demo_2018_config, path, value, message):
    demo_2018_config["extra_train_sets"] = {"hpav18": copy.deepcopy(V18_SET)}
    with pytest.raises(ConfigError, match=message):
        check_config(edit(demo_2018_config, path, value))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "extra_train_sets.pubhpa.download.source",
            "hpa_v18",
            "extra_train_sets.pubhpa.download.source: hpa_v18 lists labels of task hpa2018-images, this config's "
            "task is hpa2021-cells; use source hpa2021",
        ),
        (
            "extra_train_sets.pubhpa.download.format",
            "jpg",
            r"extra_train_sets.pubhpa.download.format: jpg is not a file type of source hpa2021 \(tif, png\)",
        ),
    ],
)
def test_a_2021_download_of_the_v18_kind_is_refused_naming_the_key(demo_config, path, value, message):
    with pytest.raises(ConfigError, match=message):
        check_config(edit(demo_config, path, value))


def test_the_download_defaults_are_set_only_in_the_package():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    download = schema["properties"]["extra_train_sets"]["additionalProperties"]["properties"]["download"]
    assert [key for key, spec in download["properties"].items() if "default" in spec] == []
    assert DOWNLOAD_DEFAULTS["max_failed_fraction"] == 0.01
    readme = (REPO / "README.md").read_text()
    assert f"max_failed_fraction: {DOWNLOAD_DEFAULTS['max_failed_fraction']}" in readme


# -------------------------------------------------------------------------------------------- annotate mode


def test_the_annotate_modes_paths_are_checked_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "new").mkdir()
    (tmp_path / "bundle.zip").touch()
    config = {"annotate": {"bundle": "bundle.zip", "input_dir": "new", "segment_weights": None}}
    check_annotate_config(config)
    for key, value, message in (
        ("bundle", "gone.zip", "annotate.bundle: gone.zip does not exist; give a bundle folder or .zip"),
        ("input_dir", "bundle.zip", "annotate.input_dir: bundle.zip does not exist; give a folder of {ID}_"),
        ("segment_weights", "weights", "annotate.segment_weights: weights does not exist; give the folder of"),
    ):
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            check_annotate_config({"annotate": {**config["annotate"], key: value}})


def test_the_annotate_modes_job_settings_are_its_devices(monkeypatch):
    monkeypatch.delenv(JOB_SETTINGS_ENV, raising=False)
    export_job_settings({"annotate": {"bundle": "b", "input_dir": "i"}, "predict_device": "cuda:1"})
    assert exported_job_settings() == {"predict_device": "cuda:1", "segment_device": "auto"}


def test_hpacellseg_bundles_take_their_weights_from_the_named_folder():
    segment = {
        "nuclei_model": "n.pth",
        "nuclei_model_sha256": "a" * 64,
        "cell_model": "c.pth",
        "cell_model_sha256": "b" * 64,
    }
    assert annotate_hpacellseg_weights({"annotate": {"segment_weights": "/w"}}, segment) == {
        "nuclei_model": "/w/n.pth",
        "nuclei_model_sha256": "a" * 64,
        "cell_model": "/w/c.pth",
        "cell_model_sha256": "b" * 64,
    }
    with pytest.raises(ConfigError, match=r"^annotate\.segment_weights: the bundle segments with hpacellseg; name"):
        annotate_hpacellseg_weights({"annotate": {}}, segment)
