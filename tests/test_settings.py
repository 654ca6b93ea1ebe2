from pathlib import Path

import pytest
import yaml
from conftest import store_paths
from test_loop import IMAGE_SETTINGS

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.settings import (
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
