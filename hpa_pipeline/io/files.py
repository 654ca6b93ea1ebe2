"""Small files (CSV, JSON, YAML, checkpoints) written atomically: readers see the old file or the new one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_args: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing and rename it into place when the block succeeds.

    The data is flushed to disk before the rename, so a crash right after it cannot leave a short file;
    on an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def replace_directory(partial: Path, path: Path) -> None:
    """Put the finished folder ``partial`` in place of ``path`` (an older ``path`` is moved aside first, so
    a reader never sees a mix of the two)."""
    if path.exists():
        trash = path.with_name(f".{path.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        os.replace(partial, path)
        shutil.rmtree(trash)
    else:
        os.replace(partial, path)
