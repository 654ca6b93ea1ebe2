import copy

import pytest
import yaml
from workflow_helpers import REPO

from hpa_pipeline.config import (
    DOWNLOAD_DEFAULTS,
    check_config,
    download_settings,
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
        ("submission.members", ["cam_effnet_stage3", "stage2"], "submission.members: unknown model 'stage2'"),
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
