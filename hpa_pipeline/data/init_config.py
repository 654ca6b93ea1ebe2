"""``hpa-pipeline init-config``: check a user's dataset folder and write a complete, commented config for it.

The folder's ``train.csv`` decides the task: ``ID,Label`` is HPA 2021 (task ``hpa2021-cells``), ``Id,Target``
HPA 2018 (task ``hpa2018-images``). The config is a preset of the workflow for that task (2021:
``configs/demo.yaml`` or ``workflow_config.yaml``; 2018: ``configs/demo_2018.yaml`` or ``workflow_2018.yaml``)
with every key and comment kept, in which the data-dependent keys are written for the folder: ``input_dir``,
``truth_dir`` (only when the folder carries truth: 2021 ``truth/cells.csv``, 2018 ``truth/test.csv``), the
shard counts (from the image counts) and, in the 2021 task, the submission's area thresholds (from the image
size). ``demo_data`` is never written: the data exists already. The folder is checked first (layout, tables,
four readable channels per ID of one size, bit depth) and every problem is one error naming the file; nothing
is written unless the whole config is valid.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.channels import CHANNELS, IMAGE_SUFFIXES, read_channel_raw
from hpa_pipeline.io.files import write_text_atomic
from hpa_pipeline.io.folders import is_synthetic
from hpa_pipeline.labels import TASK_CELLS, TASK_IMAGES, class_names, read_label_table

#: Task -> preset name -> the workflow file it copies.
PRESETS: dict[str, dict[str, str]] = {
    TASK_CELLS: {"demo": "configs/demo.yaml", "full": "workflow_config.yaml"},
    TASK_IMAGES: {"demo": "configs/demo_2018.yaml", "full": "workflow_2018.yaml"},
}
#: The columns of ``train.csv`` that tell the task.
TASK_COLUMNS: dict[str, tuple[str, str]] = {TASK_CELLS: ("ID", "Label"), TASK_IMAGES: ("Id", "Target")}
#: Per task, the file under ``truth/`` that rule evaluate scores against.
TRUTH_FILES: dict[str, str] = {TASK_CELLS: "cells.csv", TASK_IMAGES: "test.csv"}
#: Keys init-config writes itself; every other key of the preset is copied with its comments.
DATA_KEYS = ("task", "input_dir", "truth_dir", "demo_data", "shards", "extra_train_sets", "submission")
#: The public HPA list of the full preset: trained on when the folder holds it.
PUBLIC_TABLE = "kaggle_2021.tsv"
#: A comment for the preset keys whose comments sit on their nested keys only, so that every key has one.
KEY_COMMENTS: dict[str, str] = {
    "preprocess": "# Preprocessing: the sizes of the resized images and of the cell crops.",
    "segment": "# Cell segmentation: the backend and what each dataset is segmented from.",
    "folds": "# Cross-validation folds, shared by every model.",
    "model_defaults": "# Settings shared by every model of a kind; a model's own keys override them.",
    "models": "# The models: kind image = CAM model on whole images, kind cell = cell-crop model.",
    "ensembles": "# Ensembles: equal-weight averages of their members' out-of-fold predictions.",
}
#: Images per shard, per task: the full configurations' shards on Kaggle's images (2021: 64 train and 4 test
#: shards for 21806 and 559 images; 2018: 64 and 20 for 31072 and 11702).
IMAGES_PER_SHARD = {TASK_CELLS: {"train": 340, "test": 140}, TASK_IMAGES: {"train": 500, "test": 600}}
#: The original's area thresholds (px) on 2048 px fields; they scale with the image area.
AREA_THRESHOLDS_2048 = {"edge_area_threshold": 80000, "center_area_threshold": 32000}
#: A guess of cells per HPA field (10-40 on real fields) for the disk estimate of crops and cell tables.
CELLS_PER_IMAGE = 25
#: final.pt (float32 weights and buffers) plus last.pt (also Adam's moments): measured 17.2 on the demo.
CHECKPOINT_BYTES_PER_PARAMETER = 18
#: Images decoded completely per split by default (every file's header is always read).
DECODE_SAMPLE = 16
#: Per task, job seconds of the demo preset's run on the project's shared 2-core build machine
#: (logs/benchmarks/): preprocessing per megapixel of input, training and prediction of the preset's tiny
#: models x 2 folds per training image, and the rest (folds, plots, evaluation, submission). 2021: `make demo`,
#: 11 min wall for 24 + 6 images of 512 px, 10 models, with segmentation; 2018: the 2018 demo, 4.5 min wall
#: for 96 + 24 images of 256 px, 2 models, resizing only. Used for the demo preset's rough time only; an
#: idle machine is about twice as fast.
DEMO_SECONDS: dict[str, dict[str, float]] = {
    TASK_CELLS: {"per_megapixel": 5.0, "per_train_image": 26.0, "fixed": 60.0},
    TASK_IMAGES: {"per_megapixel": 0.4, "per_train_image": 2.8, "fixed": 70.0},
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY = 0
_TOP_LEVEL_KEY = re.compile(r"([A-Za-z_][\w-]*):")


@dataclass
class SplitSummary:
    """What one split (train or test) of a dataset holds.

    Attributes:
        name: ``"train"`` or ``"test"``.
        ids: the table's IDs, in table order.
        sizes: (height, width) -> number of images.
        bit_depths: bits per channel (8 or 16) -> number of channel files.
        unlisted: IDs with channel files in the folder that the table does not list.
        decoded: number of images decoded completely.
    """

    name: str
    ids: list[str]
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    bit_depths: Counter[int] = field(default_factory=Counter)
    unlisted: list[str] = field(default_factory=list)
    decoded: int = 0


@dataclass
class DatasetSummary:
    """A checked dataset folder in the Kaggle layout.

    Attributes:
        input_dir: the folder (absolute).
        train, test: the splits.
        label_counts: images per class in ``train.csv`` (19 or 28 entries).
        truth_dir: ``input_dir/truth`` when it holds the task's truth (``TRUTH_FILES``), else None.
        synthetic: the demo generator wrote the folder.
        task: ``hpa2021-cells`` or ``hpa2018-images``, from ``train.csv``'s columns.
    """

    input_dir: Path
    train: SplitSummary
    test: SplitSummary
    label_counts: list[int]
    truth_dir: Path | None
    synthetic: bool
    task: str = TASK_CELLS


def inspect_dataset(input_dir: str | Path, decode: int | None = DECODE_SAMPLE) -> DatasetSummary:
    """Check a dataset folder in the Kaggle layout and describe it.

    Every channel file's header is read (size, bit depth, single channel); ``decode`` images per split,
    spread over the table, are decoded completely (None: every image).

    Args:
        input_dir: folder with ``train/``, ``test/``, ``train.csv`` and ``sample_submission.csv``.
        decode: images per split to decode completely; None decodes all.

    Returns:
        The folder's summary.

    Raises:
        InputDataError: naming the first missing, unreadable or inconsistent file.
    """
    input_dir = Path(input_dir).resolve()
    if not input_dir.is_dir():
        raise InputDataError(
            f"--input-dir {input_dir} is not a folder (expected the Kaggle layout: train/, test/, "
            "train.csv, sample_submission.csv)"
        )
    for name in ("train", "test"):
        if not (input_dir / name).is_dir():
            raise InputDataError(f"missing image folder {input_dir / name} (the Kaggle layout has train/ and test/)")
    for name in ("train.csv", "sample_submission.csv"):
        if not (input_dir / name).is_file():
            raise InputDataError(
                f"missing table {input_dir / name} (the Kaggle layout has train.csv and sample_submission.csv)"
            )
    task = detect_task(input_dir / "train.csv")
    train_table = read_label_table(input_dir / "train.csv", "train", task)
    test_table = read_label_table(input_dir / "sample_submission.csv", "test", task)
    if train_table.empty:
        raise InputDataError(f"{input_dir / 'train.csv'} lists no images")
    if test_table.empty:
        raise InputDataError(f"{input_dir / 'sample_submission.csv'} lists no images")
    both = sorted(set(train_table["ID"]) & set(test_table["ID"]))
    if both:
        raise InputDataError(f"{input_dir / 'sample_submission.csv'}: ID(s) also in train.csv: {', '.join(both[:5])}")
    label_counts = [0] * len(class_names(task))
    for labels in train_table["labels"]:
        for label in labels:
            label_counts[label] += 1
    truth = input_dir / "truth"
    return DatasetSummary(
        input_dir=input_dir,
        train=_inspect_split(input_dir / "train", "train", train_table["ID"].tolist(), decode),
        test=_inspect_split(input_dir / "test", "test", test_table["ID"].tolist(), decode),
        label_counts=label_counts,
        truth_dir=truth if (truth / TRUTH_FILES[task]).is_file() else None,
        synthetic=is_synthetic(input_dir),
        task=task,
    )


def detect_task(train_table: Path) -> str:
    """The task a ``train.csv`` is for, from its header: ``ID,Label`` (2021) or ``Id,Target`` (2018).

    Raises:
        InputDataError: naming the file when its header is neither.
    """
    with open(train_table, newline="", encoding="utf-8") as handle:
        header = [column.strip() for column in next(csv.reader(handle), [])]
    for task, columns in TASK_COLUMNS.items():
        if set(columns) <= set(header):
            return task
    expected = " or ".join(f"{','.join(columns)} (task {task})" for task, columns in TASK_COLUMNS.items())
    raise InputDataError(f"{train_table} row 1: columns {','.join(header) or '(none)'}; expected {expected}")


def _inspect_split(folder: Path, name: str, ids: list[str], decode: int | None) -> SplitSummary:
    summary = SplitSummary(name, ids)
    files: dict[tuple[str, str], Path] = {}
    for path in folder.iterdir():
        stem, suffix = path.stem, path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES or "_" not in stem:
            continue
        image_id, channel = stem.rsplit("_", 1)
        if channel in CHANNELS:
            files.setdefault((image_id, channel), path)
    table_ids = set(ids)
    summary.unlisted = sorted({image_id for image_id, _ in files} - table_ids)
    table = folder.parent / ("train.csv" if name == "train" else "sample_submission.csv")
    missing = [
        f"{image_id}_{channel}.png" for image_id in ids for channel in CHANNELS if (image_id, channel) not in files
    ]
    if missing:
        shown = ", ".join(str(folder / item) for item in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputDataError(f"{table} lists images whose files are missing: {shown}{more}")
    to_decode = set(_spread(ids, decode))
    for image_id in ids:
        paths = [files[(image_id, channel)] for channel in CHANNELS]
        shapes = []
        for path in paths:
            height, width, bits = _header(path)
            shapes.append((height, width))
            summary.bit_depths[bits] += 1
        if len(set(shapes)) > 1:
            detail = ", ".join(f"{path.name} {w}x{h}" for path, (h, w) in zip(paths, shapes, strict=True))
            raise InputDataError(f"channels of image {image_id!r} differ in size: {detail}")
        summary.sizes[shapes[0]] += 1
        if image_id in to_decode:
            for path, shape in zip(paths, shapes, strict=True):
                decoded = read_channel_raw(path)  # raises naming the file when it cannot be decoded
                if decoded.shape != shape:
                    raise InputDataError(
                        f"cannot decode image file {path}: its header says {shape[1]}x{shape[0]}, "
                        f"its pixels are {decoded.shape[1]}x{decoded.shape[0]}"
                    )
            summary.decoded += 1
    return summary


def _spread(ids: list[str], count: int | None) -> list[str]:
    """``count`` IDs spread evenly over the list (first and last included); all for None."""
    if count is None or count >= len(ids):
        return list(ids)
    if count <= 0:
        return []
    if count == 1:
        return [ids[0]]
    return [ids[round(k * (len(ids) - 1) / (count - 1))] for k in range(count)]


def _header(path: Path) -> tuple[int, int, int]:
    """(height, width, bits per sample) of a channel file from its header, without decoding the pixels."""
    if path.suffix.lower() == ".png":
        with open(path, "rb") as handle:
            header = handle.read(26)
        if len(header) < 26 or header[:8] != _PNG_SIGNATURE or header[12:16] != b"IHDR":
            raise InputDataError(f"cannot decode image file {path} (corrupt or not a PNG)")
        width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
        bits, colour = header[24], header[25]
        if colour != _PNG_GREY:
            # RGB exports of a grey channel are accepted by the reader when their planes are equal
            if colour in (2, 6) and bits in (8, 16):
                return height, width, bits
            raise InputDataError(f"{path}: expected a single-channel (grey) PNG, found PNG colour type {colour}")
    else:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages[0]
                height, width = page.shape[:2]
                bits = page.dtype.itemsize * 8
        except Exception as exc:  # tifffile raises many types for broken files
            raise InputDataError(f"cannot decode image file {path}: {exc}") from exc
    if bits not in (8, 16):
        raise InputDataError(f"{path}: {bits}-bit pixels; the workflow reads 8- or 16-bit channel images")
    if width == 0 or height == 0:
        raise InputDataError(f"{path}: empty image ({width}x{height})")
    return height, width, bits


# ----------------------------------------------------------------------------------------------- the config


def find_workflow(start: str | Path | None = None) -> Path:
    """The workflow folder (it holds the Snakefile, the presets and the schema).

    Args:
        start: a folder to try first (default: the current folder); then the checkout this package is in.

    Raises:
        ConfigError: no workflow folder was found.
    """
    candidates = [Path(start) if start else Path.cwd(), Path(__file__).resolve().parents[2]]
    for candidate in candidates:
        if (candidate / "Snakefile").is_file() and (candidate / "schemas" / "config.schema.yaml").is_file():
            return candidate.resolve()
    raise ConfigError(
        f"cannot find the workflow (Snakefile, schemas/) in {candidates[0]}: run init-config in the "
        "hpa-pipeline checkout or pass --workflow-dir"
    )


def preset_blocks(text: str) -> dict[str, str]:
    """Split a config file into its top-level keys, each with the comment lines right above it.

    Returns:
        key -> its text (comments, key line and indented lines), in file order.
    """
    blocks: dict[str, list[str]] = {}
    pending: list[str] = []
    current: str | None = None
    for line in text.splitlines():
        match = _TOP_LEVEL_KEY.match(line)
        if match:
            current = match.group(1)
            blocks[current] = [*pending, line]
            pending = []
        elif line[:1] in (" ", "\t") and current is not None:
            blocks[current].append(line)
        elif line.startswith("#"):
            current = None
            pending.append(line)
        elif not line.strip():
            pending = []
            if current is not None:
                blocks[current].append(line)
    return {key: "\n".join(lines).rstrip() + "\n" for key, lines in blocks.items()}


def shard_counts(summary: DatasetSummary) -> dict[str, int]:
    """Shards per split: about ``IMAGES_PER_SHARD`` images each, at least one."""
    per_shard = IMAGES_PER_SHARD[summary.task]
    return {
        name: max(1, round(len(split.ids) / per_shard[name]))
        for name, split in (("train", summary.train), ("test", summary.test))
    }


def typical_side(split: SplitSummary) -> int:
    """The median long side of a split's images (px)."""
    sides = sorted(side for (height, width), count in split.sizes.items() for side in [max(height, width)] * count)
    return sides[len(sides) // 2]


def area_thresholds(summary: DatasetSummary) -> dict[str, int]:
    """The submission's area thresholds for the test images' size: the original's, scaled by area."""
    scale = (typical_side(summary.test) / 2048) ** 2
    return {key: max(1, round(value * scale)) for key, value in AREA_THRESHOLDS_2048.items()}


def build_config(summary: DatasetSummary, preset: str, workflow_dir: str | Path) -> str:
    """The commented config text for a checked dataset.

    Args:
        summary: from :func:`inspect_dataset` (its task picks the presets).
        preset: ``"demo"`` (tiny models, a CPU) or ``"full"`` (the 7th-place configuration, or in the 2018
            task bestfitting's recipe).
        workflow_dir: the workflow folder (its presets are copied).

    Returns:
        YAML text; every top-level key has a comment above it.
    """
    presets = PRESETS[summary.task]
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r} (presets: {', '.join(presets)})")
    source = Path(workflow_dir) / presets[preset]
    blocks = preset_blocks(source.read_text(encoding="utf-8"))
    preset_config = yaml.safe_load(source.read_text(encoding="utf-8"))
    from hpa_pipeline import __version__

    shards = shard_counts(summary)
    per_shard = IMAGES_PER_SHARD[summary.task]
    members = ", ".join(preset_config["submission"]["members"])
    image_task = summary.task == TASK_IMAGES
    parts = [
        f"# hpa-pipeline configuration for {summary.input_dir}\n"
        f"# Written by `hpa-pipeline init-config` (hpa-pipeline {__version__}) from preset {preset!r}\n"
        f"# ({presets[preset]}): its models and settings, with the keys that depend on the data set for this\n"
        f"# folder. Run: snakemake submission --configfile <this file>\n",
    ]
    if image_task:
        columns = ",".join(TASK_COLUMNS[summary.task])
        parts.append(
            f"# The task, from train.csv's columns ({columns}): Kaggle's HPA Image Classification (2018), 28\n"
            "# classes per image, image macro F1, submission Id,Predicted; no segmentation, masks or crops.\n"
            f"task: {summary.task}\n"
        )
    parts.append(
        "# Dataset folder in the Kaggle layout (train/, test/, train.csv, sample_submission.csv), checked by\n"
        f"# init-config: {len(summary.train.ids)} train and {len(summary.test.ids)} test images.\n"
        f"input_dir: {_quote(summary.input_dir)}\n"
    )
    if summary.truth_dir is not None:
        truth = "The test images' labels" if image_task else "Per-cell truth"
        files = "test.csv, Id,Target" if image_task else "cells.csv, {split}/{ID}_cellmask.png"
        parts.append(
            f"# {truth} found next to the images ({files}): rule evaluate scores\n"
            "# every model, ensemble and the submission against it.\n"
            f"truth_dir: {_quote(summary.truth_dir)}\n"
        )
    parts.append(
        "# One preprocessing job per shard and dataset: about "
        f"{per_shard['train']} train and {per_shard['test']} test images per\n"
        "# shard (the full configuration's shards on Kaggle's images), at least one.\n"
        f"shards:\n  train: {shards['train']}\n  test: {shards['test']}\n"
    )
    parts.append(_extra_sets_block_2018() if image_task else _extra_sets_block(summary.input_dir, preset))
    for key, text in blocks.items():
        if key not in DATA_KEYS:
            parts.append(text if text.startswith("#") else f"{KEY_COMMENTS.get(key, f'# {key}')}\n{text}")
    if image_task:
        parts.append(
            "# The submission: equal-weight average over members and folds of the test images' probabilities;\n"
            "# its labels are those at the per-class thresholds (see thresholds).\n"
            f"submission:\n  members: [{members}]\n"
        )
        return "\n".join(parts)
    thresholds = area_thresholds(summary)
    side = typical_side(summary.test)
    parts.append(
        "# The submission: equal-weight average over members and folds of the test predictions; every score of\n"
        "# a cell is scaled by min(1, area / threshold), area in pixels at the original test resolution, with\n"
        "# the edge threshold for cells touching the border and the centre threshold for the others. The\n"
        f"# original's {AREA_THRESHOLDS_2048['edge_area_threshold']} / {AREA_THRESHOLDS_2048['center_area_threshold']}"
        f" px on 2048 px fields, scaled to these {side} px test images.\n"
        f"submission:\n  members: [{members}]\n"
        f"  edge_area_threshold: {thresholds['edge_area_threshold']}\n"
        f"  center_area_threshold: {thresholds['center_area_threshold']}\n"
    )
    return "\n".join(parts)


def _extra_sets_block_2018() -> str:
    """No extra set in the 2018 task's config: the HPA v18 external images are the user's choice."""
    return (
        "# Further labelled datasets trained on with the train set: none here (every 2018 solution also trained\n"
        "# on the HPA v18 external images).\n"
        "extra_train_sets: {}\n"
    )


def _extra_sets_block(input_dir: Path, preset: str) -> str:
    """The full preset's public HPA set when the folder holds its list, else how to add it (commented)."""
    table = input_dir / PUBLIC_TABLE
    lines = [
        f"  pubhpa:\n    images: {_quote(input_dir / 'pubhpa')}\n    shards: 120\n",
        f"    download:\n      tsv: {_quote(table)}\n      base_url: https://images.proteinatlas.org\n",
    ]
    head = (
        "# Further labelled datasets trained on with the train set. The original trains every model on the\n"
        f"# public HPA images of {PUBLIC_TABLE} (Kaggle dataset lnhtrang/publichpa-withcellline), downloaded\n"
        "# by rule download_extra_set into `images` (about 80,000 images, ~1 TB; see README.md).\n"
    )
    if preset == "full" and table.is_file():
        return head + "extra_train_sets:\n" + "".join(lines)
    hint = f"# To add them, put {PUBLIC_TABLE} into {input_dir} and rerun init-config, or uncomment:\n"
    commented = "".join(f"# {line}\n" for text in ["extra_train_sets:", *lines] for line in text.rstrip().split("\n"))
    return head + hint + commented + "extra_train_sets: {}\n"


def _quote(path: Path) -> str:
    return yaml.safe_dump(str(path), default_style=None).splitlines()[0]


def validate_config(config: dict[str, Any], workflow_dir: str | Path) -> None:
    """Check a config as the workflow does at start-up: the schema, then the cross-checks.

    Raises:
        ConfigError: naming the key.
    """
    import jsonschema

    from hpa_pipeline.config import check_config, check_input_paths

    schema = yaml.safe_load((Path(workflow_dir) / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda error: list(error.path))
    if errors:
        where = ".".join(str(part) for part in errors[0].path) or "(top level)"
        raise ConfigError(f"the written config would be invalid at {where}: {errors[0].message}")
    check_config(config)
    check_input_paths(config)


# ------------------------------------------------------------------------------------------------ summary


def estimate_disk_bytes(summary: DatasetSummary, config: dict[str, Any]) -> int:
    """An upper bound of the bytes of the stores under results/ (uncompressed; Zarr compresses them).

    Raises:
        ConfigError: a model's backbone is not a timm model (naming the key), so its checkpoints cannot be
            sized.
    """
    n_images = len(summary.train.ids) + len(summary.test.ids)
    n_classes = len(class_names(summary.task))
    preprocess = config["preprocess"]
    if summary.task == TASK_IMAGES:  # images only: no masks, segmentation, cells or crops
        total = sum(n_images * size * size * 4 for size in preprocess["image_sizes"])  # RGBY uint8
        predictions = n_images * n_classes * 4 * 8  # float32 image probabilities of up to 8 TTA views
        return total + predictions * len(config["models"]) * 2 + _checkpoint_bytes(config, n_classes)
    total = 0
    for size in preprocess["image_sizes"]:
        total += n_images * size * size * (4 + 2)  # RGBY uint8 images and uint16 masks
    for split, name in ((summary.train, "train"), (summary.test, "test")):
        source = config["segment"]["inputs"][name]["source"]
        for (height, width), count in split.sizes.items():
            pixels = height * width if source == "original" else source * source
            total += count * pixels * 2  # uint16 segmentation at its source resolution
    crop = preprocess["crop_size"]
    total += n_images * CELLS_PER_IMAGE * 8 * crop * crop * len(preprocess["crop_image_sizes"])
    predictions = n_images * CELLS_PER_IMAGE * n_classes * 4 * 8  # float32 scores of 8 TTA views
    total += predictions * len(config["models"]) * 2
    return total + _checkpoint_bytes(config, n_classes)


def _checkpoint_bytes(config: dict[str, Any], n_classes: int) -> int:
    """Bytes of every model's final.pt and epoch checkpoint (weights plus Adam's two moments)."""
    import torch

    from hpa_pipeline.config import resolve_model
    from hpa_pipeline.nets.models import create_model

    total = 0
    for name in config["models"]:
        settings = resolve_model(config, name)
        try:
            with torch.device("meta"):  # shapes only: no memory, no weights
                model = create_model(
                    settings["kind"],
                    settings["backbone"],
                    cosine_head=bool(settings.get("cosine_head", False)),
                    num_classes=n_classes,
                    head=settings.get("head") or "cam",
                )
        except ConfigError as error:
            raise ConfigError(f"models.{name}.backbone: {error}") from error
        parameters = sum(parameter.numel() for parameter in model.parameters())
        total += parameters * CHECKPOINT_BYTES_PER_PARAMETER * config["folds"]["n_folds"]
    return total


def estimate_seconds(summary: DatasetSummary, preset: str) -> float | None:
    """A rough wall time of the demo preset on a 2-core CPU; None for the full preset (GPU-bound)."""
    if preset != "demo":
        return None
    megapixels = sum(
        count * height * width / 1e6
        for split in (summary.train, summary.test)
        for (height, width), count in split.sizes.items()
    )
    seconds = DEMO_SECONDS[summary.task]
    return (
        megapixels * seconds["per_megapixel"] + len(summary.train.ids) * seconds["per_train_image"] + seconds["fixed"]
    )


def format_summary(summary: DatasetSummary, config: dict[str, Any], preset: str, out: Path) -> str:
    """The summary init-config prints: images, sizes, bit depths, label counts, shards, disk and time."""
    synthetic = " (synthetic, from the demo generator)" if summary.synthetic else ""
    lines = [f"dataset {summary.input_dir}{synthetic}: task {summary.task} ({','.join(TASK_COLUMNS[summary.task])})"]
    for split in (summary.train, summary.test):
        sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sorted(split.sizes.items(), key=lambda item: -item[1]))
        depths = ", ".join(f"{bits}-bit" for bits in sorted(split.bit_depths))
        lines.append(
            f"  {split.name}: {len(split.ids)} images, {sizes}; {depths}; "
            f"{split.decoded} decoded completely, every header read"
        )
        if split.unlisted:
            lines.append(
                f"    {len(split.unlisted)} image(s) in {split.name}/ not in its table, ignored: "
                f"{', '.join(split.unlisted[:3])}{' ...' if len(split.unlisted) > 3 else ''}"
            )
    lines.append("  labels (train images per class):")
    names = class_names(summary.task)
    for index, count in enumerate(summary.label_counts):
        lines.append(f"    {index:>2} {names[index]:<42} {count}")
    missing = [str(index) for index, count in enumerate(summary.label_counts) if count == 0]
    if missing:
        lines.append(f"    no training image carries class(es) {', '.join(missing)}: their scores will stay near 0")
    no_truth = f"none (no truth/{TRUTH_FILES[summary.task]}): no metrics"
    lines.append(f"  truth_dir: {summary.truth_dir if summary.truth_dir else no_truth}")
    lines.append(
        f"config {out} (preset {preset}): {config['shards']['train']} train and {config['shards']['test']} "
        f"test shards, {len(config['models'])} models x {config['folds']['n_folds']} folds"
    )
    lines.append(
        f"  expected disk use under results/: at most {_human_bytes(estimate_disk_bytes(summary, config))} "
        "(an upper bound: stores before compression, and checkpoints)"
    )
    seconds = estimate_seconds(summary, preset)
    if seconds is None:
        lines.append(
            f"  rough time: {len(config['models'])} models x {config['folds']['n_folds']} folds of "
            f"{config['model_defaults']['image']['epochs']} epochs at 768-1536 px: days of GPU time "
            "(use --preset demo for a check on a CPU in minutes)"
        )
    else:
        lines.append(f"  rough time: {_human_seconds(seconds)} on 2 CPU cores (less with more cores or a GPU)")
    lines.append(f"next: snakemake submission --configfile {out}")
    return "\n".join(lines)


def _human_bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _human_seconds(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    if minutes >= 120:
        return f"about {minutes / 60:.0f} hours"
    return f"about {minutes} minute{'s' if minutes != 1 else ''}"


def init_config(
    input_dir: str | Path,
    out: str | Path,
    preset: str = "full",
    force: bool = False,
    workflow_dir: str | Path | None = None,
    decode: int | None = DECODE_SAMPLE,
) -> str:
    """Check a dataset folder, write a config for it atomically and return the summary to print.

    Args:
        input_dir: the dataset folder (Kaggle layout).
        out: the config file to write.
        preset: ``"demo"`` or ``"full"``.
        force: replace an existing ``out``.
        workflow_dir: the workflow folder; found by :func:`find_workflow` when None.
        decode: images per split decoded completely; None decodes all.

    Raises:
        ConfigError: ``out`` exists without ``force``, unknown preset, or no workflow found.
        InputDataError: the folder is not a usable dataset (naming the file).
    """
    out = Path(out)
    if preset not in PRESETS[TASK_CELLS]:
        raise ConfigError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS[TASK_CELLS])})")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists already; pass --force to replace it")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; --out names the config file to write")
    workflow = find_workflow(workflow_dir)
    summary = inspect_dataset(input_dir, decode)
    text = build_config(summary, preset, workflow)
    config = yaml.safe_load(text)
    validate_config(config, workflow)
    n_folds = config["folds"]["n_folds"]
    if len(summary.train.ids) < n_folds:
        raise InputDataError(
            f"{summary.input_dir / 'train.csv'} lists {len(summary.train.ids)} image(s), fewer than "
            f"the {n_folds} folds of preset {preset!r}; every fold needs training images"
        )
    write_text_atomic(out, text)
    return format_summary(summary, config, preset, out)
