from pathlib import Path

import pytest
import yaml
from conftest import store_paths
from test_loop import IMAGE_SETTINGS

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.settings import (
    MODEL_JOB_SETTINGS,
    ModelData,
    ModelSettings,
    kind_only_settings,
    model_settings_schema,
    model_stores,
    required_settings,
)

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def test_the_config_schema_holds_the_generated_model_settings():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["model_settings"] == model_settings_schema()


def test_every_schema_setting_is_a_field_and_reaches_the_dataclass():
    properties = model_settings_schema()["properties"]
    assert "focal_gamma" in properties  # accepted by the schema, so it must be a real setting
    values = dict(IMAGE_SETTINGS, focal_gamma=1.5)
    assert ModelSettings.from_dict(values).focal_gamma == 1.5


def test_required_and_kind_only_settings_come_from_the_fields():
    assert required_settings() == ["kind", "backbone", "image_size", "epochs", "batch_size", "lr"]
    assert kind_only_settings("cell") == {
        "crop_size",
        "focal_gamma",
        "consistency_weight",
        "hflip",
        "head",
        "tta_crops",
    }
    assert kind_only_settings("image") == frozenset()


def test_model_kind_decides_the_stores():
    assert model_stores("image") == ["images", "masks"]
    assert model_stores("cell") == ["crops"]
    assert model_stores("image", "hpa2018-images") == ["images"]  # no cells, no masks in the image-level task
    with pytest.raises(ConfigError, match="image models only"):
        model_stores("cell", "hpa2018-images")
    with pytest.raises(ConfigError, match="'tile'"):
        model_stores("tile")


def test_open_arrays_names_a_missing_store_option(demo_stores):
    data = ModelData(index_paths=[], folds_paths=[], cells_paths=store_paths(demo_stores, "train", "cells"))
    with pytest.raises(InputDataError, match="--crops"):
        data.open_arrays("cell")
    data.crops_paths = store_paths(demo_stores, "train", "crops_96")
    arrays = data.open_arrays("cell")
    assert list(arrays) == ["crops"] and len(arrays["crops"]) > 0


def test_settings_round_trip_through_json_and_digest():
    settings = ModelSettings.from_dict(IMAGE_SETTINGS)
    import json

    again = ModelSettings.from_json(json.dumps(settings.to_dict()))
    assert again == settings and again.digest() == settings.digest()
    assert ModelSettings.from_dict(dict(IMAGE_SETTINGS, lr=0.5)).digest() != settings.digest()
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelSettings.from_json("{")
    with pytest.raises(ConfigError, match="missing setting.*backbone"):
        ModelSettings.from_dict({k: v for k, v in IMAGE_SETTINGS.items() if k != "backbone"})


def test_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="unknown setting.*learning_rate"):
        ModelSettings.from_dict(dict(IMAGE_SETTINGS, learning_rate=1))


def test_job_settings_fill_in_only_what_the_json_leaves_out():
    import json

    values = {key: value for key, value in IMAGE_SETTINGS.items() if key not in MODEL_JOB_SETTINGS}
    job = {IMAGE_SETTINGS["name"]: {"compile": True, "predict_batch_size": 3}, "other": {"compile": False}}
    settings = ModelSettings.from_json(json.dumps(values), job)
    assert settings.compile is True and settings.predict_batch_size == 3 and settings.channels_last is True
    given = ModelSettings.from_json(json.dumps(dict(values, predict_batch_size=5)), job)
    assert given.predict_batch_size == 5 and given.compile is True


def test_a_checkpoint_is_resumed_across_a_change_of_job_settings():
    settings = ModelSettings.from_dict(IMAGE_SETTINGS)
    for key, value in (("compile", True), ("channels_last", False), ("predict_batch_size", 7)):
        assert ModelSettings.from_dict(dict(IMAGE_SETTINGS, **{key: value})).digest() == settings.digest()
    assert ModelSettings.from_dict(dict(IMAGE_SETTINGS, tta=4)).digest() != settings.digest()
