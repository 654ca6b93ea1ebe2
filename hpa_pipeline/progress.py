"""Progress bars that stay readable in log files."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class _LineWriter:
    """Turns tqdm's carriage-return redraws into one line per update for files that are not terminals."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr (a line every 30 s when stderr is a log file)."""
    stream = sys.stderr
    if stream.isatty():
        return iter(tqdm(iterable, desc=desc, total=total, unit=unit, file=stream))
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, file=_LineWriter(stream), mininterval=30, ascii=True))
