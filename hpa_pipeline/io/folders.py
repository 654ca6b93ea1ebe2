"""What a dataset folder holds: its channel image files, and whether the demo generator wrote it.

The demo generator leaves a marker file in every dataset it writes. A folder with images but without
that marker holds someone's own data: the workflow never writes synthetic data into it, and a config
that would (``demo_data`` pointing at it) is refused before anything runs.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Written by the demo generator into every dataset it makes; its absence marks a user's own data.
SYNTHETIC_MARKER = ".hpa-pipeline-synthetic"

_CHANNEL_FILE = re.compile(r".+_(red|green|blue|yellow)\.(png|tiff?|jpg)$", re.IGNORECASE)


def holds_images(dataset: str | Path) -> bool:
    """True when a dataset folder (or its ``train/`` or ``test/``) holds any channel image file."""
    dataset = Path(dataset)
    return any(_has_channel_file(folder) for folder in (dataset, dataset / "train", dataset / "test"))


def is_synthetic(dataset: str | Path) -> bool:
    """True when the demo generator wrote ``dataset`` (it carries the generator's marker file)."""
    return (Path(dataset) / SYNTHETIC_MARKER).is_file()


def holds_real_images(dataset: str | Path) -> bool:
    """True when ``dataset`` holds channel images that the demo generator did not write."""
    return holds_images(dataset) and not is_synthetic(dataset)


def _has_channel_file(folder: Path) -> bool:
    # stops at the first match: a Kaggle train folder has ~90000 files
    if not folder.is_dir():
        return False
    return any(_CHANNEL_FILE.fullmatch(path.name) for path in folder.iterdir())
