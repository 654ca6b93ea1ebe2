"""Small files written atomically: the old file or the new one, never a short one."""

from __future__ import annotations

import os

import pytest

from hpa_pipeline.io.files import atomic_file, write_text_atomic


def test_file_appears_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    with atomic_file(path) as handle:
        handle.write("a,b\n")
        assert not path.exists()  # written beside it under a hidden name
        assert [p.name for p in path.parent.iterdir()][0].startswith(".table.csv.")
    assert path.read_text() == "a,b\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "run.yaml"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.yaml"]


def test_binary_mode(tmp_path):
    path = tmp_path / "weights.pt"
    with atomic_file(path, "wb") as handle:
        handle.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
