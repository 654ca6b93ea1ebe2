"""The annotation outputs people open: cell and image tables, AnnData, OME-Zarr images, overview PNGs.

An :class:`AnnotationWriter` receives one :class:`ImageAnnotation` per image. ``add`` writes that
image's OME-Zarr, overview PNG and table parts at once; ``close`` joins the parts into the tables and
the gallery. In the workflow mode each shard's job adds its images to a writer of its own folder, and
the merge job's writer ``adopt``s them all before it closes. docs/annotations.md lists every file and
column.

Layout of ``OUT/``::

    cells.parquet, cells.csv, cells.h5ad   one row per cell (task hpa2021-cells only)
    images.csv                             one row per image
    annotation.json                        task, classes, thresholds, run key, provenance
    images/{ID}.ome.zarr                   OME-NGFF 0.4 image (Zarr v2) with a labels/cells layer
    overview/{ID}.png, overview/index.html a composite with cell outlines by top class; the gallery
    .parts/                                per-image table parts and the run key (resume)
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, PngImagePlugin
from scipy import ndimage

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.files import atomic_file, write_text_atomic
from hpa_pipeline.labels import TASK_CELLS, TASK_IMAGES, TASKS

log = logging.getLogger(__name__)

#: The four channels in file order, their stain and display colour (bioimaging_formats.md).
CHANNELS: tuple[tuple[str, str, str], ...] = (
    ("red", "microtubules", "FF0000"),
    ("green", "protein of interest", "00FF00"),
    ("blue", "nucleus", "0000FF"),
    ("yellow", "endoplasmic reticulum", "FFFF00"),
)
#: One fixed colour per class index (outlines, legend, label colours); bright ones first so the 19
#: classes of hpa2021-cells stand out on a dark composite.
_CLASS_COLOURS = (
    "F3C300", "F38400", "A1CAF1", "BE0032", "C2B280", "008856", "E68FAC", "0067A5", "F99379", "875692",
    "F6A600", "B3446C", "DCD300", "8DB600", "E25822", "00CED1", "FF00FF", "7FFFD4", "FFFFFF", "1E90FF",
    "9400D3", "00FF7F", "FF1493", "848482", "882D17", "604E97", "654522", "2B3D26",
)  # fmt: skip
#: Label values that are no listed cell (none when the engine's table and mask agree) are outlined grey.
_UNLISTED_COLOUR = (128, 128, 128)
#: The pyramid halves the image until its longest side is at most this many pixels.
_PYRAMID_SMALLEST = 64
#: Chunk side of the OME-Zarr arrays: a viewer fetches a tile of this size, never a whole 2048² plane.
_CHUNK = 512
#: The overview's longest side; larger images are shrunk to it.
_OVERVIEW_LONGEST = 1024
#: Columns of the cell tables before the per-class columns.
_CELL_COLUMNS = (
    "image_id", "cell", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area",
    "touches_edge",
)  # fmt: skip
_CELL_TAIL = ("area_factor", "top_class", "top_probability", "labels")
_IMAGE_COLUMNS = ("image_id", "n_cells", "height", "width")
_RUN_KEY_FILE = "run_key"


@dataclass
class ImageAnnotation:
    """One image's annotations as the engine hands them over, everything at the original resolution.

    Attributes:
        image_id: the image's ID (a file name: no path separator, no leading dot).
        channels: (4, H, W) uint8 or uint16, channels red, green, blue, yellow.
        labels: (H, W) integer cell mask, 0 = background; None for task hpa2018-images.
        instance: (n,) int32 mask values of the cells, ascending (n may be 0).
        bbox: (n, 4) int32 y0, x0, y1, x1, end exclusive.
        area: (n,) int64 pixel counts.
        touches_edge: (n,) bool.
        probabilities: (n, C) float32 averaged per-cell class probabilities.
        area_factor: (n,) float64 ``min(1, area / threshold)``, what the submission multiplies by.
        image_probabilities: (C,) float32 image-level class probabilities.
    """

    image_id: str
    channels: np.ndarray
    labels: np.ndarray | None
    instance: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    touches_edge: np.ndarray
    probabilities: np.ndarray
    area_factor: np.ndarray
    image_probabilities: np.ndarray


class AnnotationWriter:
    """Writes the annotation outputs of one run into ``out_dir`` (layout: see the module docstring).

    Args:
        out_dir: the output folder; files of its own layout only are ever replaced or removed there.
        task: ``hpa2021-cells`` (cell and image outputs) or ``hpa2018-images`` (images only).
        class_names: the class names, one column each, in the model's class order.
        class_thresholds: per class, the probability from which a cell or image gets that label.
        run_key: digest of the bundle and settings. Per-image outputs of the same key already in
            ``out_dir`` are kept (a killed run resumes); those of another key are removed first.
        provenance: plain values (bundle, versions, input folder) saved in ``cells.h5ad`` and
            ``annotation.json``.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        task: str,
        class_names: Sequence[str],
        class_thresholds: Sequence[float],
        run_key: str,
        provenance: Mapping[str, object],
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"annotation outputs: unknown task {task!r}; known: {', '.join(TASKS)}")
        names = [str(name) for name in class_names]
        thresholds = np.asarray(class_thresholds, dtype=np.float64)
        if thresholds.shape != (len(names),) or not names:
            raise ConfigError(f"annotation outputs: {len(names)} class names but {thresholds.size} class thresholds")
        clashes = sorted(set(names) & set(_CELL_COLUMNS + _CELL_TAIL + _IMAGE_COLUMNS))
        if len(set(names)) != len(names) or clashes:
            raise ConfigError(f"annotation outputs: class names must be unique and not {clashes or 'repeated'}")
        if not run_key:
            raise ConfigError("annotation outputs: empty run_key")
        self.out_dir = Path(out_dir)
        self.task = task
        self.class_names = tuple(names)
        self.class_thresholds = thresholds
        self.run_key = str(run_key)
        self.provenance = _plain(dict(provenance))
        self._order: list[str] = []
        self._seen: set[str] = set()
        self._parts = self.out_dir / ".parts"
        self._start_run()

    def __enter__(self) -> AnnotationWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()

    def done(self, image_id: str) -> bool:
        """True when every per-image output of ``image_id`` exists (from this run key).

        A done image is remembered in its place of the input order, so ``close`` lists it although
        ``add`` is not called for it again.
        """
        finished = all(path.exists() for path in self._image_outputs(image_id))
        if finished:
            self._remember(image_id)
        return finished

    def add(self, image: ImageAnnotation) -> None:
        """Write the image's OME-Zarr, overview PNG and table parts, each renamed into place at the end.

        All of them are first written into a staging folder; the image part, renamed last, marks the
        image done. On an exception nothing of the image is left under its final names.
        """
        _check_image(image, self.task, len(self.class_names))
        image_id = image.image_id
        outputs = self._image_outputs(image_id)
        staging = self._parts / f".{image_id}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            cells = self._cell_frame(image)
            staged = [staging / path.name for path in outputs]
            _write_ome_zarr(staged[0], image, cells, self.class_names)
            legend = _legend(image, cells, self.class_names, self.class_thresholds)
            _write_overview(staged[1], image, cells, self.class_names, legend)
            _write_parquet(staged[-1], self._image_row_frame([image]))
            if self.task == TASK_CELLS:
                _write_parquet(staged[2], cells)
            outputs[-1].unlink(missing_ok=True)  # the done mark goes first and comes back last
            for source, target in zip(staged, outputs, strict=True):
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(source, target)
        except BaseException:
            for path in outputs:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._remember(image_id)

    def adopt(self, folder: Path, image_id: str) -> None:
        """Take over an image that a writer of the same run key finished in ``folder`` without closing it
        (a shard of the workflow mode): its outputs are hard-linked into place (copied where ``folder`` lies
        on another file system), the done mark last, and ``close`` lists it in the order adopted.

        Raises:
            InputDataError: ``folder`` holds another run's annotations, or not every output of the image.
        """
        folder = Path(folder)
        key_file = folder / ".parts" / _RUN_KEY_FILE
        found = key_file.read_text().strip() if key_file.is_file() else None
        if found != self.run_key:
            raise InputDataError(f"{folder} holds annotations of run key {found}, this run's is {self.run_key}")
        sources = _image_paths(folder, self.task, image_id)
        missing = [str(path) for path in sources if not path.exists()]
        if missing:
            raise InputDataError(f"{folder}: image {image_id} is not finished there (missing {missing[0]})")
        for source, target in zip(sources, self._image_outputs(image_id), strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target, copy_function=_link_or_copy)
            else:
                target.unlink(missing_ok=True)
                _link_or_copy(source, target)
        self._remember(image_id)

    def close(self) -> None:
        """Write the tables, ``annotation.json`` and ``overview/index.html`` from the parts of every
        image given (added or found done), in the order they were given."""
        missing = [image_id for image_id in self._order if not self.done(image_id)]
        if missing:
            raise InputDataError(f"annotation outputs in {self.out_dir}: images not written: {missing[:5]}")
        images = pd.concat(
            [pq.read_table(self._image_part(image_id)).to_pandas() for image_id in self._order]
            or [self._image_row_frame([])],
            ignore_index=True,
        )
        cells = None
        if self.task == TASK_CELLS:
            cells = pd.concat(
                [pq.read_table(self._cell_part(image_id)).to_pandas() for image_id in self._order]
                or [self._cell_frame(_without_cells(len(self.class_names)))],
                ignore_index=True,
            )
            with atomic_file(self.out_dir / "cells.parquet", "wb") as handle:
                pq.write_table(pa.Table.from_pandas(cells, preserve_index=False), handle)
            _write_csv(self.out_dir / "cells.csv", cells)
            self._write_h5ad(cells)
        _write_csv(self.out_dir / "images.csv", images)
        summary = {
            "task": self.task,
            "run_key": self.run_key,
            "classes": [
                {"name": name, "threshold": float(threshold)}
                for name, threshold in zip(self.class_names, self.class_thresholds, strict=True)
            ],
            "n_images": len(images),
            "n_cells": None if cells is None else len(cells),
            "provenance": self.provenance,
        }
        write_text_atomic(self.out_dir / "annotation.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(self.out_dir / "overview" / "index.html", self._gallery(images, cells))
        log.info("annotations of %d images -> %s", len(images), self.out_dir)

    def _start_run(self) -> None:
        key_file = self._parts / _RUN_KEY_FILE
        previous = key_file.read_text().strip() if key_file.exists() else None
        if previous == self.run_key:
            return
        ours = [
            self.out_dir / name
            for name in ("images", "overview", ".parts", "cells.parquet", "cells.csv", "cells.h5ad")
            + ("images.csv", "annotation.json")
        ]
        found = [path for path in ours if path.exists()]
        if found:
            log.info(
                "%s holds annotations of another run (key %s, now %s): removing %s",
                self.out_dir,
                previous,
                self.run_key,
                ", ".join(path.name for path in found),
            )
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        write_text_atomic(key_file, self.run_key + "\n")

    def _remember(self, image_id: str) -> None:
        if image_id not in self._seen:
            self._seen.add(image_id)
            self._order.append(image_id)

    def _image_part(self, image_id: str) -> Path:
        return _image_part(self.out_dir, image_id)

    def _cell_part(self, image_id: str) -> Path:
        return _cell_part(self.out_dir, image_id)

    def _image_outputs(self, image_id: str) -> list[Path]:
        return _image_paths(self.out_dir, self.task, image_id)

    def _cell_frame(self, image: ImageAnnotation) -> pd.DataFrame:
        """The cell table of one image (every column, also when it has no cell)."""
        n = len(image.instance)
        probabilities = np.asarray(image.probabilities, np.float32).reshape(n, len(self.class_names))
        area_factor = np.asarray(image.area_factor, np.float64).reshape(n)
        bbox = np.asarray(image.bbox, np.int32).reshape(n, 4)
        centroids = _centroids(image)
        columns: dict[str, Any] = {
            "image_id": pd.Series([image.image_id] * n, dtype=str),
            "cell": np.asarray(image.instance, np.int32),
            "centroid_y": centroids[:, 0],
            "centroid_x": centroids[:, 1],
        }
        for index, name in enumerate(("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")):
            columns[name] = bbox[:, index]
        columns["area"] = np.asarray(image.area, np.int64).reshape(n)
        columns["touches_edge"] = np.asarray(image.touches_edge, bool).reshape(n)
        for index, name in enumerate(self.class_names):
            columns[name] = probabilities[:, index]
        columns["area_factor"] = area_factor
        scores = probabilities.astype(np.float64) * area_factor[:, None]
        for index, name in enumerate(self.class_names):
            columns[_score_column(name)] = scores[:, index]
        top = probabilities.argmax(axis=1) if n else np.zeros(0, np.intp)
        columns["top_class"] = pd.Series([self.class_names[index] for index in top], dtype=str)
        columns["top_probability"] = probabilities[np.arange(n), top]
        columns["labels"] = pd.Series(
            [_joined_labels(row, self.class_names, self.class_thresholds) for row in probabilities], dtype=str
        )
        return pd.DataFrame(columns)

    def _image_row_frame(self, images: list[ImageAnnotation]) -> pd.DataFrame:
        probabilities = np.asarray(
            [np.asarray(image.image_probabilities, np.float32) for image in images], np.float32
        ).reshape(len(images), len(self.class_names))
        columns: dict[str, Any] = {
            "image_id": pd.Series([image.image_id for image in images], dtype=str),
            "n_cells": np.asarray([len(image.instance) for image in images], np.int64),
            "height": np.asarray([image.channels.shape[1] for image in images], np.int64),
            "width": np.asarray([image.channels.shape[2] for image in images], np.int64),
        }
        for index, name in enumerate(self.class_names):
            columns[name] = probabilities[:, index]
        columns["labels"] = pd.Series(
            [_joined_labels(row, self.class_names, self.class_thresholds) for row in probabilities], dtype=str
        )
        return pd.DataFrame(columns)

    def _write_h5ad(self, cells: pd.DataFrame) -> None:
        import anndata

        meta = [*_CELL_COLUMNS, *_CELL_TAIL]
        names = [f"{image_id}_{cell}" for image_id, cell in zip(cells["image_id"], cells["cell"], strict=True)]
        target = self.out_dir / "cells.h5ad"
        partial = target.with_name(f".{target.name}.partial")
        # anndata 0.12 cannot write pandas 3's str dtype: the frames are built with object strings, and the
        # write (which turns string columns into categoricals) runs under the same option.
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*future.infer_string.*")
                with pd.option_context("future.infer_string", False):
                    obs = pd.DataFrame(
                        {
                            column: (
                                cells[column].to_numpy(object)
                                if pd.api.types.is_string_dtype(cells[column])
                                else cells[column]
                            )
                            for column in meta
                        }
                    )
                    obs.index = pd.Index(names, dtype=object)
                    var = pd.DataFrame(
                        {"threshold": self.class_thresholds}, index=pd.Index(list(self.class_names), dtype=object)
                    )
                    adata = anndata.AnnData(
                        X=cells[list(self.class_names)].to_numpy(np.float32),
                        obs=obs,
                        var=var,
                        layers={
                            "area_scaled": cells[[_score_column(name) for name in self.class_names]].to_numpy(
                                np.float64
                            )
                        },
                        obsm={"spatial": cells[["centroid_x", "centroid_y"]].to_numpy(np.float64)},
                        uns={"task": self.task, "run_key": self.run_key, "provenance": self.provenance},
                    )
                    adata.write_h5ad(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def _gallery(self, images: pd.DataFrame, cells: pd.DataFrame | None) -> str:
        """overview/index.html: one figure per image, linking its overview PNG."""
        top = {}
        if cells is not None:
            counts = cells.groupby(["image_id", "top_class"], sort=False).size()
            for (image_id, name), count in counts.items():
                top.setdefault(image_id, []).append((count, name))
        figures = []
        for row in images.itertuples(index=False):
            image_id = str(row.image_id)
            if cells is None:
                summary = str(row.labels) or "no class above its threshold"
            else:
                ranked = sorted(top.get(image_id, []), key=lambda item: -item[0])
                summary = ", ".join(f"{name} ({count})" for count, name in ranked) or "no cells"
            link = quote(f"{image_id}.png")
            cell_text = "" if cells is None else f" · {row.n_cells} cells"
            figures.append(
                f'<figure><a href="{link}"><img src="{link}" alt="{html.escape(image_id)}" loading="lazy"></a>'
                f"<figcaption><b>{html.escape(image_id)}</b>{cell_text}<br>{html.escape(summary)}</figcaption></figure>"
            )
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Annotations</title><style>'
            "body{font-family:sans-serif;background:#111;color:#eee}"
            "figure{display:inline-block;width:320px;margin:8px;vertical-align:top}"
            "img{max-width:100%}a{color:#9cf}</style></head><body>\n"
            f"<h1>Annotations: {len(images)} images ({html.escape(self.task)})</h1>\n"
            + "\n".join(figures)
            + "\n</body></html>\n"
        )


def _image_part(out_dir: Path, image_id: str) -> Path:
    return out_dir / ".parts" / f"{image_id}.image.parquet"


def _cell_part(out_dir: Path, image_id: str) -> Path:
    return out_dir / ".parts" / f"{image_id}.cells.parquet"


def _image_paths(out_dir: Path, task: str, image_id: str) -> list[Path]:
    """An image's outputs under ``out_dir`` in the order ``add`` renames them; the image part, its done
    mark, last."""
    zarr_path = out_dir / "images" / f"{image_id}.ome.zarr"
    png = out_dir / "overview" / f"{image_id}.png"
    cells = [_cell_part(out_dir, image_id)] if task == TASK_CELLS else []
    return [zarr_path, png, *cells, _image_part(out_dir, image_id)]


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link of ``source`` at ``target``; a copy where the two lie on different file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _score_column(class_name: str) -> str:
    return f"score: {class_name}"


def _joined_labels(probabilities: np.ndarray, names: Sequence[str], thresholds: np.ndarray) -> str:
    return "|".join(name for name, keep in zip(names, probabilities >= thresholds, strict=True) if keep)


def _plain(value: object) -> Any:
    """Provenance as plain JSON-like values (h5ad's uns and JSON hold nothing else)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return "" if value is None else str(value)


def _check_image(image: ImageAnnotation, task: str, n_classes: int) -> None:
    """One InputDataError naming the image for an annotation that breaks the contract."""
    image_id = image.image_id
    if not isinstance(image_id, str) or not image_id or image_id.startswith(".") or "/" in image_id or "\\" in image_id:
        raise InputDataError(f"annotation outputs: image ID {image_id!r} is no file name")
    where = f"annotation outputs, image {image_id}"
    channels = image.channels
    if channels.ndim != 3 or channels.shape[0] != 4 or channels.dtype not in (np.uint8, np.uint16):
        raise InputDataError(
            f"{where}: channels must be (4, H, W) uint8 or uint16, got {channels.shape} {channels.dtype}"
        )
    n = len(image.instance)
    if task == TASK_IMAGES:
        if image.labels is not None or n:
            raise InputDataError(f"{where}: task {TASK_IMAGES} has no cells, got a mask or {n} cells")
    elif image.labels is None or image.labels.shape != channels.shape[1:] or image.labels.dtype.kind not in "iu":
        got = None if image.labels is None else f"{image.labels.shape} {image.labels.dtype}"
        raise InputDataError(f"{where}: labels must be an integer mask of {channels.shape[1:]}, got {got}")
    expected = {
        "bbox": (n, 4),
        "area": (n,),
        "touches_edge": (n,),
        "probabilities": (n, n_classes),
        "area_factor": (n,),
        "image_probabilities": (n_classes,),
    }
    for name, shape in expected.items():
        if np.shape(getattr(image, name)) != shape:
            raise InputDataError(f"{where}: {name} has shape {np.shape(getattr(image, name))}, expected {shape}")
    if n and np.any(np.diff(image.instance) <= 0):
        raise InputDataError(f"{where}: instance values must be ascending and distinct")


def _centroids(image: ImageAnnotation) -> np.ndarray:
    """(n, 2) mean pixel row and column of every cell in the mask at the original resolution."""
    if not len(image.instance):
        return np.zeros((0, 2))
    with np.errstate(invalid="ignore"):  # a cell absent from the mask gives NaN, reported below
        centres = np.asarray(
            ndimage.center_of_mass(np.ones(image.labels.shape, np.uint8), image.labels, image.instance), np.float64
        ).reshape(-1, 2)
    absent = np.isnan(centres[:, 0])
    if absent.any():
        raise InputDataError(
            f"annotation outputs, image {image.image_id}: "
            f"cells {image.instance[absent][:5].tolist()} are not in its mask"
        )
    return centres


def _without_cells(n_classes: int) -> ImageAnnotation:
    """An annotation of no cell: the schema of an empty cell table."""
    return ImageAnnotation(
        image_id="",
        channels=np.zeros((4, 0, 0), np.uint8),
        labels=np.zeros((0, 0), np.int32),
        instance=np.zeros(0, np.int32),
        bbox=np.zeros((0, 4), np.int32),
        area=np.zeros(0, np.int64),
        touches_edge=np.zeros(0, bool),
        probabilities=np.zeros((0, n_classes), np.float32),
        area_factor=np.zeros(0),
        image_probabilities=np.zeros(n_classes, np.float32),
    )


def _pyramid(channels: np.ndarray, labels: np.ndarray | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Image and label levels, each half the previous (floor) until the longest side is at most
    ``_PYRAMID_SMALLEST``: the image by area averaging, the labels by picking one pixel of each 2×2
    block (nearest: never a new label value)."""
    images, masks = [channels], [] if labels is None else [labels]
    while max(images[-1].shape[1:]) > _PYRAMID_SMALLEST and min(images[-1].shape[1:]) >= 2:
        height, width = (side // 2 for side in images[-1].shape[1:])
        images.append(
            np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_AREA) for plane in images[-1]])
        )
        if labels is not None:
            masks.append(np.ascontiguousarray(masks[-1][1::2, 1::2][:height, :width]))
    return images, masks


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[index : index + 2], 16) for index in (0, 2, 4))


def _class_colour(index: int) -> tuple[int, int, int]:
    return _rgb(_CLASS_COLOURS[index % len(_CLASS_COLOURS)])


def _write_ome_zarr(path: Path, image: ImageAnnotation, cells: pd.DataFrame, class_names: Sequence[str]) -> None:
    """OME-NGFF 0.4 (Zarr v2) image with ``omero`` channels and, for cells, a ``labels/cells`` layer."""
    import zarr
    from numcodecs import Blosc
    from ome_zarr.format import FormatV04

    with warnings.catch_warnings():  # ome-zarr 0.18 builds a deprecated Scaler as a default argument
        warnings.filterwarnings("ignore", message=".*deprecated class Scaler.*", category=DeprecationWarning)
        from ome_zarr.writer import write_multiscale, write_multiscale_labels

    channels = image.channels
    dtype_max = int(np.iinfo(channels.dtype).max)
    omero = {
        "name": image.image_id,
        "version": "0.4",
        "rdefs": {"model": "color", "defaultZ": 0, "defaultT": 0},
        "channels": [
            {
                "label": name,
                "description": stain,
                "color": colour,
                "active": True,
                "coefficient": 1,
                "family": "linear",
                "inverted": False,
                "window": {
                    "min": 0,
                    "max": dtype_max,
                    "start": int(plane.min()),
                    "end": max(int(plane.max()), int(plane.min()) + 1),
                },
            }
            for (name, stain, colour), plane in zip(CHANNELS, channels, strict=True)
        ],
    }
    images, masks = _pyramid(channels, image.labels)
    compressor = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    group = zarr.open_group(path, mode="w", zarr_format=2)
    write_multiscale(
        images,
        group,
        fmt=FormatV04(),
        axes="cyx",
        name=image.image_id,
        storage_options={"chunks": (1, _CHUNK, _CHUNK), "compressor": compressor},
        metadata={"omero": omero},
    )
    if image.labels is None:
        return
    class_index = {name: index for index, name in enumerate(class_names)}
    probabilities = cells[list(class_names)].to_numpy(np.float32)
    colours, properties = [], []
    for value, top_class, top_probability, row in zip(
        cells["cell"], cells["top_class"], cells["top_probability"], probabilities, strict=True
    ):
        colours.append({"label-value": int(value), "rgba": [*_class_colour(class_index[top_class]), 255]})
        properties.append(
            {
                "label-value": int(value),
                "top_class": top_class,
                "top_probability": float(top_probability),
                **{name: float(probability) for name, probability in zip(class_names, row, strict=True)},
            }
        )
    write_multiscale_labels(
        masks,
        group,
        name="cells",
        fmt=FormatV04(),
        axes="yx",
        storage_options={"chunks": (_CHUNK, _CHUNK), "compressor": compressor},
        label_metadata={"colors": colours, "properties": properties, "source": {"image": "../../"}},
    )


def _legend(
    image: ImageAnnotation, cells: pd.DataFrame, class_names: Sequence[str], thresholds: np.ndarray
) -> list[tuple[str, str, tuple[int, int, int]]]:
    """(class, text, colour) of each legend line: the top classes present, in class order, with their
    cell counts; for task hpa2018-images the image's labels with their probabilities."""
    if image.labels is None:
        probabilities = np.asarray(image.image_probabilities, np.float32)
        return [
            (name, f"{name} {probabilities[index]:.2f}", _class_colour(index))
            for index, name in enumerate(class_names)
            if probabilities[index] >= thresholds[index]
        ]
    counts = cells["top_class"].value_counts()
    return [
        (name, f"{name} ({counts[name]})", _class_colour(index))
        for index, name in enumerate(class_names)
        if name in counts.index
    ]


def _composite(channels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB: each channel stretched between its 1st and 99.8th percentile;
    red to red, green to green, blue to blue, yellow to half red plus half green."""
    planes = []
    for plane in channels:
        small = cv2.resize(plane, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        low, high = np.percentile(small, (1, 99.8))
        planes.append(np.clip((small - low) / max(high - low, 1e-6), 0, 1))
    red, green, blue, yellow = planes
    rgb = np.stack([red + 0.5 * yellow, green + 0.5 * yellow, blue], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell next to another value: its inner boundary, one pixel wide plus one per 512 px
    of the overview's longest side, so that outlines stay visible on a full-size overview."""
    size = 2 * (1 + max(labels.shape) // 512) + 1
    low = ndimage.grey_erosion(labels, size=size, mode="nearest")
    high = ndimage.grey_dilation(labels, size=size, mode="nearest")
    return (labels > 0) & ((low != labels) | (high != labels))


def _write_overview(
    path: Path,
    image: ImageAnnotation,
    cells: pd.DataFrame,
    class_names: Sequence[str],
    legend: list[tuple[str, str, tuple[int, int, int]]],
) -> None:
    """The composite with cell outlines by top class and a legend panel on its right; the legend's class
    names are also saved in the PNG's ``legend`` text chunk (JSON)."""
    full_height, full_width = image.channels.shape[1:]
    scale = min(1.0, _OVERVIEW_LONGEST / max(full_height, full_width))
    height, width = max(1, round(full_height * scale)), max(1, round(full_width * scale))
    picture = _composite(image.channels, height, width)
    if image.labels is not None and len(image.instance):
        rows = (np.arange(height) * full_height // height).astype(np.intp)
        columns = (np.arange(width) * full_width // width).astype(np.intp)
        labels = image.labels[rows][:, columns]
        edge = _outlines(labels)
        class_index = {name: index for index, name in enumerate(class_names)}
        palette = np.asarray([_class_colour(class_index[name]) for name in cells["top_class"]], np.uint8)
        values = labels[edge]
        position = np.clip(np.searchsorted(image.instance, values), 0, len(image.instance) - 1)
        listed = image.instance[position] == values
        picture[edge] = np.where(listed[:, None], palette[position], np.asarray(_UNLISTED_COLOUR, np.uint8))
    font, font_scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    line = 18
    lines = [("", f"{image.image_id}", (255, 255, 255))] + (
        legend or [("", "no cells" if image.labels is not None else "no class above its threshold", (160, 160, 160))]
    )
    text_width = max(cv2.getTextSize(text, font, font_scale, thickness)[0][0] for _, text, _ in lines)
    panel_width = 8 + 14 + 6 + text_width + 8
    canvas = np.zeros((max(height, line * len(lines) + 8), width + panel_width, 3), np.uint8)
    canvas[:height, :width] = picture
    for number, (name, text, colour) in enumerate(lines):
        top = 4 + number * line
        if name:
            cv2.rectangle(canvas, (width + 8, top + 2), (width + 21, top + 14), colour, thickness=-1)
        cv2.putText(canvas, text, (width + 28, top + 13), font, font_scale, (235, 235, 235), thickness, cv2.LINE_AA)
    info = PngImagePlugin.PngInfo()
    info.add_text("legend", json.dumps([name for name, _, _ in legend]))
    with atomic_file(path, "wb") as handle:
        Image.fromarray(canvas).save(handle, format="PNG", pnginfo=info)


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_file(path, "wb") as handle:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), handle)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)
