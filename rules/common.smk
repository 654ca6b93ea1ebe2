# Paths, shard lists, model inputs and config checks shared by every rule module.
# Two modes (see the Snakefile): training, the default, and annotate, a config with `annotate` (a trained
# bundle applied to a folder of new images, rules/annotate.smk). The preprocessing rules serve both, with
# the names below set per mode.
import os
import re

from snakemake.exceptions import WorkflowError

from hpa_pipeline.annotate.plan import count_shards, member_plans, store_sizes
from hpa_pipeline.bundle import read_manifest
from hpa_pipeline.config import (
    ANNOTATE,
    annotate_hpacellseg_weights,
    check_annotate_config,
    check_config,
    check_input_paths,
    download_settings,
    ensemble_method,
    ensemble_stage,
    export_job_settings,
    model_stage,
    resolve_model,
    settings_json,
    stage_submissions,
    task_of,
    train_datasets,
)
from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.nets.devices import share_gpus
from hpa_pipeline.settings import model_stores

ANNOTATE_MODE = ANNOTATE in config
try:
    if ANNOTATE_MODE:
        check_annotate_config(config)
    else:
        check_config(config)
        check_input_paths(config)
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}")


def _annotate_plan(key, plan, *args):
    """What the annotate mode plans from its bundle's manifest or its folder's listing; an error names the key."""
    try:
        return plan(*args)
    except ConfigError as error:
        raise WorkflowError(f"invalid configuration: {error}")
    except InputDataError as error:
        raise WorkflowError(f"invalid configuration: {ANNOTATE}.{key}: {error}")


if ANNOTATE_MODE:
    # The annotated images form one dataset of the preprocessing rules; the bundle's manifest says the task,
    # the sizes each store is needed at, the crops and the segmentation (read without hashing any weight).
    ANNOTATE_DATASET = "annotate"
    ANNOTATE_SETTINGS = config[ANNOTATE]  # with the schema's defaults (images_per_shard, out_dir) filled in
    ANNOTATE_INPUT_DIR = str(ANNOTATE_SETTINGS["input_dir"]).rstrip("/")
    MANIFEST = _annotate_plan("bundle", read_manifest, ANNOTATE_SETTINGS["bundle"])
    ANNOTATE_SHARDS = _annotate_plan(
        "input_dir", count_shards, ANNOTATE_INPUT_DIR, ANNOTATE_SETTINGS["images_per_shard"]
    )
    ANNOTATE_MEMBERS = {member.name: member for member in member_plans(MANIFEST)}
    TRAIN_DATASETS = []
    DATASETS = [ANNOTATE_DATASET]
    EXTRA_SETS = {}
    TASK = MANIFEST["task"]
    IMAGE_TASK = TASK == "hpa2018-images"
    STORE_SIZES = store_sizes(MANIFEST)
    IMAGE_SIZES = list(STORE_SIZES.images)
    MASK_SIZES = list(STORE_SIZES.masks)
    CROP_IMAGE_SIZES = list(STORE_SIZES.crops)
    CROP_SIZE = MANIFEST["preprocess"].get("crop_size")
    ANNOTATE_SEGMENT = MANIFEST.get("segment") or {}
    SEGMENT_BACKEND = ANNOTATE_SEGMENT.get("backend", "classical")
    HPACELLSEG_WEIGHTS = (
        _annotate_plan("segment_weights", annotate_hpacellseg_weights, config, ANNOTATE_SEGMENT)
        if SEGMENT_BACKEND == "hpacellseg"
        else {}
    )
    MODELS = ENSEMBLES = STAGE_SUBMISSIONS = {}
else:
    INPUT_DIR = config["input_dir"].rstrip("/")
    TRAIN_DATASETS = train_datasets(config)
    DATASETS = TRAIN_DATASETS + ["test"]
    EXTRA_SETS = config.get("extra_train_sets") or {}
    # hpa2021-cells (per-cell predictions) or hpa2018-images (image labels only: no segmentation, masks or crops)
    TASK = task_of(config)
    IMAGE_TASK = TASK == "hpa2018-images"
    IMAGE_SIZES = [int(size) for size in config["preprocess"]["image_sizes"]]
    MASK_SIZES = IMAGE_SIZES
    CROP_IMAGE_SIZES = [int(size) for size in config["preprocess"].get("crop_image_sizes", [])]
    CROP_SIZE = config["preprocess"].get("crop_size")
    SEGMENT_BACKEND = (config.get("segment") or {}).get("backend", "classical")
    HPACELLSEG_WEIGHTS = (config.get("segment") or {}).get("hpacellseg") or {}
    MODELS = config.get("models") or {}
    ENSEMBLES = config.get("ensembles") or {}
    SUBMISSION = config["submission"]
    # How ensembles and the submission combine their members (docs/ensembles.md). With mean, the default, the
    # rules' commands and params are those of runs made before the key existed: nothing reruns.
    ENSEMBLE_METHOD = ensemble_method(config)
    # What each ensemble and each submission member alone would submit: name -> members
    STAGE_SUBMISSIONS = stage_submissions(config)
    TRUTH_DIR = config.get("truth_dir")
    N_FOLDS = config["folds"]["n_folds"]
    DUPLICATES = config.get("duplicates") or {}
    FOLDS = list(range(N_FOLDS))
DUPLICATE_GROUPS = "results/duplicates/groups.csv"
SEGMENT_GPU = 1 if SEGMENT_BACKEND == "hpacellseg" else 0
# only the hpacellseg backend needs the environment that installs HPA's package (from GitHub)
SEGMENT_ENV = "../envs/segment.yaml" if SEGMENT_BACKEND == "hpacellseg" else "../envs/pipeline.yaml"
# Settings that change how jobs run, not what they compute (GPU sharing, devices, download workers, retries
# and timeout, a model's compile, channels_last and predict_batch_size) reach the jobs through the
# environment, not as params: Snakemake reruns a job whose params change, and everything below it.
share_gpus(config.get("jobs_per_gpu", 1))
export_job_settings(config)
# Threads of the training and prediction jobs: a job setting too (threads are no rerun trigger).
MODEL_THREADS = config["model_threads"]


def _alternatives(names):
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    model=_alternatives(MODELS),
    ensemble=_alternatives(ENSEMBLES),
    member=_alternatives(ANNOTATE_MEMBERS if ANNOTATE_MODE else []),
    stage=_alternatives(STAGE_SUBMISSIONS),
    size=r"\d+",
    shard=r"\d+",
    fold=r"\d+",


# ------------------------------------------------------------------------------------ datasets


def image_dir(dataset):
    if ANNOTATE_MODE:
        return ANNOTATE_INPUT_DIR
    if dataset in EXTRA_SETS:
        return EXTRA_SETS[dataset]["images"]
    return f"{INPUT_DIR}/{dataset}"


def downloads(dataset):
    """True for an extra set whose images and table rule download_extra_set writes."""
    return "download" in EXTRA_SETS.get(dataset, {})


def download_table(dataset):
    return f"results/{dataset}/download/labels.csv"


def download_failures(dataset):
    return f"results/{dataset}/download/failed.csv"


def image_dir_input(wildcards):
    """What a job that reads a dataset's original images depends on: the folder, or for a downloaded set
    the download's table. A download's folder is not an output of the download, because Snakemake deletes
    the outputs of a failed job, and the folder must keep what was fetched for the next try."""
    if downloads(wildcards.dataset):
        return download_table(wildcards.dataset)
    return image_dir(wildcards.dataset)


def download_tsv_input(dataset):
    tsv = download_settings(config, dataset)["tsv"]
    return [] if re.match(r"https?://", tsv) else tsv


def download_options(dataset):
    """What the download fetches; its workers, retries and timeout are job settings (export_job_settings)."""
    settings = download_settings(config, dataset)
    options = f"--tsv {settings['tsv']} --base-url {settings['base_url']} --format {settings['format']} "
    options += f"--max-failed-fraction {settings['max_failed_fraction']}"
    if settings["source"] != "hpa2021":  # the CLI's default: 2021 params stay as they were, nothing reruns
        options += f" --source {settings['source']}"
    if settings["limit"]:
        options += f" --limit {settings['limit']}"
    return options


def label_table(dataset):
    if downloads(dataset):
        return download_table(dataset)
    if dataset in EXTRA_SETS:
        return EXTRA_SETS[dataset]["table"]
    return f"{INPUT_DIR}/{'sample_submission.csv' if dataset == 'test' else 'train.csv'}"


def datasets_before(dataset):
    """The datasets an extra set's IDs are checked against: train, test and the extra sets before it."""
    if dataset not in EXTRA_SETS:
        return []
    return ["train", "test", *TRAIN_DATASETS[1 : TRAIN_DATASETS.index(dataset)]]


def earlier_train_datasets(dataset):
    return TRAIN_DATASETS[: TRAIN_DATASETS.index(dataset)]


def index_kind(dataset):
    return "test" if dataset == "test" else "train"


def n_shards(dataset):
    if ANNOTATE_MODE:
        return ANNOTATE_SHARDS
    if dataset in EXTRA_SETS:
        return EXTRA_SETS[dataset]["shards"]
    return config["shards"][dataset]


def shards(dataset):
    return range(n_shards(dataset))


def index_csv(dataset):
    return f"results/{dataset}/index.csv"


def folds_csv(dataset):
    return f"results/folds/{dataset}.csv"


def images_store(dataset, size, shard):
    return f"results/{dataset}/images_{size}/shard-{shard}.zarr"


def masks_store(dataset, shard):
    return f"results/{dataset}/masks/shard-{shard}.zarr"


def resized_masks_store(dataset, size, shard):
    return f"results/{dataset}/masks_{size}/shard-{shard}.zarr"


def cells_store(dataset, shard):
    return f"results/{dataset}/cells/shard-{shard}.zarr"


def crops_store(dataset, size, shard):
    return f"results/{dataset}/crops_{size}/shard-{shard}.zarr"


def all_shards(path_of, datasets, *args):
    """One path per shard of every dataset, datasets in the given order."""
    return [path_of(dataset, *args, shard) for dataset in datasets for shard in shards(dataset)]


def segment_settings(dataset):
    if ANNOTATE_MODE:
        return ANNOTATE_SEGMENT
    return config["segment"]["inputs"]["test" if dataset == "test" else "train"]


def segment_source_input(wildcards):
    source = segment_settings(wildcards.dataset)["source"]
    if source == "original":
        return image_dir_input(wildcards)
    return images_store(wildcards.dataset, source, wildcards.shard)


def segment_source_option(wildcards):
    """The segment command's option naming what it reads, with the path."""
    source = segment_settings(wildcards.dataset)["source"]
    if source == "original":
        return f"--images-dir {image_dir(wildcards.dataset)}"
    return f"--images-store {images_store(wildcards.dataset, source, wildcards.shard)}"


def hpacellseg_options():
    if SEGMENT_BACKEND != "hpacellseg":
        return ""
    weights = HPACELLSEG_WEIGHTS
    return (
        f"--nuclei-model {weights['nuclei_model']} --nuclei-model-sha256 {weights['nuclei_model_sha256']} "
        f"--cell-model {weights['cell_model']} --cell-model-sha256 {weights['cell_model_sha256']}"
    )


def hashes_csv(dataset, shard):
    return f"results/{dataset}/hashes/shard-{shard}.csv"


def hash_options(wildcards, input):
    """DATASET=CSV for every shard's hash table."""
    return " ".join(f"{dataset}={hashes_csv(dataset, shard)}" for dataset in DATASETS for shard in shards(dataset))


def preprocess_outputs():
    outputs = [DUPLICATE_GROUPS] if DUPLICATES else []
    if IMAGE_TASK:
        return outputs + [path for size in IMAGE_SIZES for path in all_shards(images_store, DATASETS, size)]
    for dataset in DATASETS:
        for shard in shards(dataset):
            outputs.append(cells_store(dataset, shard))
            outputs += [resized_masks_store(dataset, size, shard) for size in IMAGE_SIZES]
            outputs += [images_store(dataset, size, shard) for size in IMAGE_SIZES]
            outputs += [crops_store(dataset, size, shard) for size in CROP_IMAGE_SIZES]
    return outputs


# -------------------------------------------------------------------------------------- models


def model_settings(name):
    return resolve_model(config, name)


def model_settings_json(wildcards):
    """The model's resolved settings without its job settings (compile, ...: export_job_settings)."""
    return settings_json(model_settings(wildcards.model))


# Each path helper also makes the rules' output patterns when given wildcards, e.g. model_dir("{model}", "{fold}").


def model_dir(model, fold):
    return f"results/models/{model}/fold{fold}"


def model_file(model, fold, name):
    """A training output (final.pt, metrics.csv, run.yaml) or a prediction store (valid.zarr, test.zarr)."""
    return f"{model_dir(model, fold)}/{name}"


def checkpoint_dir(model, fold):
    return f"results/checkpoints/{model}/fold{fold}"


def oof_store(model):
    return f"results/models/{model}/oof.zarr"


def ensemble_store(name):
    return f"results/ensembles/{name}/oof.zarr"


def ensemble_weights(name):
    """The member weights of an ensemble (ensemble.method weights)."""
    return f"results/ensembles/{name}/weights.csv"


def combine_options(weights):
    """The options of a command that combines members by ensemble.method other than mean."""
    if ENSEMBLE_METHOD == "weights":
        return f"--method weights --weights {weights}"
    return f"--method {ENSEMBLE_METHOD}"


#: The per-dataset stores a model may read, by the names hpa_pipeline.settings.model_stores gives.
MODEL_STORE_PATHS = {"images": images_store, "masks": resized_masks_store, "crops": crops_store}


def model_data(model, datasets):
    """The stores a model reads for the given datasets: the cell tables and what its kind needs."""
    settings = model_settings(model)
    # the image-level task has no cell tables: its image models read the images only
    data = {} if IMAGE_TASK else {"cells": all_shards(cells_store, datasets)}
    for name in model_stores(settings["kind"], TASK):
        data[name] = all_shards(MODEL_STORE_PATHS[name], datasets, settings["image_size"])
    return data


def validation_inputs(wildcards):
    """What predicting a model's held-out fold reads: the training images' tables and stores."""
    return {
        "index": [index_csv(dataset) for dataset in TRAIN_DATASETS],
        "folds": [folds_csv(dataset) for dataset in TRAIN_DATASETS],
        **model_data(wildcards.model, TRAIN_DATASETS),
    }


def training_inputs(wildcards):
    """What training reads: the held-out-fold inputs plus pseudo labels and an init checkpoint."""
    settings = model_settings(wildcards.model)
    inputs = validation_inputs(wildcards)
    if settings.get("pseudo_labels"):
        inputs["pseudo_labels"] = ensemble_store(settings["pseudo_labels"])
    if settings.get("init_from"):
        inputs["init_checkpoint"] = model_file(settings["init_from"], wildcards.fold, "final.pt")
    return inputs


def test_inputs(wildcards):
    if IMAGE_TASK:  # without cell tables, the test index gives the images' order
        return {"index": [index_csv("test")], **model_data(wildcards.model, ["test"])}
    return model_data(wildcards.model, ["test"])


def data_options(wildcards, input):
    """Command-line options naming a model's input stores."""
    options = []
    for name in ("index", "folds", "cells", "images", "masks", "crops"):
        if name in input.keys():
            options.append(f"--{name} " + " ".join(input[name]))
    for name in ("pseudo_labels", "init_checkpoint"):
        if name in input.keys():
            options.append(f"--{name.replace('_', '-')} {input[name]}")
    return " ".join(options)


def model_outputs():
    """Out-of-fold predictions of every model and ensemble, test predictions of the submission's members."""
    outputs = [oof_store(model) for model in MODELS]
    outputs += [ensemble_store(name) for name in ENSEMBLES]
    return outputs + submission_predictions()


def submission_predictions():
    return test_predictions(SUBMISSION["members"])


def test_predictions(models):
    return [model_file(model, fold, "test.zarr") for model in models for fold in FOLDS]


# ---------------------------------------------------------------------------- submission and report
SUBMISSION_CSV = "results/submission.csv"
SUBMISSION_CHECK = "results/submission_check.json"
METRICS_JSON = "results/metrics.json"
METRICS_TSV = "results/metrics.tsv"
METRICS_PLOT = "results/report/metrics.png"
THRESHOLDS_CSV = "results/thresholds.csv"
IMAGE_PREDICTIONS_CSV = "results/image_predictions.csv"
THRESHOLDS = config.get("thresholds") or {"method": "f1", "value": 0.5}
SUBMISSION_WEIGHTS = "results/submission_weights.csv"


def member_oofs():
    return [oof_store(model) for model in SUBMISSION["members"]]


def stage_submission_csv(name):
    return f"results/stages/{name}/submission.csv"


def stage_submission_outputs():
    """Every stage submission (target stage_submissions); the image-level task has none."""
    if IMAGE_TASK:
        raise WorkflowError(
            "target stage_submissions: task hpa2018-images has no per-cell submission to build per stage; "
            "rule evaluate reports every model and ensemble"
        )
    return [stage_submission_csv(name) for name in STAGE_SUBMISSIONS]


def stage_submission_stage(name):
    return ensemble_stage(config, name) if name in ENSEMBLES else model_stage(config, name)


def stage_submission_inputs(wildcards):
    """A stage's members' test predictions of every fold, and its weights when the method fits them."""
    inputs = {"predictions": test_predictions(STAGE_SUBMISSIONS[wildcards.stage])}
    if ENSEMBLE_METHOD == "weights" and wildcards.stage in ENSEMBLES:
        inputs["weights"] = ensemble_weights(wildcards.stage)
    return inputs


def stage_submission_options(wildcards):
    """A member alone is its folds averaged (mean); an ensemble is combined like the submission."""
    if ENSEMBLE_METHOD == "mean" or wildcards.stage not in ENSEMBLES:
        return ""
    return combine_options(ensemble_weights(wildcards.stage))


def training_plot(model):
    return f"results/report/training/{model}.png"


def segmentation_plot(dataset):
    return f"results/report/segmentation/{dataset}.png"


def submission_outputs():
    outputs = [SUBMISSION_CSV, SUBMISSION_CHECK, IMAGE_PREDICTIONS_CSV]
    outputs += [training_plot(model) for model in MODELS]
    if not IMAGE_TASK:
        outputs += [segmentation_plot(dataset) for dataset in DATASETS]
    if TRUTH_DIR:
        outputs += [METRICS_JSON, METRICS_TSV, METRICS_PLOT]
    return outputs


def evaluation_options(wildcards, input):
    options = [f"--model {name} {model_stage(config, name)} {oof_store(name)}" for name in MODELS]
    options += [f"--ensemble {name} {ensemble_stage(config, name)} {ensemble_store(name)}" for name in ENSEMBLES]
    if "stage_submissions" in input.keys():
        options += [
            f"--stage-submission {name} {stage_submission_stage(name)} {stage_submission_csv(name)}"
            for name in STAGE_SUBMISSIONS
        ]
    return " ".join(options)


# ---------------------------------------------------------------------------------------------- bundle
BUNDLE_DIR = "results/bundle"
BUNDLE_ZIP = "results/bundle.zip"


def submission_checkpoints():
    """final.pt of every fold of every submission member, members in config order."""
    return [model_file(model, fold, "final.pt") for model in SUBMISSION["members"] for fold in FOLDS]


def bundle_checkpoints(wildcards):
    """The bundle's checkpoints; a bundle averages its members by mean, as annotate does."""
    if ENSEMBLE_METHOD != "mean":
        raise WorkflowError(
            f"target bundle: ensemble.method is {ENSEMBLE_METHOD}, a bundle averages its members by mean; "
            "build it with ensemble.method mean"
        )
    return submission_checkpoints()


def bundle_options():
    """What a bundle records of the config: the sizes and, in the per-cell task, the crops, the test set's
    segmentation (hpacellseg weights by name and sha256) and the area thresholds. No job settings."""
    options = ["--image-sizes", *map(str, IMAGE_SIZES)]
    if IMAGE_TASK:
        return " ".join(options)
    test = segment_settings("test")
    options += ["--crop-image-sizes", *map(str, CROP_IMAGE_SIZES), "--crop-size", str(config["preprocess"]["crop_size"])]
    options += ["--segment-backend", SEGMENT_BACKEND, "--segment-source", str(test["source"])]
    options += ["--segment-scale-factor", str(test["scale_factor"]), hpacellseg_options()]
    options += ["--edge-area-threshold", str(SUBMISSION["edge_area_threshold"])]
    options += ["--center-area-threshold", str(SUBMISSION["center_area_threshold"])]
    return " ".join(option for option in options if option)


# ------------------------------------------------------------------------------------------- annotate mode
ANNOTATE_BUNDLE_DIR = "results/annotate/bundle"


def annotate_out_dir():
    return ANNOTATE_SETTINGS["out_dir"].rstrip("/")


def annotate_shard_index(shard):
    """One shard's rows of the folder's index: the images a prediction or annotation job reads, in order."""
    return f"results/{ANNOTATE_DATASET}/index/shard-{shard}.csv"


def annotate_predictions(member, fold, shard):
    return f"results/{ANNOTATE_DATASET}/predictions/{member}/fold{fold}/shard-{shard}.zarr"


def annotate_shard_dir(shard):
    """A shard's annotations: its images' OME-Zarr, overview and table parts (merged into the out_dir)."""
    return f"results/{ANNOTATE_DATASET}/annotations/shard-{shard}"


def annotate_predict_inputs(wildcards):
    """What predicting one shard with one member reads: the shard's index and cell table, and the stores of
    the member's kind at its size (lists, the shape data_options joins)."""
    member = ANNOTATE_MEMBERS[wildcards.member]
    inputs = {"bundle": ANNOTATE_BUNDLE_DIR, "index": [annotate_shard_index(wildcards.shard)]}
    if not IMAGE_TASK:
        inputs["cells"] = [cells_store(ANNOTATE_DATASET, wildcards.shard)]
    for name in member.stores:
        inputs[name] = [MODEL_STORE_PATHS[name](ANNOTATE_DATASET, member.image_size, wildcards.shard)]
    return inputs


def annotate_shard_inputs(wildcards):
    """A shard's predictions of every member and fold (members in the bundle's order, the engine's averaging
    order) and, per cell, its cell table and segmentation."""
    inputs = {
        "bundle": ANNOTATE_BUNDLE_DIR,
        "index": annotate_shard_index(wildcards.shard),
        "predictions": [
            annotate_predictions(member.name, fold, wildcards.shard)
            for member in ANNOTATE_MEMBERS.values()
            for fold in range(member.n_folds)
        ],
    }
    if not IMAGE_TASK:
        inputs["cells"] = cells_store(ANNOTATE_DATASET, wildcards.shard)
        inputs["masks"] = masks_store(ANNOTATE_DATASET, wildcards.shard)
    return inputs


def annotate_cell_options(wildcards, input):
    """The cell table and segmentation options of a shard's annotation (none in task hpa2018-images)."""
    if IMAGE_TASK:
        return ""
    return f"--cells {input.cells} --masks {input.masks}"
