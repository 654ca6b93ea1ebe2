import pytest
import torch
import yaml
from test_loop import IMAGE_SETTINGS, training_data

from hpa_pipeline.settings import ModelSettings
from hpa_pipeline.train.checkpoints import (
    input_fingerprint,
    resume,
    save_checkpoint,
    write_metrics_csv,
    write_outputs,
)
from hpa_pipeline.train.loop import train_model


def _state(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_resume_restores_the_state_of_the_same_settings_fold_and_inputs(tmp_path):
    settings = ModelSettings.from_dict(IMAGE_SETTINGS)
    model, optimizer = _state(0)
    rows = [{"epoch": 1, "train_loss": 0.5}]
    path = tmp_path / "last.pt"
    save_checkpoint(
        path,
        epoch=0,
        fold=1,
        model=model,
        optimizer=optimizer,
        scaler=None,
        metrics=rows,
        settings=settings,
        inputs="abc",
    )
    fresh, fresh_optimizer = _state(1)
    got_rows, start = resume(
        path,
        settings=settings,
        fold=1,
        inputs="abc",
        model=fresh,
        optimizer=fresh_optimizer,
        scaler=None,
        device=torch.device("cpu"),
    )
    assert (got_rows, start) == (rows, 1)
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


@pytest.mark.parametrize("change", ["settings", "fold", "inputs"])
def test_a_checkpoint_of_other_settings_fold_or_inputs_is_ignored(tmp_path, change):
    settings = ModelSettings.from_dict(IMAGE_SETTINGS)
    model, optimizer = _state(0)
    save_checkpoint(
        tmp_path / "last.pt",
        epoch=3,
        fold=1,
        model=model,
        optimizer=optimizer,
        scaler=None,
        metrics=[],
        settings=settings,
        inputs="abc",
    )
    fresh, fresh_optimizer = _state(1)
    before = fresh.weight.clone()
    asked = {"settings": settings, "fold": 1, "inputs": "abc"}
    asked[change] = {"settings": ModelSettings.from_dict(dict(IMAGE_SETTINGS, lr=0.5)), "fold": 0, "inputs": "x"}[
        change
    ]
    assert resume(
        tmp_path / "last.pt", model=fresh, optimizer=fresh_optimizer, scaler=None, device=torch.device("cpu"), **asked
    ) == ([], 0)
    assert torch.equal(fresh.weight, before)
    assert resume(
        tmp_path / "absent.pt", model=fresh, optimizer=fresh_optimizer, scaler=None, device=torch.device("cpu"), **asked
    ) == ([], 0)


def test_fingerprint_changes_when_a_store_is_rebuilt(tmp_path):
    store = tmp_path / "a.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    table = tmp_path / "index.csv"
    table.write_text("ID\n")
    before = input_fingerprint([store, table])
    assert input_fingerprint([store, table]) == before
    import os

    stat = (store / "zarr.json").stat()
    os.utime(store / "zarr.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert input_fingerprint([store, table]) != before
    assert input_fingerprint([store, tmp_path / "missing.csv"]) != before


def test_outputs_hold_settings_versions_and_metrics(tmp_path):
    settings = ModelSettings.from_dict(IMAGE_SETTINGS)
    model, _ = _state(0)
    rows = [{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.05, "valid_image_map": 0.5}]
    write_outputs(
        tmp_path, model=model, settings=settings, fold=0, metrics=rows, device="cpu", threads=2, inputs=[tmp_path / "x"]
    )
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,lr,valid_image_map", "1,0.1,", "2,0.05,0.5"]
    run = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert run["settings"] == settings.to_dict() and run["versions"]["torch"] == torch.__version__
    final = torch.load(tmp_path / "final.pt", weights_only=False)
    assert final["settings"] == settings.to_dict() and torch.equal(final["model"]["weight"], model.weight)
    write_metrics_csv(tmp_path / "again.csv", rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.csv", "final.pt", "metrics.csv", "run.yaml"]


def test_checkpoint_of_other_settings_is_not_resumed(demo_stores, tmp_path, caplog):
    data = training_data(demo_stores, "image")
    train_model(
        ModelSettings.from_dict(dict(IMAGE_SETTINGS, epochs=1)), 0, data, tmp_path / "a", tmp_path / "ckpt", "cpu", 1
    )
    caplog.set_level("INFO")
    train_model(
        ModelSettings.from_dict(dict(IMAGE_SETTINGS, epochs=1, lr=5e-4)),
        0,
        data,
        tmp_path / "b",
        tmp_path / "ckpt",
        "cpu",
        1,
    )
    assert "ignoring" in caplog.text and "resuming" not in caplog.text
