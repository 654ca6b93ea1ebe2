"""Progress bars: full redraws on a terminal, one readable line per update in a log file."""

from __future__ import annotations

import io
import sys

from hpa_pipeline.progress import progress


class LogFile(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_log_files_get_lines_without_carriage_returns(monkeypatch):
    log = LogFile()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress(range(5), "crop", total=5, unit="img")) == [0, 1, 2, 3, 4]
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("crop:   0%") and lines[-1].startswith("crop: 100%")
    assert "5/5" in lines[-1] and "img" in lines[-1]


def test_progress_passes_items_through_unchanged(monkeypatch):
    monkeypatch.setattr(sys, "stderr", LogFile())
    items = [("a", 1), ("b", 2)]
    assert list(progress(iter(items), "x")) == items
