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


def test_download_public_defaults_are_the_workflows(tmp_path):
    from hpa_pipeline.config import DOWNLOAD_DEFAULTS

    args = build_parser().parse_args(
        ["download-public", "--tsv", "list.csv", "--out-images", "i", "--out-table", "t.csv", "--out-failed", "f.csv"]
    )
    assert args.max_failed_fraction == 0.01
    assert {key: getattr(args, key) for key in DOWNLOAD_DEFAULTS} == DOWNLOAD_DEFAULTS
    assert (args.source, args.base_url, args.format) == ("hpa2021", None, None)  # the source's server and type
