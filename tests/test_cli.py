import json
import logging
import re
from pathlib import Path

import pytest

from hpa_pipeline.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> set[str]:
    parser = build_parser()
    return set(next(action for action in parser._actions if action.dest == "command").choices)


def test_every_rule_calls_an_existing_subcommand():
    called = set()
    for path in (REPO / "rules").glob("*.smk"):
        called |= set(re.findall(r"hpa-pipeline ([a-z-]+)", path.read_text()))
    assert called, "no rule calls hpa-pipeline"
    assert called <= _subcommands(), called - _subcommands()


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: hpa-pipeline " + command in capsys.readouterr().out


def test_a_user_error_is_one_line_and_exit_status_one(tmp_path, caplog):
    code = main(["index", "--images", str(tmp_path / "absent"), "--table", str(tmp_path / "t.csv"),
                 "--kind", "train", "--shards", "1", "--out", str(tmp_path / "index.csv")])  # fmt: skip
    assert code == 1
    assert [record.levelname for record in caplog.records] == ["ERROR"]
    assert caplog.records[0].getMessage() == f"missing image folder {tmp_path / 'absent'}"
    assert caplog.records[0].exc_info is None  # no traceback
    assert not (tmp_path / "index.csv").exists()


def test_a_subcommand_runs_end_to_end(tiny_dataset, tmp_path):
    out = tmp_path / "index.csv"
    assert main(["index", "--images", str(tiny_dataset / "train"), "--table", str(tiny_dataset / "train.csv"),
                 "--kind", "train", "--shards", "2", "--out", str(out)]) == 0  # fmt: skip
    assert out.read_text().splitlines()[0] == "ID,shard,Label,dataset"
    folds = tmp_path / "folds.csv"
    assert main(["folds", "--index", str(out), "--n-folds", "2", "--seed", "0", "--out", str(folds)]) == 0
    assert len(folds.read_text().splitlines()) == 6


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--shards", "x"])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_download_takes_the_workflows_job_settings_of_its_dataset(tmp_path, monkeypatch, caplog):
    """The workflow hands workers, retries and timeout over in the environment (no rule params); an
    option given on the command line wins."""
    from hpa_pipeline.config import JOB_SETTINGS_ENV
    from hpa_pipeline.data.synth import write_demo_dataset

    write_demo_dataset(tmp_path / "demo", n_train=1, n_test=1, image_size=64, n_public=2, progress=False)
    caplog.set_level(logging.INFO, logger="hpa_pipeline")
    job = {"downloads": {"pubhpa": {"workers": 3, "retries": 1, "timeout": 7}, "other": {"workers": 9}}}
    monkeypatch.setenv(JOB_SETTINGS_ENV, json.dumps(job))
    command = ["download-public", "--tsv", str(tmp_path / "demo/public_hpa/kaggle_2021.tsv"),
               "--base-url", str(tmp_path / "demo/public_hpa/server"), "--out-images", str(tmp_path / "images"),
               "--out-table", str(tmp_path / "labels.csv"), "--out-failed", str(tmp_path / "failed.csv"),
               "--dataset", "pubhpa"]  # fmt: skip
    assert main(command) == 0
    assert "downloading with 3 workers, 1 retries, a 7 s timeout" in caplog.messages
    assert len((tmp_path / "labels.csv").read_text().splitlines()) == 3
    caplog.clear()
    assert main([*command, "--workers", "2"]) == 0
    assert "downloading with 2 workers, 1 retries, a 7 s timeout" in caplog.messages
    monkeypatch.delenv(JOB_SETTINGS_ENV)
    caplog.clear()
    assert main(command) == 0
    assert "downloading with 16 workers, 4 retries, a 60 s timeout" in caplog.messages


def test_download_public_defaults_are_the_workflows(tmp_path):
    from hpa_pipeline.config import DOWNLOAD_DEFAULTS, DOWNLOAD_JOB_SETTINGS

    args = build_parser().parse_args(
        ["download-public", "--tsv", "list.csv", "--out-images", "i", "--out-table", "t.csv", "--out-failed", "f.csv"]
    )
    assert args.max_failed_fraction == 0.01
    data_defaults = {key: value for key, value in DOWNLOAD_DEFAULTS.items() if key not in DOWNLOAD_JOB_SETTINGS}
    assert {key: getattr(args, key) for key in data_defaults} == data_defaults
    # the job settings default to the workflow's (test_download_takes_the_workflows_job_settings_of_its_dataset)
    assert [getattr(args, key) for key in DOWNLOAD_JOB_SETTINGS] == [None, None, None]
    assert (args.source, args.base_url, args.format) == ("hpa2021", None, None)  # the source's server and type


@pytest.mark.parametrize("extra", [["--method", "weights"], ["--method", "rank_mean", "--weights", "w.csv"]])
def test_a_weights_file_goes_with_method_weights_only(tmp_path, caplog, extra):
    command = ["average", "--members", str(tmp_path / "m.zarr"), "--name", "e", "--out", str(tmp_path / "e.zarr")]
    assert main([*command, *extra]) == 1
    assert caplog.records[-1].getMessage() == "--weights FILE goes with --method weights, and only with it"
    assert not (tmp_path / "e.zarr").exists()
