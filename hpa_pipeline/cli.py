"""The ``hpa-pipeline`` command: one subcommand per workflow step, usable without Snakemake."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpa_pipeline.errors import PipelineError

if TYPE_CHECKING:
    from hpa_pipeline.settings import ModelData, ModelSettings

log = logging.getLogger("hpa_pipeline")

Handler = Callable[[argparse.Namespace], None]
_COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {}


def subcommand(
    name: str, help_text: str, arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Handler], Handler]:
    """Register ``handler`` as subcommand ``name``; ``arguments`` adds its options to a parser."""

    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (handler, arguments, help_text)
        return handler

    return register


# --------------------------------------------------------------------------------------------- data


def _demo_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write (Kaggle layout)")
    parser.add_argument("--n-train", type=int, required=True)
    parser.add_argument("--n-test", type=int, required=True)
    parser.add_argument("--image-size", type=int, required=True, help="side of the square fields")
    parser.add_argument("--cells-per-image", type=int, nargs=2, default=(8, 16), metavar=("MIN", "MAX"))
    parser.add_argument("--empty-test-images", type=int, default=0)
    parser.add_argument("--n-public", type=int, default=0, help="images of a local public-HPA server mirror")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo dataset")
    parser.add_argument(
        "--task",
        default="hpa2021-cells",
        choices=("hpa2021-cells", "hpa2018-images"),
        help="hpa2018-images: the 2018 layout (Id,Target; 28 classes; test labels in truth/test.csv)",
    )


@subcommand("demo-data", "write the synthetic demo dataset", _demo_data_arguments)
def _demo_data(args: argparse.Namespace) -> None:
    from hpa_pipeline.data.synth import write_demo_dataset

    if args.task == "hpa2018-images":
        from hpa_pipeline.data.synth2018 import write_demo_dataset_2018

        write_demo_dataset_2018(
            args.out,
            n_train=args.n_train,
            n_test=args.n_test,
            image_size=args.image_size,
            cells_per_image=tuple(args.cells_per_image),
            seed=args.seed,
            overwrite=args.overwrite,
        )
        return
    write_demo_dataset(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        image_size=args.image_size,
        cells_per_image=tuple(args.cells_per_image),
        seed=args.seed,
        empty_test_images=args.empty_test_images,
        n_public=args.n_public,
        overwrite=args.overwrite,
    )


def _download_public_arguments(parser: argparse.ArgumentParser) -> None:
    from hpa_pipeline.config import DOWNLOAD_DEFAULTS, DOWNLOAD_SOURCES

    parser.add_argument(
        "--source",
        choices=tuple(DOWNLOAD_SOURCES),
        default="hpa2021",
        help="the image list: hpa2021 (kaggle_2021.tsv, .tif.gz files) or hpa_v18 (the 2018 external set's "
        "Id,Target list, .jpg files) (default: %(default)s)",
    )
    parser.add_argument("--tsv", required=True, help="the image list of --source: a path or a URL")
    parser.add_argument(
        "--base-url",
        help="what precedes the list's URL paths, or a local mirror folder (default: the source's server, "
        + ", ".join(f"{name} {spec['base_url']}" for name, spec in DOWNLOAD_SOURCES.items())
        + ")",
    )
    parser.add_argument("--out-images", required=True, type=Path, help="folder of {ID}_{channel} files and manifest")
    parser.add_argument(
        "--out-table", required=True, type=Path, help="labels of the downloaded images, in the task's train.csv format"
    )
    parser.add_argument("--out-failed", required=True, type=Path, help="ID,reason CSV of the failed images")
    parser.add_argument(
        "--dataset",
        help="the workflow's extra set being downloaded: --workers, --retries and --timeout default to its "
        "settings, which the workflow passes in $HPA_PIPELINE_JOB_SETTINGS",
    )
    parser.add_argument(
        "--workers", type=int, help=f"images downloaded at the same time (default: {DOWNLOAD_DEFAULTS['workers']})"
    )
    parser.add_argument(
        "--retries",
        type=int,
        help=f"extra tries of a file after a transient failure (default: {DOWNLOAD_DEFAULTS['retries']})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"seconds a request may wait for the server (default: {DOWNLOAD_DEFAULTS['timeout']})",
    )
    parser.add_argument(
        "--max-failed-fraction",
        type=float,
        default=DOWNLOAD_DEFAULTS["max_failed_fraction"],
        help="fail, writing no --out-table, if a larger share of the images failed (default: %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, default=DOWNLOAD_DEFAULTS["limit"], help="only the first N images of the list"
    )
    parser.add_argument(
        "--format",
        choices=sorted({fmt for spec in DOWNLOAD_SOURCES.values() for fmt in spec["formats"]}),
        help="file type written (default: the source's first): "
        + "; ".join(f"{name} {', '.join(spec['formats'])}" for name, spec in DOWNLOAD_SOURCES.items())
        + " (tif and png keep 16-bit pixels, jpg is the server's file as served)",
    )


@subcommand("download-public", "download the public HPA images of an image list", _download_public_arguments)
def _download_public(args: argparse.Namespace) -> None:
    from hpa_pipeline.config import DOWNLOAD_DEFAULTS, DOWNLOAD_JOB_SETTINGS, DOWNLOAD_SOURCES, exported_job_settings
    from hpa_pipeline.data.download import download_images, read_image_list, write_download_outputs

    # workers, retries and timeout: the options, else the workflow's settings of --dataset, else the defaults
    workflow = exported_job_settings().get("downloads", {}).get(args.dataset, {}) if args.dataset else {}
    given = {key: getattr(args, key) for key in DOWNLOAD_JOB_SETTINGS if getattr(args, key) is not None}
    job = {key: DOWNLOAD_DEFAULTS[key] for key in DOWNLOAD_JOB_SETTINGS} | workflow | given
    log.info("downloading with %(workers)d workers, %(retries)d retries, a %(timeout)g s timeout", job)
    table = read_image_list(args.tsv, args.source, timeout=job["timeout"])
    result = download_images(
        table,
        args.base_url or DOWNLOAD_SOURCES[args.source]["base_url"],
        args.out_images,
        workers=job["workers"],
        retries=job["retries"],
        timeout=job["timeout"],
        limit=args.limit,
        image_format=args.format,
        source=args.source,
    )
    write_download_outputs(result, table, args.out_table, args.out_failed, args.max_failed_fraction, args.source)


def _init_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-dir", required=True, type=Path, help="your dataset folder (Kaggle layout, 2021 or 2018)"
    )
    parser.add_argument("--out", required=True, type=Path, help="the config file to write, e.g. my.yaml")
    parser.add_argument(
        "--preset",
        choices=("demo", "full"),
        default="full",
        help="full: the 7th-place models, or bestfitting's for a 2018 folder (GPUs); demo: tiny models (a CPU)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--decode",
        type=int,
        default=16,
        metavar="N",
        help="images per split decoded completely (every file's header is read); 0 = none",
    )
    parser.add_argument("--decode-all", action="store_true", help="decode every image (slow on large folders)")
    parser.add_argument(
        "--workflow-dir", type=Path, help="the hpa-pipeline checkout (default: here, else the package's)"
    )


@subcommand("init-config", "check a dataset folder and write a commented config for it", _init_config_arguments)
def _init_config(args: argparse.Namespace) -> None:
    from hpa_pipeline.data.init_config import init_config

    summary = init_config(
        args.input_dir,
        args.out,
        preset=args.preset,
        force=args.force,
        workflow_dir=args.workflow_dir,
        decode=None if args.decode_all else args.decode,
    )
    print(summary)


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, help="folder of {ID}_{channel}.png files")
    parser.add_argument("--table", required=True, type=Path, help="train.csv or sample_submission.csv")
    parser.add_argument("--kind", required=True, choices=("train", "test"))
    parser.add_argument("--dataset", help="the dataset's name (default: the kind)")
    parser.add_argument(
        "--disjoint-from", type=Path, nargs="*", default=[], help="other datasets' index.csv that must share no ID"
    )
    parser.add_argument("--shards", required=True, type=int)
    parser.add_argument(
        "--task", default="hpa2021-cells", help="hpa2021-cells (ID,Label) or hpa2018-images (Id,Target)"
    )
    parser.add_argument("--out", required=True, type=Path)


@subcommand("index", "check a dataset's files and assign its images to shards", _index_arguments)
def _index(args: argparse.Namespace) -> None:
    from hpa_pipeline.data.index import build_index, check_disjoint
    from hpa_pipeline.io.index import write_index

    index = build_index(args.images, args.table, args.kind, args.shards, dataset=args.dataset, task=args.task)
    check_disjoint(index, args.table, args.disjoint_from)
    write_index(args.out, index)
    log.info("%d images in %d shards", len(index), args.shards)


def _hash_images_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, nargs="+", help="a dataset's images stores")
    parser.add_argument("--out", required=True, type=Path, help="hash table CSV (ID,hash)")


@subcommand("hash-images", "compute the perceptual hash of every image of images stores", _hash_images_arguments)
def _hash_images(args: argparse.Namespace) -> None:
    from hpa_pipeline.data.duplicates import hash_images_store, write_hash_table

    table = hash_images_store(args.images)
    write_hash_table(args.out, table)
    log.info("hashed %d images", len(table))


def _dataset_file(text: str) -> tuple[str, Path]:
    dataset, separator, path = text.partition("=")
    if not separator or not dataset or not path:
        raise argparse.ArgumentTypeError(f"expected DATASET=CSV, got {text!r}")
    return dataset, Path(path)


def _duplicate_groups_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hashes",
        required=True,
        type=_dataset_file,
        nargs="+",
        metavar="DATASET=CSV",
        help="hash tables (a dataset may name one per shard)",
    )
    parser.add_argument("--max-distance", required=True, type=int, help="largest Hamming distance (bits of 64)")
    parser.add_argument("--test-dataset", default="test", help="the test set's name (for the summary)")
    parser.add_argument("--out", required=True, type=Path, help="groups CSV (group,dataset,ID,distance)")


@subcommand(
    "duplicate-groups", "group near-duplicate images across datasets by hash distance", _duplicate_groups_arguments
)
def _duplicate_groups(args: argparse.Namespace) -> None:
    import pandas as pd

    from hpa_pipeline.data.duplicates import find_duplicate_groups, read_hash_table, summarize_groups
    from hpa_pipeline.io.duplicates import write_duplicate_groups

    # a dataset's shards each have a table: join them in the given order
    tables: dict[str, list[pd.DataFrame]] = {}
    for dataset, path in args.hashes:
        tables.setdefault(dataset, []).append(read_hash_table(path))
    hashes = {dataset: pd.concat(parts, ignore_index=True) for dataset, parts in tables.items()}
    groups = find_duplicate_groups(hashes, args.max_distance)
    write_duplicate_groups(args.out, groups)
    summary = summarize_groups(groups, args.test_dataset)
    log.info(
        "%d groups of near duplicates (max distance %d) hold %d images; %d groups span datasets; "
        "%d training images duplicate %s images",
        summary["groups"],
        args.max_distance,
        summary["images"],
        summary["groups_across_datasets"],
        summary["duplicates_of_test"],
        args.test_dataset,
    )


# --------------------------------------------------------------------------------------- preprocess


def _shard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="the dataset's index.csv")
    parser.add_argument("--shard", required=True, type=int)


def _resize_arguments(parser: argparse.ArgumentParser) -> None:
    _shard_arguments(parser)
    parser.add_argument("--images", required=True, type=Path, help="folder of raw channel files")
    parser.add_argument("--sizes", required=True, type=int, nargs="+")
    parser.add_argument("--out", required=True, type=Path, nargs="+", help="one store per size")
    parser.add_argument("--threads", type=int, default=1)


@subcommand("resize", "decode a shard's images once and resize them to every size", _resize_arguments)
def _resize(args: argparse.Namespace) -> None:
    from hpa_pipeline.io.index import read_index, shard_ids
    from hpa_pipeline.preprocess.resize import resize_shard

    image_ids = shard_ids(read_index(args.index), args.shard)
    resize_shard(args.images, image_ids, args.sizes, args.out, threads=args.threads)


def _segment_arguments(parser: argparse.ArgumentParser) -> None:
    _shard_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images-dir", type=Path, help="segment the original channel files")
    source.add_argument("--images-store", type=Path, help="segment a resized images store")
    parser.add_argument("--scale-factor", type=float, required=True)
    parser.add_argument("--backend", default="classical", choices=("classical", "hpacellseg"))
    parser.add_argument(
        "--device",
        help="auto, cpu, cuda or cuda:N (hpacellseg backend; default: the workflow's segment.device, else auto)",
    )
    parser.add_argument("--nuclei-model", type=Path, help="hpacellseg: dpn_unet_nuclei_v1.pth")
    parser.add_argument("--nuclei-model-sha256")
    parser.add_argument("--cell-model", type=Path, help="hpacellseg: dpn_unet_cell_3ch_v1.pth")
    parser.add_argument("--cell-model-sha256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)


@subcommand("segment", "make the cell label masks of a shard", _segment_arguments)
def _segment(args: argparse.Namespace) -> None:
    from hpa_pipeline.io.index import read_index, shard_ids
    from hpa_pipeline.nets.devices import claim_device, configure_threads
    from hpa_pipeline.preprocess.masks import segment_shard
    from hpa_pipeline.preprocess.segment import create_producer

    configure_threads(args.threads)
    image_ids = shard_ids(read_index(args.index), args.shard)
    weights = None
    if args.backend == "hpacellseg":
        weights = {
            "nuclei_model": args.nuclei_model,
            "nuclei_model_sha256": args.nuclei_model_sha256,
            "cell_model": args.cell_model,
            "cell_model_sha256": args.cell_model_sha256,
        }
    prefer = "cpu" if args.backend == "classical" else _device(args.device, "segment_device")
    with claim_device(prefer) as claim:
        producer = create_producer(args.backend, device=claim.device, hpacellseg=weights, threads=args.threads)
        segment_shard(
            image_ids, args.out, producer, args.scale_factor, image_dir=args.images_dir, images_store=args.images_store
        )


def _resize_masks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", required=True, type=Path, help="the shard's segmentation store")
    parser.add_argument("--sizes", required=True, type=int, nargs="+")
    parser.add_argument("--out-masks", required=True, type=Path, nargs="+", help="one store per size")
    parser.add_argument("--out-cells", required=True, type=Path, help="the shard's cell table store")
    parser.add_argument("--dataset", required=True, help="the dataset the shard belongs to")


@subcommand("resize-masks", "resize a shard's masks to every size and write its cell table", _resize_masks_arguments)
def _resize_masks(args: argparse.Namespace) -> None:
    from hpa_pipeline.preprocess.masks import resize_masks_shard

    resize_masks_shard(args.masks, args.sizes, args.out_masks, args.out_cells, args.dataset)


def _crop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, help="images store at size S")
    parser.add_argument("--masks", required=True, type=Path, help="masks store at size S")
    parser.add_argument("--cells", required=True, type=Path, help="the shard's cell table store")
    parser.add_argument("--crop-size", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path)


@subcommand("crop", "cut the 8-channel crop of every cell of a shard", _crop_arguments)
def _crop(args: argparse.Namespace) -> None:
    from hpa_pipeline.preprocess.crops import crop_shard

    crop_shard(args.images, args.masks, args.cells, args.crop_size, args.out)


# ------------------------------------------------------------------------------------------- models


def _folds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="a training dataset's index.csv")
    parser.add_argument("--n-folds", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--duplicates", type=Path, help="duplicate groups CSV: each group stays in one fold")
    parser.add_argument(
        "--earlier-folds",
        nargs="*",
        default=[],
        metavar="DATASET=CSV",
        help="fold tables of the datasets split before this one (a group they share keeps their fold)",
    )
    parser.add_argument(
        "--drop-test-duplicates", action="store_true", help="never train on images that duplicate a test image"
    )
    parser.add_argument("--task", default="hpa2021-cells", help="the label set: hpa2021-cells or hpa2018-images")
    parser.add_argument("--out", required=True, type=Path)


@subcommand("folds", "assign a training dataset's images to multilabel-stratified folds", _folds_arguments)
def _folds(args: argparse.Namespace) -> None:
    from hpa_pipeline.io.duplicates import read_duplicate_groups
    from hpa_pipeline.io.folds import read_folds, write_folds
    from hpa_pipeline.io.index import read_index
    from hpa_pipeline.labels import n_classes
    from hpa_pipeline.train.folds import fold_table

    earlier = {}
    for item in args.earlier_folds:
        name, _, path = item.partition("=")
        if not path:
            raise PipelineError(f"--earlier-folds {item!r}: expected DATASET=CSV")
        earlier[name] = read_folds(path)
    table = fold_table(
        read_index(args.index),
        args.n_folds,
        args.seed,
        read_duplicate_groups(args.duplicates) if args.duplicates else None,
        earlier,
        drop_test_duplicates=args.drop_test_duplicates,
        source=str(args.index),
        n_classes=n_classes(args.task),
    )
    write_folds(args.out, table["ID"].tolist(), table["fold"].to_numpy(), table["trainable"].to_numpy())


def _model_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help="the model's resolved settings (JSON)")
    parser.add_argument("--index", type=Path, nargs="*", default=[], help="index.csv of each training dataset")
    parser.add_argument("--folds", type=Path, nargs="*", default=[], help="folds CSV of each training dataset")
    parser.add_argument(
        "--cells", type=Path, nargs="*", default=[], help="cell tables of every shard (none in the image-level task)"
    )
    parser.add_argument("--images", type=Path, nargs="*", default=[], help="images stores (image models)")
    parser.add_argument("--masks", type=Path, nargs="*", default=[], help="resized masks stores (image models)")
    parser.add_argument("--crops", type=Path, nargs="*", default=[], help="crops stores (cell models)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the workflow's train_device, else auto)")
    parser.add_argument("--threads", type=int, default=1)


def _device(device: str | None, job_setting: str) -> str:
    """``--device``, else the device the workflow passes in its job settings, else ``auto``."""
    from hpa_pipeline.config import exported_job_settings

    return device or exported_job_settings().get(job_setting) or "auto"


def _model_settings(args: argparse.Namespace) -> ModelSettings:
    """``--settings``, with the job settings (compile, ...) that the workflow passes for the model filled in."""
    from hpa_pipeline.config import exported_job_settings
    from hpa_pipeline.settings import ModelSettings

    return ModelSettings.from_json(args.settings, exported_job_settings().get("models"))


def _model_data(args: argparse.Namespace) -> ModelData:
    from hpa_pipeline.settings import ModelData

    return ModelData(
        index_paths=args.index,
        folds_paths=args.folds,
        cells_paths=args.cells,
        images_paths=args.images,
        masks_paths=args.masks,
        crops_paths=args.crops,
        pseudo_labels=getattr(args, "pseudo_labels", None),
        init_checkpoint=getattr(args, "init_checkpoint", None),
    )


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _model_data_arguments(parser)
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--pseudo-labels", type=Path, help="an ensemble's out-of-fold store: the cell targets")
    parser.add_argument("--init-checkpoint", type=Path, help="start from this final.pt of the same architecture")
    parser.add_argument("--checkpoint-dir", required=True, type=Path, help="per-epoch checkpoint, kept for resuming")
    parser.add_argument("--out-dir", required=True, type=Path, help="final.pt, metrics.csv and run.yaml go here")


@subcommand("train", "train one model on one fold (resumes from its last epoch)", _train_arguments)
def _train(args: argparse.Namespace) -> None:
    from hpa_pipeline.train.loop import train_model

    device = _device(args.device, "train_device")
    train_model(
        _model_settings(args), args.fold, _model_data(args), args.out_dir, args.checkpoint_dir, device, args.threads
    )


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _model_data_arguments(parser)
    parser.add_argument("--checkpoint", required=True, type=Path, help="the model's final.pt")
    parser.add_argument(
        "--fold", type=int, help="predict this held-out fold of the training images; omit for the test set"
    )
    parser.add_argument("--out", required=True, type=Path)


@subcommand("predict", "predict the held-out fold or the test set with D4 test-time augmentation", _predict_arguments)
def _predict(args: argparse.Namespace) -> None:
    from hpa_pipeline.predict import predict_split

    device = _device(args.device, "train_device")
    predict_split(_model_settings(args), args.checkpoint, _model_data(args), args.out, args.fold, device, args.threads)


def _concat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", required=True, type=Path, nargs="+", help="valid.zarr of every fold")
    parser.add_argument("--index", required=True, type=Path, nargs="+", help="index.csv of each training dataset")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True, type=Path)


@subcommand("concat", "join a model's held-out fold predictions into out-of-fold predictions", _concat_arguments)
def _concat(args: argparse.Namespace) -> None:
    from hpa_pipeline.predict import concat_fold_stores

    concat_fold_stores(args.parts, args.index, args.out, args.model)


# --------------------------------------------------------------------------------------- submission


_COMBINE_METHODS = ("mean", "rank_mean", "weights")


def _combine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        default="mean",
        choices=_COMBINE_METHODS,
        help="how the members are combined (config key ensemble.method; docs/ensembles.md)",
    )
    parser.add_argument("--weights", type=Path, help="the members' weights.csv (method weights: fit-weights writes it)")


def _check_combine_arguments(args: argparse.Namespace) -> None:
    if (args.method == "weights") != (args.weights is not None):
        raise PipelineError("--weights FILE goes with --method weights, and only with it")


def _average_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", required=True, type=Path, nargs="+", help="the members' oof.zarr")
    parser.add_argument("--name", required=True, help="the ensemble's name")
    parser.add_argument("--out", required=True, type=Path)
    _combine_arguments(parser)


@subcommand("average", "combine models' out-of-fold predictions into an ensemble (pseudo labels)", _average_arguments)
def _average(args: argparse.Namespace) -> None:
    from hpa_pipeline.ensemble import average_ensemble

    _check_combine_arguments(args)
    average_ensemble(args.members, args.name, args.out, args.method, args.weights)


def _fit_weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", required=True, type=Path, nargs="+", help="the members' oof.zarr")
    parser.add_argument("--index", required=True, type=Path, nargs="+", help="index.csv of each training dataset")
    parser.add_argument("--folds", required=True, type=Path, nargs="+", help="folds CSV of each training dataset")
    parser.add_argument("--seed", type=int, default=0, help="orders the members within a pass of the fit")
    parser.add_argument("--out", required=True, type=Path, help="the weights CSV")


@subcommand(
    "fit-weights",
    "fit members' weights on their out-of-fold predictions (mean AP against the image labels)",
    _fit_weights_arguments,
)
def _fit_weights(args: argparse.Namespace) -> None:
    from hpa_pipeline.ensemble import fit_weights_file

    fit_weights_file(args.members, args.index, args.folds, args.out, args.seed)


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, type=Path, nargs="+", help="test.zarr of every member and fold")
    parser.add_argument("--cells", required=True, type=Path, nargs="+", help="the test shards' cell tables")
    parser.add_argument("--masks", required=True, type=Path, nargs="+", help="the test shards' segmentation stores")
    parser.add_argument("--index", required=True, type=Path, help="the test index (row order)")
    parser.add_argument("--edge-area-threshold", required=True, type=float)
    parser.add_argument("--center-area-threshold", required=True, type=float)
    parser.add_argument("--out", required=True, type=Path)
    _combine_arguments(parser)


@subcommand(
    "submit", "combine the test predictions, scale by cell area and write the submission CSV", _submit_arguments
)
def _submit(args: argparse.Namespace) -> None:
    from hpa_pipeline.submit.submission import make_submission

    _check_combine_arguments(args)
    make_submission(
        args.predictions,
        args.cells,
        args.masks,
        args.index,
        args.edge_area_threshold,
        args.center_area_threshold,
        args.out,
        args.method,
        args.weights,
    )


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="the submission CSV")
    parser.add_argument("--images", type=Path, help="the test images folder (task hpa2021-cells)")
    parser.add_argument("--table", required=True, type=Path, help="sample_submission.csv (the test IDs)")
    parser.add_argument("--report", type=Path, help="also write the report here (JSON)")
    parser.add_argument(
        "--task",
        default="hpa2021-cells",
        choices=("hpa2021-cells", "hpa2018-images"),
        help="hpa2021-cells: masks and sizes per cell; hpa2018-images: Id,Predicted with classes 0..27",
    )


@subcommand(
    "validate-submission", "check a submission against the test images, decoding every mask", _validate_arguments
)
def _validate(args: argparse.Namespace) -> None:
    import json

    from hpa_pipeline.io.files import write_text_atomic
    from hpa_pipeline.submit.validation import check_submission, check_submission_2018

    if args.task == "hpa2018-images":
        report = check_submission_2018(args.submission, args.table)
    elif args.images is None:
        raise PipelineError("validate-submission: --images is required for task hpa2021-cells")
    else:
        report = check_submission(args.submission, args.images, args.table)
    log.info("valid: %s", report.to_dict())
    if args.report:
        write_text_atomic(args.report, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs=3, action="append", default=[], metavar=("NAME", "STAGE", "OOF"))
    parser.add_argument("--ensemble", nargs=3, action="append", default=[], metavar=("NAME", "STAGE", "OOF"))
    parser.add_argument("--submission", type=Path)
    parser.add_argument(
        "--stage-submission",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "STAGE", "CSV"),
        help="what an ensemble or a submission member alone would submit (scored on the test images)",
    )
    parser.add_argument(
        "--masks", required=True, type=Path, nargs="+", help="the training datasets' segmentation stores"
    )
    parser.add_argument("--test-masks", type=Path, nargs="+", default=[], help="the test set's segmentation stores")
    parser.add_argument("--truth", required=True, type=Path, help="folder with cells.csv and {split}/{ID}_cellmask.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the chance reference's random scores")
    parser.add_argument("--out-json", required=True, type=Path)
    parser.add_argument("--out-tsv", required=True, type=Path)


@subcommand("evaluate", "score models, ensembles and the submission against per-cell truth", _evaluate_arguments)
def _evaluate(args: argparse.Namespace) -> None:
    from hpa_pipeline.submit.evaluation import evaluate_run

    evaluate_run(
        {name: (int(stage), Path(path)) for name, stage, path in args.model},
        {name: (int(stage), Path(path)) for name, stage, path in args.ensemble},
        args.submission,
        args.masks,
        args.truth,
        args.out_json,
        args.out_tsv,
        args.test_masks,
        args.seed,
        {name: (int(stage), Path(path)) for name, stage, path in args.stage_submission},
    )


def _fit_thresholds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oof", required=True, type=Path, nargs="+", help="the submission members' oof.zarr")
    parser.add_argument("--index", required=True, type=Path, nargs="+", help="index.csv of each training dataset")
    parser.add_argument("--folds", required=True, type=Path, nargs="+", help="folds CSV of each training dataset")
    parser.add_argument("--task", default="hpa2021-cells", choices=("hpa2021-cells", "hpa2018-images"))
    parser.add_argument("--method", default="f1", choices=("f1", "label_ratio", "fixed"))
    parser.add_argument("--value", type=float, default=0.5, help="the threshold of method fixed")
    parser.add_argument("--out", required=True, type=Path)


@subcommand("fit-thresholds", "fit one threshold per class on out-of-fold image predictions", _fit_thresholds_arguments)
def _fit_thresholds(args: argparse.Namespace) -> None:
    from hpa_pipeline.submit.thresholds import fit_threshold_file

    fit_threshold_file(args.oof, args.index, args.folds, args.out, args.task, args.method, args.value)


def _image_predictions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, type=Path, nargs="+", help="test.zarr of every member/fold")
    parser.add_argument("--index", required=True, type=Path, help="the test index (row order)")
    parser.add_argument("--thresholds", required=True, type=Path, help="results/thresholds.csv")
    parser.add_argument("--task", default="hpa2021-cells", choices=("hpa2021-cells", "hpa2018-images"))
    parser.add_argument("--out", required=True, type=Path)


@subcommand(
    "image-predictions",
    "average the test image probabilities and apply the per-class thresholds",
    _image_predictions_arguments,
)
def _image_predictions(args: argparse.Namespace) -> None:
    from hpa_pipeline.submit.image_predictions import make_image_predictions

    make_image_predictions(args.predictions, args.index, args.thresholds, args.out, args.task)


def _submit_images_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-predictions", required=True, type=Path, help="results/image_predictions.csv")
    parser.add_argument("--table", required=True, type=Path, help="sample_submission.csv (Id,Predicted)")
    parser.add_argument("--out", required=True, type=Path)


@subcommand(
    "submit-images", "write the 2018 submission (Id,Predicted) from the image predictions", _submit_images_arguments
)
def _submit_images(args: argparse.Namespace) -> None:
    from hpa_pipeline.submit.image_predictions import make_submission_2018

    make_submission_2018(args.image_predictions, args.table, args.out)


def _evaluate_images_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs=3, action="append", default=[], metavar=("NAME", "STAGE", "OOF"))
    parser.add_argument("--ensemble", nargs=3, action="append", default=[], metavar=("NAME", "STAGE", "OOF"))
    parser.add_argument("--members", type=Path, nargs="*", default=[], help="the submission members' oof.zarr")
    parser.add_argument("--index", required=True, type=Path, nargs="+", help="index.csv of each training dataset")
    parser.add_argument("--folds", required=True, type=Path, nargs="+", help="folds CSV of each training dataset")
    parser.add_argument("--thresholds", required=True, type=Path)
    parser.add_argument("--image-predictions", required=True, type=Path, help="results/image_predictions.csv")
    parser.add_argument("--submission", required=True, type=Path, help="results/submission.csv, the file scored")
    parser.add_argument("--truth", required=True, type=Path, help="the test images' labels (Id,Target)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-json", required=True, type=Path)
    parser.add_argument("--out-tsv", required=True, type=Path)


@subcommand(
    "evaluate-images",
    "macro F1 of models, ensembles and the submission of the image-level task, with references",
    _evaluate_images_arguments,
)
def _evaluate_images(args: argparse.Namespace) -> None:
    from hpa_pipeline.submit.evaluation_images import evaluate_images_run

    evaluate_images_run(
        {name: (int(stage), Path(path)) for name, stage, path in args.model},
        {name: (int(stage), Path(path)) for name, stage, path in args.ensemble},
        args.members,
        args.index,
        args.folds,
        args.thresholds,
        args.image_predictions,
        args.submission,
        args.truth,
        args.out_json,
        args.out_tsv,
        args.seed,
    )


# ------------------------------------------------------------------------------------------- report


def _plot_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, type=Path, nargs="+", help="metrics.csv of each fold")
    parser.add_argument("--labels", required=True, nargs="+")
    parser.add_argument("--title", required=True)
    parser.add_argument("--out", required=True, type=Path)


@subcommand("plot-training", "plot a model's training curves, one line per fold", _plot_training_arguments)
def _plot_training(args: argparse.Namespace) -> None:
    from hpa_pipeline.report import plot_training_curves

    plot_training_curves(args.metrics, args.labels, args.title, args.out)


def _plot_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, type=Path, help="results/metrics.tsv")
    parser.add_argument("--out", required=True, type=Path)


@subcommand(
    "plot-metrics", "plot the metric of every model, ensemble and the submission by stage", _plot_metrics_arguments
)
def _plot_metrics(args: argparse.Namespace) -> None:
    from hpa_pipeline.report import plot_stage_metrics

    plot_stage_metrics(args.metrics, args.out)


def _plot_segmentation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--masks", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)


@subcommand("plot-segmentation", "draw cell outlines on the first images of a shard", _plot_segmentation_arguments)
def _plot_segmentation(args: argparse.Namespace) -> None:
    from hpa_pipeline.report import plot_segmentation

    plot_segmentation(args.images, args.masks, args.out)


# ------------------------------------------------------------------------------------------- bundle


def _bundle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "The workflow runs it as `snakemake bundle`. By hand on the finished demo: hpa-pipeline bundle "
        "--checkpoints results/models/cell_resnet_192_stage3/fold{0,1}/final.pt "
        "--thresholds results/thresholds.csv "
        "--train-index results/train/index.csv results/pubhpa/index.csv --image-sizes 192 384 "
        "--crop-image-sizes 192 --crop-size 48 --segment-backend classical --segment-source original "
        "--segment-scale-factor 0.25 --edge-area-threshold 5000 --center-area-threshold 2000 "
        "--out results/bundle --zip results/bundle.zip (docs/bundle.md)"
    )
    parser.add_argument(
        "--checkpoints",
        required=True,
        type=Path,
        nargs="+",
        help="final.pt of every fold of every submission member (results/models/MODEL/foldK/final.pt); the "
        "members are their models in order of first appearance, each with all its folds",
    )
    parser.add_argument(
        "--thresholds", required=True, type=Path, help="the per-class thresholds (results/thresholds.csv)"
    )
    parser.add_argument(
        "--train-index",
        required=True,
        type=Path,
        nargs="+",
        help="index.csv of each training dataset in config order (results/DATASET/index.csv): provenance digest",
    )
    parser.add_argument("--image-sizes", required=True, type=int, nargs="+", help="preprocess.image_sizes")
    cells = parser.add_argument_group("task hpa2021-cells only (the run's config keys)")
    cells.add_argument("--crop-image-sizes", type=int, nargs="+", default=[], help="preprocess.crop_image_sizes")
    cells.add_argument("--crop-size", type=int, help="preprocess.crop_size")
    cells.add_argument("--segment-backend", choices=("classical", "hpacellseg"), help="segment.backend")
    cells.add_argument("--segment-source", help="segment.inputs.test.source: original or an image size")
    cells.add_argument("--segment-scale-factor", type=float, help="segment.inputs.test.scale_factor")
    cells.add_argument("--nuclei-model", help="hpacellseg: its nuclei weight file (the bundle keeps the name)")
    cells.add_argument("--nuclei-model-sha256", help="hpacellseg: that file's sha256")
    cells.add_argument("--cell-model", help="hpacellseg: its cell weight file (the bundle keeps the name)")
    cells.add_argument("--cell-model-sha256", help="hpacellseg: that file's sha256")
    cells.add_argument("--edge-area-threshold", type=float, help="submission.edge_area_threshold")
    cells.add_argument("--center-area-threshold", type=float, help="submission.center_area_threshold")
    parser.add_argument("--out", required=True, type=Path, help="the bundle folder to write (replaced whole)")
    parser.add_argument("--zip", type=Path, help="also write the bundle as this zip (same bytes for the same inputs)")


@subcommand(
    "bundle",
    "write a trained run as one portable, verifiable bundle: manifest.yaml and safetensors weights (and a zip)",
    _bundle_arguments,
)
def _bundle(args: argparse.Namespace) -> None:
    from hpa_pipeline.bundle import write_bundle

    segment = None
    if args.segment_backend is not None:
        segment = {
            "backend": args.segment_backend,
            "source": args.segment_source,
            "scale_factor": args.segment_scale_factor,
        }
        if args.segment_backend == "hpacellseg":
            for key in ("nuclei_model", "nuclei_model_sha256", "cell_model", "cell_model_sha256"):
                segment[key] = getattr(args, key)
    write_bundle(
        args.out,
        args.checkpoints,
        args.thresholds,
        args.train_index,
        args.image_sizes,
        crop_image_sizes=args.crop_image_sizes,
        crop_size=args.crop_size,
        segment=segment,
        edge_area_threshold=args.edge_area_threshold,
        center_area_threshold=args.center_area_threshold,
        zip_path=args.zip,
    )
    log.info("bundle -> %s%s", args.out, f" and {args.zip}" if args.zip else "")


# ---------------------------------------------------------------------------------------------- zoo


def _export_bioimageio_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="the model's name (results/models/MODEL of the run); an image model of task hpa2018-images"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=Path("."), help="the workflow's folder, holding results/ (default: .)"
    )
    parser.add_argument("--fold", type=int, default=0, help="the fold whose final.pt is exported (default: 0)")
    parser.add_argument(
        "--images",
        type=Path,
        help="images store whose first image is the package's test input "
        "(default: RUN_DIR/results/test/images_{S}/shard-0.zarr, S the model's image_size)",
    )
    parser.add_argument(
        "--author",
        action="append",
        default=[],
        help="an author of the package (repeat for several; default: hpa-pipeline)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="the package: a .zip (the zoo's upload format), or any other name for a folder",
    )


@subcommand(
    "export-bioimageio",
    "write a trained 2018-task image model as a BioImage Model Zoo package (validated and test-run)",
    _export_bioimageio_arguments,
)
def _export_bioimageio(args: argparse.Namespace) -> None:
    from hpa_pipeline.zoo.bioimageio import export_bioimageio

    export_bioimageio(
        args.model, args.out, run_dir=args.run_dir, fold=args.fold, images=args.images, authors=args.author or None
    )


# ------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from hpa_pipeline import __version__

    parser = argparse.ArgumentParser(prog="hpa-pipeline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (handler, add_arguments, help_text) in _COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(handler=handler)
    return parser


# ----------------------------------------------------------------------------------------- annotate


def _annotate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="a bundle folder or .zip (hpa-pipeline bundle)")
    parser.add_argument(
        "--input-dir", required=True, type=Path, help="folder of {ID}_{red,green,blue,yellow}.png|tif|jpg files"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the tables, OME-Zarr images, overviews")
    parser.add_argument(
        "--images-per-shard", type=int, default=16, help="images segmented and predicted together (memory)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch and OpenCV")
    parser.add_argument(
        "--segment-weights", type=Path, help="hpacellseg bundles: the folder holding the weight files it names"
    )


@subcommand(
    "annotate",
    "annotate a folder of new images with a bundle: per-cell tables, OME-Zarr, overviews",
    _annotate_arguments,
)
def _annotate(args: argparse.Namespace) -> None:
    from hpa_pipeline.annotate.engine import annotate_folder
    from hpa_pipeline.bundle import load_bundle

    bundle = load_bundle(args.bundle, extract_to=args.out / ".bundle" if args.bundle.suffix == ".zip" else None)
    summary = annotate_folder(
        bundle,
        args.input_dir,
        args.out,
        images_per_shard=args.images_per_shard,
        device=args.device,
        threads=args.threads,
        segment_weights_dir=args.segment_weights,
    )
    stages = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in summary.seconds.items())
    log.info("seconds per stage: %s", stages or "nothing to do")


# The workflow's annotate mode (rules/annotate.smk): the engine's steps as one job each.


def _index_folder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, help="folder of {ID}_{red,green,blue,yellow} files")
    parser.add_argument("--images-per-shard", required=True, type=int)
    parser.add_argument("--dataset", required=True, help="the dataset's name")
    parser.add_argument("--out", required=True, type=Path, help="the folder's index.csv")
    parser.add_argument("--out-shards", required=True, type=Path, nargs="+", help="one index per shard, in order")


@subcommand(
    "index-folder", "index a folder of images without a table: sorted IDs, consecutive shards", _index_folder_arguments
)
def _index_folder(args: argparse.Namespace) -> None:
    from hpa_pipeline.data.index import write_folder_index

    index = write_folder_index(args.images, args.images_per_shard, args.dataset, args.out, args.out_shards)
    log.info("%d images in %d shards", len(index), len(args.out_shards))


def _prepare_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="a bundle folder or .zip")
    parser.add_argument("--out", required=True, type=Path, help="the verified copy (a folder)")


@subcommand("prepare-bundle", "verify a bundle and put a copy of it (extracted) in place", _prepare_bundle_arguments)
def _prepare_bundle(args: argparse.Namespace) -> None:
    from hpa_pipeline.bundle import copy_bundle

    copy_bundle(args.bundle, args.out)


def _annotate_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="the verified bundle folder (prepare-bundle)")
    parser.add_argument("--member", required=True, help="the member's name")
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--index", required=True, type=Path, help="the shard's index (its images in order)")
    parser.add_argument("--cells", type=Path, nargs="*", default=[], help="the shard's cell table (cells task)")
    parser.add_argument("--images", type=Path, nargs="*", default=[], help="images store (image models)")
    parser.add_argument("--masks", type=Path, nargs="*", default=[], help="resized masks store (image models)")
    parser.add_argument("--crops", type=Path, nargs="*", default=[], help="crops store (cell models)")
    parser.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: the workflow's predict_device, else auto)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)


@subcommand(
    "annotate-predict", "predict one shard with one bundle member's fold and its TTA", _annotate_predict_arguments
)
def _annotate_predict(args: argparse.Namespace) -> None:
    from hpa_pipeline.annotate.engine import predict_member_shard
    from hpa_pipeline.bundle import load_bundle
    from hpa_pipeline.settings import ModelData

    data = ModelData(
        index_paths=[args.index],
        folds_paths=[],
        cells_paths=args.cells,
        images_paths=args.images,
        masks_paths=args.masks,
        crops_paths=args.crops,
    )
    device = _device(args.device, "predict_device")
    predict_member_shard(load_bundle(args.bundle), args.member, args.fold, data, args.out, device, args.threads)


def _annotate_shard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="the verified bundle folder (prepare-bundle)")
    parser.add_argument("--input-dir", required=True, type=Path, help="the original images")
    parser.add_argument("--index", required=True, type=Path, help="the shard's index (its images in order)")
    parser.add_argument(
        "--predictions", required=True, type=Path, nargs="+", help="every member's folds, in the bundle's order"
    )
    parser.add_argument("--cells", type=Path, help="the shard's cell table store (cells task)")
    parser.add_argument("--masks", type=Path, help="the shard's segmentation store (cells task)")
    parser.add_argument("--images-per-shard", required=True, type=int, help="the run's shard size (its run key)")
    parser.add_argument("--out", required=True, type=Path, help="the shard's annotation folder")


@subcommand(
    "annotate-shard",
    "average a shard's predictions, scale by area and write its images' annotations",
    _annotate_shard_arguments,
)
def _annotate_shard(args: argparse.Namespace) -> None:
    from hpa_pipeline.annotate.engine import annotate_shard
    from hpa_pipeline.bundle import load_bundle

    annotate_shard(
        load_bundle(args.bundle),
        args.input_dir,
        args.index,
        args.predictions,
        args.out,
        images_per_shard=args.images_per_shard,
        cells_path=args.cells,
        masks_path=args.masks,
    )


def _annotate_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="the verified bundle folder (prepare-bundle)")
    parser.add_argument("--input-dir", required=True, type=Path, help="the original images")
    parser.add_argument("--index", required=True, type=Path, help="the folder's index")
    parser.add_argument("--shards", required=True, type=Path, nargs="+", help="every shard's annotation folder")
    parser.add_argument("--images-per-shard", required=True, type=int, help="the run's shard size (its run key)")
    parser.add_argument("--out", required=True, type=Path, help="the annotations folder (the layout of annotate's)")


@subcommand(
    "annotate-merge", "join the shards' annotations into tables, AnnData and a gallery", _annotate_merge_arguments
)
def _annotate_merge(args: argparse.Namespace) -> None:
    from hpa_pipeline.annotate.engine import merge_shards
    from hpa_pipeline.bundle import load_bundle

    merge_shards(
        load_bundle(args.bundle),
        args.input_dir,
        args.index,
        args.shards,
        args.out,
        images_per_shard=args.images_per_shard,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a user error prints one clear line and exits with status 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.handler(args)
    except PipelineError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
