"""A bundle applied to a folder of new images (``hpa-pipeline annotate``): the workflow's test-set path
(resize -> segment -> masks -> crops -> predict every member and fold with the bundle's TTA ->
average -> area scaling) run shard by shard with the stages' own functions, never training.

Each shard's stores live in ``OUT/.work/shard-K`` only while the shard is annotated, so disk and
memory stay flat in the number of images. A killed run resumes: the writer keeps every finished
image, and a shard whose images are all finished is skipped.

The workflow's annotate mode (rules/annotate.smk) runs the same path as jobs: the preprocessing rules,
then :func:`predict_member_shard` per member, fold and shard, :func:`annotate_shard` per shard and
:func:`merge_shards` once, into the same ``OUT/`` layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpa_pipeline import __version__
from hpa_pipeline.annotate.outputs import AnnotationWriter, ImageAnnotation
from hpa_pipeline.annotate.plan import StoreSizes, store_sizes
from hpa_pipeline.bundle import Bundle, BundleMember, load_member_model
from hpa_pipeline.data.index import index_image_folder
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.channels import CHANNELS, channel_path, read_channel_raw
from hpa_pipeline.io.files import replace_directory
from hpa_pipeline.io.index import read_index, shard_ids, write_index
from hpa_pipeline.io.masks import read_labels
from hpa_pipeline.io.predictions import (
    PredictionSet,
    align_to_cells,
    average_predictions,
    read_predictions,
    select_images,
)
from hpa_pipeline.io.stores import open_store
from hpa_pipeline.nets.devices import claim_device, configure_threads
from hpa_pipeline.predict import predict_model, write_model_predictions
from hpa_pipeline.preprocess.crops import crop_shard
from hpa_pipeline.preprocess.masks import resize_masks_shard, segment_shard
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.preprocess.segment import create_producer
from hpa_pipeline.progress import progress
from hpa_pipeline.settings import ModelData, model_stores
from hpa_pipeline.submit.submission import area_scale

log = logging.getLogger(__name__)

#: The dataset name the annotated images carry in the stores (the workflow's test-set path).
DATASET = "test"


@dataclass(frozen=True)
class _ShardStores:
    """The stores of one shard under its work folder."""

    root: Path

    def index(self) -> Path:
        return self.root / "index.csv"

    def images(self, size: int) -> Path:
        return self.root / f"images_{size}.zarr"

    def masks(self) -> Path:
        return self.root / "masks.zarr"

    def resized_masks(self, size: int) -> Path:
        return self.root / f"masks_{size}.zarr"

    def cells(self) -> Path:
        return self.root / "cells.zarr"

    def crops(self, size: int) -> Path:
        return self.root / f"crops_{size}.zarr"


@dataclass
class AnnotationSummary:
    """What one call of :func:`annotate_folder` did: images annotated now, images a killed run had finished,
    and the seconds spent per stage (``resize``, ``segment``, ``masks``, ``crops``; ``predict``: every member
    and fold; ``write``: OME-Zarr images, overviews and tables)."""

    annotated: int = 0
    already_done: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def run_key(bundle: Bundle, images_per_shard: int) -> str:
    """What the annotations depend on: the bundle's manifest and the shard size (prediction batches span
    a shard, and CPU reductions depend on the batch)."""
    text = json.dumps({"manifest": bundle.manifest, "images_per_shard": images_per_shard}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def annotate_folder(
    bundle: Bundle,
    input_dir: Path,
    out_dir: Path,
    *,
    images_per_shard: int = 16,
    device: str = "auto",
    threads: int = 1,
    segment_weights_dir: Path | None = None,
) -> AnnotationSummary:
    """Annotate every image of ``input_dir`` with ``bundle`` into ``out_dir``.

    Args:
        bundle: a verified bundle (:func:`hpa_pipeline.bundle.load_bundle`).
        input_dir: ``{ID}_{red,green,blue,yellow}.png|tif|jpg`` files, 8- or 16-bit, any size.
        out_dir: where the tables, OME-Zarr images and overviews go.
        images_per_shard: images segmented and predicted together (memory grows with it, not with the
            number of images).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for the models (and the hpacellseg segmenter).
        threads: CPU threads of torch and OpenCV.
        segment_weights_dir: folder holding the hpacellseg weight files the bundle names (hpacellseg
            bundles only; their sha256 is checked).

    Returns:
        The images annotated in this call (finished images of a killed run are kept) and the time per stage.
    """
    index = index_image_folder(input_dir, images_per_shard, DATASET)
    sizes = store_sizes(bundle.manifest)
    work = out_dir / ".work"
    configure_threads(threads)
    summary = AnnotationSummary()
    writer = _writer(bundle, out_dir, input_dir, images_per_shard)
    try:
        shards = sorted(set(index["shard"]))
        for shard in progress(shards, "annotate", total=len(shards), unit="shard"):
            ids = shard_ids(index, shard)
            if all(writer.done(image_id) for image_id in ids):
                summary.already_done += len(ids)
                continue
            stores = _ShardStores(work / f"shard-{shard}")
            shutil.rmtree(stores.root, ignore_errors=True)  # a killed run's half-built shard
            stores.root.mkdir(parents=True)
            write_index(stores.index(), index[index["shard"] == shard].assign(shard=0))
            _preprocess(bundle, input_dir, ids, stores, sizes, device, threads, segment_weights_dir, summary)
            with summary.timing("predict"):
                average = _predict(bundle, stores, device)
            with summary.timing("write"):
                for image in _annotations(bundle, input_dir, ids, DATASET, average, stores.cells(), stores.masks()):
                    writer.add(image)
                    summary.annotated += 1
            shutil.rmtree(stores.root)
        with summary.timing("write"):
            writer.close()
    finally:
        # finished images stay (a rerun resumes after them); a shard's intermediate stores never do
        shutil.rmtree(work, ignore_errors=True)
    log.info("%d images annotated (%d already done) -> %s", summary.annotated, summary.already_done, out_dir)
    return summary


def _producer(bundle: Bundle, device: str, threads: int, weights_dir: Path | None):
    backend = bundle.segment["backend"]
    if backend != "hpacellseg":
        return create_producer(backend, device="cpu", threads=threads)
    from hpa_pipeline.errors import ConfigError

    if weights_dir is None:
        raise ConfigError(
            "this bundle segments with hpacellseg: name the folder of its weight files with --segment-weights "
            f"({bundle.segment['nuclei_model']}, {bundle.segment['cell_model']})"
        )
    weights = {
        "nuclei_model": Path(weights_dir) / bundle.segment["nuclei_model"],
        "nuclei_model_sha256": bundle.segment["nuclei_model_sha256"],
        "cell_model": Path(weights_dir) / bundle.segment["cell_model"],
        "cell_model_sha256": bundle.segment["cell_model_sha256"],
    }
    return create_producer(backend, device=device, hpacellseg=weights, threads=threads)


def _preprocess(
    bundle: Bundle,
    input_dir: Path,
    ids: Sequence[str],
    stores: _ShardStores,
    sizes: StoreSizes,
    device: str,
    threads: int,
    weights_dir: Path | None,
    summary: AnnotationSummary,
) -> None:
    """The shard's images at every needed size, and (task hpa2021-cells) its masks, cell table and crops."""
    with summary.timing("resize"):
        resize_shard(input_dir, ids, sizes.images, [stores.images(size) for size in sizes.images], threads=threads)
    if bundle.task == "hpa2018-images":
        return
    source = bundle.segment["source"]
    prefer = "cpu" if bundle.segment["backend"] == "classical" else device
    with summary.timing("segment"), claim_device(prefer) as claim:
        producer = _producer(bundle, claim.device, threads, weights_dir)
        segment_shard(
            ids,
            stores.masks(),
            producer,
            float(bundle.segment["scale_factor"]),
            image_dir=input_dir if source == "original" else None,
            images_store=None if source == "original" else stores.images(int(source)),
        )
    with summary.timing("masks"):
        resize_masks_shard(
            stores.masks(), sizes.masks, [stores.resized_masks(size) for size in sizes.masks], stores.cells(), DATASET
        )
    with summary.timing("crops"):
        for size in sizes.crops:
            crop_shard(
                stores.images(size), stores.resized_masks(size), stores.cells(), bundle.crop_size, stores.crops(size)
            )


def _member_data(bundle: Bundle, stores: _ShardStores, kind: str, size: int) -> ModelData:
    data = ModelData(index_paths=[stores.index()], folds_paths=[], cells_paths=[])
    if bundle.task != "hpa2018-images":
        data.cells_paths = [stores.cells()]
    wanted = model_stores(kind, bundle.task)
    if "images" in wanted:
        data.images_paths = [stores.images(size)]
    if "masks" in wanted:
        data.masks_paths = [stores.resized_masks(size)]
    if "crops" in wanted:
        data.crops_paths = [stores.crops(size)]
    return data


def _predict(bundle: Bundle, stores: _ShardStores, device: str) -> PredictionSet:
    """The equal-weight average of every member and fold, as the submission averages them."""
    predictions, sources = [], []
    with claim_device(device) as claim:
        for member in bundle.members:
            data = _member_data(bundle, stores, member.settings.kind, member.settings.image_size)
            for fold in range(len(member.weights)):
                model = load_member_model(member, fold, claim.torch_device)
                predictions.append(predict_model(model, member.settings, data)[0])
                sources.append(f"{member.name} fold {fold}")
    return average_predictions(predictions, sources)


def _original_channels(input_dir: Path, image_id: str) -> np.ndarray:
    """(4, H, W) at the files' own bit depth (uint16 when any channel is 16-bit)."""
    planes = [read_channel_raw(channel_path(input_dir, image_id, channel)) for channel in CHANNELS]
    dtype = np.uint16 if any(plane.dtype == np.uint16 for plane in planes) else np.uint8
    return np.stack([plane.astype(dtype) for plane in planes])


def _annotations(
    bundle: Bundle,
    input_dir: Path,
    ids: Sequence[str],
    dataset: str,
    average: PredictionSet,
    cells_path: Path | None,
    masks_path: Path | None,
) -> Iterator[ImageAnnotation]:
    """Each image's annotation, one at a time (a shard's original channels never sit in memory together)."""
    n_classes = len(bundle.class_names)
    image_probs = select_images(average, [(dataset, image_id) for image_id in ids], "averaged predictions")
    image_probs = image_probs.image_probs[:, :, 0]
    if bundle.task == "hpa2018-images":
        empty = np.zeros(0)
        for row, image_id in enumerate(ids):
            yield ImageAnnotation(
                image_id=image_id,
                channels=_original_channels(input_dir, image_id),
                labels=None,
                instance=empty.astype(np.int32),
                bbox=np.zeros((0, 4), np.int32),
                area=empty.astype(np.int64),
                touches_edge=empty.astype(bool),
                probabilities=np.zeros((0, n_classes), np.float32),
                area_factor=empty.astype(np.float64),
                image_probabilities=image_probs[row],
            )
        return
    table = read_cell_table(cells_path)
    if list(table.ids) != list(ids):
        raise InputDataError(f"{cells_path} holds images {list(table.ids)[:3]}..., the shard {list(ids)[:3]}...")
    cells = align_to_cells(average, table, f"averaged predictions vs {cells_path}")
    factor = area_scale(table.area, table.touches_edge, bundle.edge_area_threshold, bundle.center_area_threshold)
    masks = open_store(masks_path, "masks")
    for row, image_id in enumerate(table.ids):
        height, width = (int(v) for v in table.source_shape[row])
        rows = slice(table.offsets[row], table.offsets[row + 1])
        yield ImageAnnotation(
            image_id=image_id,
            channels=_original_channels(input_dir, image_id),
            labels=read_labels(masks, row, (height, width)),
            instance=table.instance[rows],
            bbox=table.bbox[rows],
            area=table.area[rows],
            touches_edge=table.touches_edge[rows],
            probabilities=cells.probs[rows, :, 0],
            area_factor=factor[rows],
            image_probabilities=image_probs[row],
        )


# ------------------------------------------------------------------------------------ the workflow's jobs


def predict_member_shard(
    bundle: Bundle, member: str, fold: int, data: ModelData, out_path: Path, device: str = "auto", threads: int = 1
) -> None:
    """One member's fold on one shard's stores, written as a prediction store: the workflow's job
    ``annotate_predict`` (the engine keeps the same predictions in memory).

    Args:
        bundle: the verified bundle.
        member: the member's name.
        fold: its fold.
        data: the shard's index (its images in order) and, in task hpa2021-cells, cell table, plus the
            stores the member reads at its size.
        out_path: the prediction store to write.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads of torch.
    """
    chosen = _member(bundle, member)
    configure_threads(threads)
    with claim_device(device) as claim:
        model = load_member_model(chosen, fold, claim.torch_device)
        predictions, predicted_views = predict_model(model, chosen.settings, data)
    write_model_predictions(out_path, predictions, predicted_views, chosen.settings)


def annotate_shard(
    bundle: Bundle,
    input_dir: Path,
    index_path: Path,
    predictions: Sequence[Path],
    out_dir: Path,
    *,
    images_per_shard: int,
    cells_path: Path | None = None,
    masks_path: Path | None = None,
) -> None:
    """Average a shard's predictions of every member and fold, scale by area and write each image's
    outputs into ``out_dir`` (the layout of ``OUT/`` without the tables): the workflow's job
    ``annotate_shard``. The folder is put in place whole when every image is written.

    Args:
        bundle: the verified bundle.
        input_dir: the original images (the OME-Zarr images keep their pixels and bit depth).
        index_path: the shard's index (its images in order).
        predictions: the prediction stores of every member and fold, members in the bundle's order, folds
            in order (the order the engine averages in).
        out_dir: the shard's annotation folder.
        images_per_shard: the run's shard size (part of the run key).
        cells_path: the shard's cell table store (task hpa2021-cells).
        masks_path: the shard's segmentation store (task hpa2021-cells).
    """
    index = read_index(index_path)
    datasets = sorted(set(index["dataset"]))
    if len(datasets) != 1:
        raise InputDataError(f"{index_path}: the index of one shard of one dataset, not {datasets}")
    average = average_predictions([read_predictions(path) for path in predictions], [str(path) for path in predictions])
    out_dir = Path(out_dir)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # a killed job's
    try:
        writer = _writer(bundle, partial, input_dir, images_per_shard)
        ids = index["ID"].tolist()
        for image in _annotations(
            bundle, input_dir, ids, datasets[0] if datasets else DATASET, average, cells_path, masks_path
        ):
            writer.add(image)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_directory(partial, out_dir)


def merge_shards(
    bundle: Bundle,
    input_dir: Path,
    index_path: Path,
    shard_dirs: Sequence[Path],
    out_dir: Path,
    *,
    images_per_shard: int,
) -> None:
    """Join the shards' annotation folders (:func:`annotate_shard`) into ``out_dir``, the layout of
    ``hpa-pipeline annotate``'s ``OUT/``: each image's outputs hard-linked in (copied across file systems),
    in index order, then the tables, ``annotation.json`` and the gallery. ``out_dir`` is put in place whole.

    Args:
        bundle: the verified bundle.
        input_dir: the original images' folder (provenance).
        index_path: the folder's index; shard k of it is ``shard_dirs[k]``.
        shard_dirs: every shard's annotation folder, in shard order.
        out_dir: the annotations folder to write (replaced whole).
        images_per_shard: the run's shard size (part of the run key).
    """
    index = read_index(index_path)
    shards = sorted(set(index["shard"]))
    if shards != list(range(len(shard_dirs))):
        raise InputDataError(f"{index_path} has {len(shards)} shard(s), {len(shard_dirs)} shard folder(s) were given")
    out_dir = Path(out_dir)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # a killed job's
    try:
        writer = _writer(bundle, partial, input_dir, images_per_shard)
        for shard, folder in zip(shards, shard_dirs, strict=True):
            for image_id in shard_ids(index, shard):
                writer.adopt(Path(folder), image_id)
        writer.close()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_directory(partial, out_dir)


def _member(bundle: Bundle, name: str) -> BundleMember:
    for member in bundle.members:
        if member.name == name:
            return member
    raise InputDataError(
        f"bundle {bundle.root} has no member {name!r} (members: {', '.join(m.name for m in bundle.members)})"
    )


def _provenance(bundle: Bundle, input_dir: Path, images_per_shard: int) -> Mapping[str, object]:
    return {
        "hpa_pipeline_version": __version__,
        "bundle": str(bundle.root),
        "bundle_version": bundle.version,
        "input_dir": str(Path(input_dir).resolve()),
        "images_per_shard": images_per_shard,
    }


def _writer(bundle: Bundle, out_dir: Path, input_dir: Path, images_per_shard: int) -> AnnotationWriter:
    return AnnotationWriter(
        out_dir,
        task=bundle.task,
        class_names=bundle.class_names,
        class_thresholds=bundle.class_thresholds,
        run_key=run_key(bundle, images_per_shard),
        provenance=_provenance(bundle, input_dir, images_per_shard),
    )
