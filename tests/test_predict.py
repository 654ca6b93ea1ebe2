import numpy as np
import pytest
from conftest import store_paths
from test_loop import CELL_SETTINGS, IMAGE_SETTINGS, training_data
from test_predictions import prediction_set

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.folds import read_labelled_images
from hpa_pipeline.io.predictions import read_predictions
from hpa_pipeline.io.stores import open_store
from hpa_pipeline.predict import concat_fold_stores, concat_folds, predict_split
from hpa_pipeline.settings import ModelData, ModelSettings
from hpa_pipeline.train.loop import train_model


@pytest.fixture(scope="module", params=["image", "cell"])
def trained(request, demo_stores, tmp_path_factory):
    """A model of each kind trained on both folds."""
    settings = ModelSettings.from_dict(dict(IMAGE_SETTINGS if request.param == "image" else CELL_SETTINGS, epochs=1))
    root = tmp_path_factory.mktemp(f"trained_{request.param}")
    for fold in (0, 1):
        train_model(
            settings,
            fold,
            training_data(demo_stores, settings.kind),
            root / f"fold{fold}",
            root / f"ckpt{fold}",
            "cpu",
            1,
        )
    return settings, root


def test_valid_predictions_cover_exactly_the_held_out_fold(trained, demo_stores):
    settings, root = trained
    for fold in (0, 1):
        predict_split(
            settings,
            root / f"fold{fold}/final.pt",
            training_data(demo_stores, settings.kind),
            root / f"valid{fold}.zarr",
            fold,
            "cpu",
            1,
        )
    base = demo_stores["root"]
    images = read_labelled_images([base / "train/index.csv"], [base / "folds/train.csv"])
    valid = read_predictions(root / "valid0.zarr")
    assert valid.ids == [image_id for image_id, fold in zip(images.ids, images.folds) if fold == 0]
    assert valid.probs.shape[1:] == (19, settings.tta)
    assert valid.image_probs.shape == (len(valid.ids), 19, settings.tta)
    assert np.isfinite(valid.probs).all() and ((valid.probs >= 0) & (valid.probs <= 1)).all()
    assert open_store(root / "valid0.zarr", "predictions").attrs["tta"] == {
        "views": "d4",
        "predicted": settings.tta,
        "combine": "mean",
        "stored": settings.tta,
    }
    concat_fold_stores(
        [root / "valid1.zarr", root / "valid0.zarr"], [base / "train/index.csv"], root / "oof.zarr", settings.name
    )
    oof = read_predictions(root / "oof.zarr")
    assert oof.ids == images.ids
    cells = [read_cell_table(path) for path in store_paths(demo_stores, "train", "cells")]
    assert oof.instance.tolist() == [k for table in cells for k in table.instance.tolist()]


def test_test_predictions_follow_the_test_cell_tables(trained, demo_stores):
    settings, root = trained
    data = ModelData(index_paths=[], folds_paths=[], cells_paths=store_paths(demo_stores, "test", "cells"))
    if settings.kind == "image":
        data.images_paths = store_paths(demo_stores, "test", "images_96")
        data.masks_paths = store_paths(demo_stores, "test", "masks_96")
    else:
        data.crops_paths = store_paths(demo_stores, "test", "crops_96")
    predict_split(settings, root / "fold0/final.pt", data, root / "test.zarr", None, "cpu", 1)
    table = read_cell_table(store_paths(demo_stores, "test", "cells")[0])
    test = read_predictions(root / "test.zarr")
    assert test.ids == table.ids
    assert np.array_equal(test.offsets, table.offsets) and np.array_equal(test.instance, table.instance)


def test_checkpoint_of_another_architecture_is_refused(trained, demo_stores, tmp_path):
    settings, root = trained
    other = ModelSettings.from_dict(dict(settings.to_dict(), cosine_head=True))
    with pytest.raises(ConfigError, match="trained with other cosine_head"):
        predict_split(
            other, root / "fold0/final.pt", training_data(demo_stores, settings.kind), tmp_path / "v.zarr", 0, "cpu", 1
        )
    assert not (tmp_path / "v.zarr").exists()


def test_concat_reports_missing_and_twice_predicted_images(trained, demo_stores, tmp_path):
    settings, root = trained
    base = demo_stores["root"]
    predict_split(
        settings, root / "fold0/final.pt", training_data(demo_stores, settings.kind), tmp_path / "v0.zarr", 0, "cpu", 1
    )
    with pytest.raises(InputDataError, match="no fold predicts image"):
        concat_fold_stores([tmp_path / "v0.zarr"], [base / "train/index.csv"], tmp_path / "oof.zarr", "m")
    with pytest.raises(InputDataError, match="predicted by two folds"):
        concat_fold_stores(
            [tmp_path / "v0.zarr", tmp_path / "v0.zarr"], [base / "train/index.csv"], tmp_path / "oof.zarr", "m"
        )
    assert not (tmp_path / "oof.zarr").exists()


def test_concat_folds_gives_canonical_order():
    fold0 = prediction_set({"b": [1], "d": []})
    fold1 = prediction_set({"a": [4, 5], "c": [2]})
    oof = concat_folds([fold0, fold1], [("train", image_id) for image_id in "abcd"])
    assert oof.ids == ["a", "b", "c", "d"] and oof.instance.tolist() == [4, 5, 1, 2]


def test_image_task_predicts_images_only_with_random_crops_combined_by_max(demo_stores, tmp_path):
    from test_loop import IMAGE_TASK_SETTINGS, image_task_data

    from hpa_pipeline.io.predictions import read_predictions
    from hpa_pipeline.predict import predict_split
    from hpa_pipeline.settings import ModelSettings
    from hpa_pipeline.train.loop import train_model

    settings = ModelSettings.from_dict(dict(IMAGE_TASK_SETTINGS, epochs=1, tta_crops=3, tta_combine="max"))
    data = image_task_data(demo_stores)
    train_model(settings, 1, data, tmp_path / "model", tmp_path / "ckpt")
    predict_split(settings, tmp_path / "model" / "final.pt", data, tmp_path / "valid.zarr", fold=1)
    valid = read_predictions(tmp_path / "valid.zarr")
    assert valid.n_cells == 0 and valid.probs.shape == (0, 28, 1)  # no cells; 3 crops -> their max
    assert valid.image_probs.shape == (len(valid.ids), 28, 1) and len(valid.ids) > 0
    mean = ModelSettings.from_dict(dict(IMAGE_TASK_SETTINGS, epochs=1, tta_crops=3))
    predict_split(mean, tmp_path / "model" / "final.pt", data, tmp_path / "mean.zarr", fold=1)
    crops = read_predictions(tmp_path / "mean.zarr").image_probs
    assert crops.shape[2] == 3 and np.allclose(crops.max(axis=2), valid.image_probs[:, :, 0], atol=1e-6)
    # the stores record the views predicted and what their combination left
    recorded = {name: open_store(tmp_path / name, "predictions").attrs["tta"] for name in ("valid.zarr", "mean.zarr")}
    assert recorded == {
        "valid.zarr": {"views": "random_crops", "predicted": 3, "combine": "max", "stored": 1},
        "mean.zarr": {"views": "random_crops", "predicted": 3, "combine": "mean", "stored": 3},
    }
