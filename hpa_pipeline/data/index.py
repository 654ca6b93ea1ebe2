"""Building a dataset's image index (rule index_images): its IDs in table order, labels and shards.

Building the index checks every channel file up front, so a missing file is reported before hours of
work, with the full list of what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import CHANNELS, IMAGE_SUFFIXES
from hpa_pipeline.io.index import read_index, write_index
from hpa_pipeline.labels import TASK_CELLS, read_label_table


def build_index(
    image_dir: str | Path,
    table_path: str | Path,
    kind: str,
    n_shards: int,
    dataset: str | None = None,
    task: str = TASK_CELLS,
) -> pd.DataFrame:
    """List a dataset's images in table order and assign each to a shard.

    Args:
        image_dir: folder with ``{ID}_{red,green,blue,yellow}.png`` files.
        table_path: ``train.csv`` (kind "train") or ``sample_submission.csv`` (kind "test").
        kind: "train" (labelled) or "test".
        n_shards: number of shards; shard k holds a contiguous block of rows.
        dataset: the dataset's name (an extra set's config name); default: the kind.
        task: the table layout and label set (``hpa2021-cells``: ``ID,Label``; ``hpa2018-images``:
            ``Id,Target``); the index has the same columns for both.

    Returns:
        A table with columns ID, shard, Label ("" for test images), dataset.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputDataError(f"missing image folder {image_dir}")
    if n_shards < 1:
        raise InputDataError(f"number of shards must be at least 1, got {n_shards}")
    table = read_label_table(table_path, kind, task)
    available = set(os.listdir(image_dir))
    missing = [
        (f"{image_id}_{channel}.png", row + 2)
        for row, image_id in enumerate(table["ID"])
        for channel in CHANNELS
        if not any(f"{image_id}_{channel}{suffix}" in available for suffix in IMAGE_SUFFIXES)
    ]
    if missing:
        shown = ", ".join(f"{image_dir / name} (row {row})" for name, row in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputDataError(f"{table_path} lists images whose files are missing: {shown}{more}")
    n_images = len(table)
    index = pd.DataFrame(
        {
            "ID": table["ID"].to_numpy(),
            "shard": [row * n_shards // max(n_images, 1) for row in range(n_images)],
            "Label": table["Label"].to_numpy() if kind == "train" else "",
            "dataset": dataset or kind,
        }
    )
    return index


def check_disjoint(index: pd.DataFrame, table_path: str | Path, other_paths: Sequence[str | Path]) -> None:
    """Refuse a dataset whose IDs occur in other datasets' indexes.

    Image files, fold tables and submissions are named by ID alone, so an ID shared by two datasets
    would make one image overwrite or stand for the other.

    Raises:
        InputDataError: naming the shared IDs and both files.
    """
    ids = set(index["ID"])
    for other_path in other_paths:
        other = read_index(other_path)
        shared = [image_id for image_id in other["ID"] if image_id in ids]
        if shared:
            shown = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            raise InputDataError(
                f"{table_path} lists image ID(s) {shown} that dataset {other['dataset'].iloc[0]} "
                f"({other_path}) has too; IDs must be unique across datasets"
            )


def index_image_folder(image_dir: str | Path, images_per_shard: int, dataset: str = "test") -> pd.DataFrame:
    """List the images of a folder without a table (``{ID}_{red,green,blue,yellow}.png|tif|tiff|jpg``), IDs
    sorted, ``images_per_shard`` consecutive images per shard.

    Raises:
        InputDataError: the folder is missing or holds no channel file, or an image lacks a channel (every
            missing file is named).
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputDataError(f"missing image folder {image_dir}")
    if images_per_shard < 1:
        raise InputDataError(f"images per shard must be at least 1, got {images_per_shard}")
    channels_of: dict[str, set[str]] = {}
    for name in os.listdir(image_dir):
        stem, suffix = os.path.splitext(name)
        image_id, _, channel = stem.rpartition("_")
        if suffix.lower() in IMAGE_SUFFIXES and image_id and channel in CHANNELS:
            channels_of.setdefault(image_id, set()).add(channel)
    if not channels_of:
        raise InputDataError(
            f"no images in {image_dir}: expected files named {{ID}}_{{{','.join(CHANNELS)}}}.png (or .tif, .jpg)"
        )
    missing = [
        f"{image_dir / f'{image_id}_{channel}.png'}"
        for image_id in sorted(channels_of)
        for channel in CHANNELS
        if channel not in channels_of[image_id]
    ]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputDataError(f"missing channel file(s) in {image_dir}: {', '.join(missing[:10])}{more}")
    ids = sorted(channels_of)
    return pd.DataFrame(
        {"ID": ids, "shard": [row // images_per_shard for row in range(len(ids))], "Label": "", "dataset": dataset}
    )


def write_folder_index(
    image_dir: str | Path, images_per_shard: int, dataset: str, out: Path, shard_outs: Sequence[Path]
) -> pd.DataFrame:
    """Index a folder without a table (:func:`index_image_folder`) into ``out``, and each shard's rows into
    its own file (``shard_outs[k]`` for shard k), for the jobs that read one shard's images in order.

    Raises:
        InputDataError: as :func:`index_image_folder`; or the folder makes another number of shards than
            ``shard_outs`` names (images were added or removed since the workflow started: start it again).
    """
    index = index_image_folder(image_dir, images_per_shard, dataset)
    n_shards = int(index["shard"].max()) + 1
    if n_shards != len(shard_outs):
        raise InputDataError(
            f"{image_dir} now makes {n_shards} shard(s) of {images_per_shard} images, the workflow planned "
            f"{len(shard_outs)}: images were added or removed since it started; start it again"
        )
    for shard, path in enumerate(shard_outs):
        write_index(path, index[index["shard"] == shard])
    write_index(out, index)
    return index
