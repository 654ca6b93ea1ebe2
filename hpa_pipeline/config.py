"""The workflow configuration (read by rules/common.smk): cross-checks a JSON schema cannot express,
resolved model settings and stages.

The Snakefile validates the config against ``schemas/config.schema.yaml`` first (types, names, ranges)
and then calls :func:`check_config`, so every mistake is reported before any job starts, naming the key.
A model's *resolved settings* (its kind's defaults overlaid with its own keys) are the training rule's
params: changing one model retrains that model and what depends on it, and nothing else.

Settings that change only how a job runs (download workers, retries and timeout, devices, compile, ...)
are no rule params: Snakemake reruns a job whose params change, and everything below it. The workflow
puts them in its environment instead (:func:`export_job_settings`), which every job inherits (sbatch
passes it on), and the job reads them there (:func:`exported_job_settings`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.labels import TASK_CELLS, TASK_IMAGES
from hpa_pipeline.settings import MODEL_JOB_SETTINGS, kind_only_settings, required_settings


def train_datasets(config: dict[str, Any]) -> list[str]:
    """Names of the labelled datasets: ``train`` and every extra training set, in config order."""
    return ["train", *(config.get("extra_train_sets") or {})]


#: Defaults of an extra set's ``download`` block, the one place they are set: the schema gives none, the
#: CLI (``hpa-pipeline download-public``) and :func:`download_settings` read them here.
DOWNLOAD_DEFAULTS: dict[str, Any] = {
    "workers": 16,
    "retries": 4,
    "timeout": 60,
    "max_failed_fraction": 0.01,
    "limit": None,
}

#: The image lists a download reads (``download.source``): the task whose labels the list gives, the image
#: server (default ``base_url``) and the file types it may store (the first is the default ``format``).
DOWNLOAD_SOURCES: dict[str, dict[str, Any]] = {
    # kaggle_2021.tsv: 19-class labels, {Image URL}_{color}.tif.gz, 8 or 16 bit
    "hpa2021": {"task": TASK_CELLS, "base_url": "https://images.proteinatlas.org", "formats": ("tif", "png")},
    # HPAv18RGBY_WithoutUncertain_wodpl.csv (Id,Target): 28-class labels, {folder}/{name}_{color}.jpg,
    # stored as served (re-encoding would lose more)
    "hpa_v18": {"task": TASK_IMAGES, "base_url": "http://v18.proteinatlas.org/images", "formats": ("jpg",)},
}


def download_source(config: dict[str, Any], dataset: str) -> str:
    """The image list an extra set's download reads: its ``download.source``, else the task's own."""
    source = config["extra_train_sets"][dataset]["download"].get("source")
    if source:
        return source
    return next(name for name, spec in DOWNLOAD_SOURCES.items() if spec["task"] == task_of(config))


#: Keys of a ``download`` block that change how the download runs, not which images it writes.
DOWNLOAD_JOB_SETTINGS = ("workers", "retries", "timeout")

#: The environment variable that carries :func:`job_settings` from the workflow to its jobs.
JOB_SETTINGS_ENV = "HPA_PIPELINE_JOB_SETTINGS"


def download_settings(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The ``download`` block of extra set ``dataset`` with every default filled in."""
    source = download_source(config, dataset)
    spec = DOWNLOAD_SOURCES[source]
    return {
        **DOWNLOAD_DEFAULTS,
        "source": source,
        "base_url": spec["base_url"],
        "format": spec["formats"][0],
        **config["extra_train_sets"][dataset]["download"],
    }


def downloaded_sets(config: dict[str, Any]) -> list[str]:
    """Names of the extra sets that rule download_extra_set fetches."""
    return [name for name, settings in (config.get("extra_train_sets") or {}).items() if "download" in settings]


def job_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config's settings that change how its jobs run, never what they compute.

    Returns:
        ``{"downloads": {set: {workers, retries, timeout}}, "models": {model: {compile, channels_last,
        predict_batch_size}}, "train_device": ..., "segment_device": ...}``. A device changes at most the
        float rounding, and with ``auto`` (the default) it already depends on what the machine has free.
    """
    downloads = {}
    for name in downloaded_sets(config):
        settings = download_settings(config, name)
        downloads[name] = {key: settings[key] for key in DOWNLOAD_JOB_SETTINGS}
    models = {}
    for name in config.get("models") or {}:
        settings = resolve_model(config, name)
        models[name] = {key: settings[key] for key in MODEL_JOB_SETTINGS if key in settings}
    return {
        "downloads": downloads,
        "models": models,
        "train_device": config.get("train_device", "auto"),
        "segment_device": (config.get("segment") or {}).get("device", "auto"),
    }


def annotate_job_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The annotate mode's job settings: ``{"predict_device": ..., "segment_device": ...}`` (default auto)."""
    return {
        "predict_device": config.get("predict_device", "auto"),
        "segment_device": config.get("segment_device", "auto"),
    }


def export_job_settings(config: dict[str, Any]) -> None:
    """Put :func:`job_settings` (in the annotate mode :func:`annotate_job_settings`) into this process's
    environment, for the jobs it starts to inherit."""
    settings = annotate_job_settings(config) if ANNOTATE in config else job_settings(config)
    os.environ[JOB_SETTINGS_ENV] = json.dumps(settings, sort_keys=True)


def exported_job_settings() -> dict[str, Any]:
    """The job settings the workflow exported (``$HPA_PIPELINE_JOB_SETTINGS``); empty outside a workflow."""
    text = os.environ.get(JOB_SETTINGS_ENV, "").strip()
    if not text:
        return {}
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"${JOB_SETTINGS_ENV} is not valid JSON ({exc}); unset it outside the workflow") from exc
    if not isinstance(settings, dict):
        raise ConfigError(f"${JOB_SETTINGS_ENV} is not a JSON object; unset it outside the workflow")
    return settings


def resolve_model(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The full settings of one model: its kind's defaults overlaid with its own keys.

    Returns:
        A new dict with every setting, including ``name`` and the run's ``seed``.
    """
    models = config.get("models") or {}
    if name not in models:
        raise ConfigError(f"unknown model {name!r} (models: {', '.join(models) or 'none'})")
    own = models[name]
    kind = own["kind"]
    settings = copy.deepcopy((config.get("model_defaults") or {}).get(kind) or {})
    settings.update(copy.deepcopy(own))
    settings["name"] = name
    settings["seed"] = config["seed"]
    settings["n_folds"] = config["folds"]["n_folds"]
    settings["task"] = task_of(config)
    return settings


def ensemble_method(config: dict[str, Any]) -> str:
    """How ensembles and the submission combine their members (``ensemble.method``; default ``mean``)."""
    return (config.get("ensemble") or {}).get("method", "mean")


def stage_submissions(config: dict[str, Any]) -> dict[str, list[str]]:
    """Name -> members of every stage submission: each ensemble, then each submission member alone."""
    stages = {name: list(members) for name, members in (config.get("ensembles") or {}).items()}
    stages.update({member: [member] for member in config["submission"]["members"]})
    return stages


def model_stage(config: dict[str, Any], name: str) -> int:
    """1 for a model without pseudo labels, else one more than its pseudo-label ensemble's stage."""
    pseudo = (config.get("models") or {})[name].get("pseudo_labels")
    return 1 if not pseudo else 1 + ensemble_stage(config, pseudo)


def ensemble_stage(config: dict[str, Any], name: str) -> int:
    """The highest stage among an ensemble's members."""
    return max(model_stage(config, member) for member in (config.get("ensembles") or {})[name])


def settings_json(settings: dict[str, Any]) -> str:
    """Canonical JSON of resolved settings (sorted keys) without the job settings: the rule param that
    the package reads (the job settings reach the job through :func:`export_job_settings`)."""
    kept = {key: value for key, value in settings.items() if key not in MODEL_JOB_SETTINGS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


def check_config(config: dict[str, Any]) -> None:
    """Check cross-references between config keys.

    Raises:
        ConfigError: naming the offending key and what it should be.
    """
    _check_extra_sets(config)
    if task_of(config) == TASK_IMAGES:
        _check_image_task(config)
        return
    _check_cell_task(config)
    sizes = list(config["preprocess"]["image_sizes"])
    crop_sizes = list(config["preprocess"]["crop_image_sizes"])
    for size in crop_sizes:
        if size not in sizes:
            raise ConfigError(f"preprocess.crop_image_sizes: {size} is not one of preprocess.image_sizes {sizes}")
    for dataset, settings in config["segment"]["inputs"].items():
        source = settings["source"]
        if source != "original" and source not in sizes:
            raise ConfigError(
                f"segment.inputs.{dataset}.source: {source} is neither 'original' "
                f"nor one of preprocess.image_sizes {sizes}"
            )
    if config["segment"]["backend"] == "hpacellseg":
        weights = config["segment"].get("hpacellseg") or {}
        for key in ("nuclei_model", "nuclei_model_sha256", "cell_model", "cell_model_sha256"):
            if not weights.get(key):
                raise ConfigError(
                    f"segment.hpacellseg.{key} must be set when segment.backend is hpacellseg "
                    "(local weight files from Zenodo record 4665863 and their `sha256sum`)"
                )
    _check_models(config, sizes, crop_sizes)


def _check_extra_sets(config: dict[str, Any]) -> None:
    """Extra sets: a free name, a table or a download, and a download the task can read."""
    task = task_of(config)
    for extra, settings in (config.get("extra_train_sets") or {}).items():
        if extra in ("train", "test"):
            raise ConfigError(f"extra_train_sets.{extra}: the names train and test are taken")
        if ("table" in settings) == ("download" in settings):
            raise ConfigError(
                f"extra_train_sets.{extra}: give either `table` (a CSV in the task's train.csv format of images "
                "already in `images`) or `download` (fetch the images of a kaggle_2021.tsv or HPA v18 list into "
                "`images`), " + ("not both" if "table" in settings else "one of them")
            )
        if "download" not in settings:
            continue
        where = f"extra_train_sets.{extra}.download"
        source = download_source(config, extra)
        spec = DOWNLOAD_SOURCES[source]
        if spec["task"] != task:
            # the two tasks' class lists differ (19 and 28 classes) and no mapping between them is defined
            own = next(name for name, other in DOWNLOAD_SOURCES.items() if other["task"] == task)
            raise ConfigError(
                f"{where}.source: {source} lists labels of task {spec['task']}, this config's task is {task}; "
                f"use source {own}"
            )
        image_format = settings["download"].get("format", spec["formats"][0])
        if image_format not in spec["formats"]:
            raise ConfigError(
                f"{where}.format: {image_format} is not a file type of source {source} ({', '.join(spec['formats'])})"
            )


def _check_models(config: dict[str, Any], sizes: list[int], crop_sizes: list[int]) -> None:
    models = config.get("models") or {}
    ensembles = config.get("ensembles") or {}
    for name in models:
        settings = resolve_model(config, name)
        where = f"models.{name}"
        kind = settings["kind"]
        for key in required_settings():
            if key not in settings:
                raise ConfigError(f"{where}.{key} is not set (neither on the model nor in model_defaults.{kind})")
        foreign = sorted(set(settings) & kind_only_settings(kind))
        if foreign:
            raise ConfigError(
                f"{where}: {', '.join(foreign)} only apply to {'cell' if kind == 'image' else 'image'} models"
            )
        allowed = sizes if kind == "image" else crop_sizes
        if settings["image_size"] not in allowed:
            what = "preprocess.image_sizes" if kind == "image" else "preprocess.crop_image_sizes"
            raise ConfigError(f"{where}.image_size: {settings['image_size']} is not one of {what} {allowed}")
        if kind == "image":
            if "crop_size" not in settings:
                raise ConfigError(f"{where}.crop_size is not set (neither on the model nor in model_defaults.image)")
            if settings["crop_size"] > settings["image_size"]:
                raise ConfigError(
                    f"{where}.crop_size {settings['crop_size']} exceeds its image_size {settings['image_size']}"
                )
        init_from = settings.get("init_from")
        if init_from is not None:
            if init_from not in models:
                raise ConfigError(f"{where}.init_from: unknown model {init_from!r}")
            source = resolve_model(config, init_from)
            for key in ("kind", "backbone", "cosine_head"):
                if source.get(key) != settings.get(key):
                    raise ConfigError(
                        f"{where}.init_from: model {init_from!r} has {key} {source.get(key)!r}, "
                        f"{name!r} has {settings.get(key)!r}; a checkpoint only fits the same architecture"
                    )
        pseudo = settings.get("pseudo_labels")
        if pseudo is not None and pseudo not in ensembles:
            raise ConfigError(
                f"{where}.pseudo_labels: unknown ensemble {pseudo!r} (ensembles: {', '.join(ensembles) or 'none'})"
            )
    for name, members in ensembles.items():
        if name in models:
            raise ConfigError(
                f"ensembles.{name}: a model has this name; names must be unique across models and ensembles "
                f"(each names its stage submission, results/stages/{name}/submission.csv)"
            )
        for member in members:
            if member not in models:
                raise ConfigError(f"ensembles.{name}: unknown model {member!r}")
    submission = config.get("submission") or {}
    for member in submission.get("members", []):
        if member not in models:
            raise ConfigError(f"submission.members: unknown model {member!r}")
    _check_acyclic(config)


def _check_acyclic(config: dict[str, Any]) -> None:
    """Models depend on their init model and on their pseudo-label ensemble's members."""
    models = config.get("models") or {}
    ensembles = config.get("ensembles") or {}

    def dependencies(name: str) -> list[str]:
        settings = models[name]
        found = [settings["init_from"]] if settings.get("init_from") else []
        if settings.get("pseudo_labels"):
            found += ensembles[settings["pseudo_labels"]]
        return found

    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(
                f"models depend on each other in a cycle: {' -> '.join(cycle)} (via init_from / pseudo_labels)"
            )
        state[name] = 1
        for dependency in dependencies(name):
            visit(dependency, path + [name])
        state[name] = 2

    for name in models:
        visit(name, [])


#: What rule make_demo_data writes under input_dir besides the images: the truth, and with demo_data.n_public
#: the public-HPA mirror's list and server folder.
DEMO_TRUTH = "truth"
DEMO_PUBLIC_TABLE = "public_hpa/kaggle_2021.tsv"
DEMO_PUBLIC_SERVER = "public_hpa/server"


class _DataPath(NamedTuple):
    """A local path the config reads data from, besides input_dir."""

    owner: str  # the key to remove to drop it: truth_dir or extra_train_sets.NAME
    key: str
    path: str
    kind: str  # "dir" or "file" (must exist before the run), or "written" (a download writes it)
    fix: str  # what to do when it is missing


def _data_paths(config: dict[str, Any]) -> list[_DataPath]:
    paths = []
    if config.get("truth_dir"):
        fix = "remove truth_dir from the config unless you have truth for your images"
        paths.append(_DataPath("truth_dir", "truth_dir", str(config["truth_dir"]), "dir", fix))
    for name, settings in (config.get("extra_train_sets") or {}).items():
        owner = f"extra_train_sets.{name}"
        if "download" not in settings:
            fix = f"remove {owner} from the config, or point it at the set's ID,Label table and image folder"
            paths.append(_DataPath(owner, f"{owner}.table", str(settings["table"]), "file", fix))
            paths.append(_DataPath(owner, f"{owner}.images", str(settings["images"]), "dir", fix))
            continue
        download = download_settings(config, name)
        paths.append(_DataPath(owner, f"{owner}.images", str(settings["images"]), "written", ""))
        if not download["tsv"].lower().startswith(("http://", "https://")):
            fix = f"remove {owner} from the config, or point tsv at the public image list (a file or an http(s) URL)"
            paths.append(_DataPath(owner, f"{owner}.download.tsv", download["tsv"], "file", fix))
        if "://" not in download["base_url"]:
            fix = f"remove {owner} from the config, or leave base_url out for the HPA image server"
            paths.append(_DataPath(owner, f"{owner}.download.base_url", download["base_url"], "dir", fix))
    return paths


def _exists(data: _DataPath) -> bool:
    return data.kind == "written" or (os.path.isdir if data.kind == "dir" else os.path.isfile)(data.path)


def _made_by_demo(config: dict[str, Any], path: str) -> bool:
    """True for a path that rule make_demo_data writes (so it may be missing at start-up)."""
    demo = config.get("demo_data")
    if not demo:
        return False
    made = [DEMO_TRUTH] + ([DEMO_PUBLIC_TABLE, DEMO_PUBLIC_SERVER] if demo.get("n_public") else [])
    return os.path.normpath(path) in {os.path.normpath(os.path.join(config["input_dir"], name)) for name in made}


def _in_demo_folder(path: str) -> bool:
    """True for a path inside a dataset folder that the demo generator wrote."""
    from hpa_pipeline.io.folders import is_synthetic

    absolute = Path(path).absolute()
    return any(is_synthetic(folder) for folder in (absolute, *absolute.parents))


def _listing(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_input_paths(config: dict[str, Any]) -> None:
    """Check the data paths the config names against the disk, before the DAG is built.

    Catches what a demo config copied for one's own data carries over: ``demo_data`` next to an
    ``input_dir`` of real images (the demo would write over them), keys that name the demo's files
    (``truth_dir``, the demo's public set ``extra_train_sets.pubhpa``) and paths that no rule makes.
    Relative paths are taken from the working directory (the workflow's).

    Raises:
        ConfigError: one sentence naming the key(s) and the fix; following it gives a config that runs.
    """
    from hpa_pipeline.io.folders import SYNTHETIC_MARKER, holds_images, holds_real_images

    input_dir = str(config["input_dir"])
    real_images = holds_real_images(input_dir)
    paths = _data_paths(config)
    if config.get("demo_data") and real_images:
        # without demo_data, what it makes is missing; what it made is synthetic: both go with it
        demo_keys = [data.owner for data in paths if not _exists(data) or _in_demo_folder(data.path)]
        keys = list(dict.fromkeys(["demo_data", *demo_keys]))
        raise ConfigError(
            f"demo_data is set, but input_dir {input_dir} holds images that the demo generator did not write "
            f"(no {SYNTHETIC_MARKER} file), so the demo would replace them: remove {_listing(keys)} from the "
            f"config (the demo's data), or write a config for this folder with `hpa-pipeline init-config "
            f"--input-dir {input_dir} --out my.yaml` (a demo dataset made before hpa-pipeline 0.2.0 has no "
            "marker: `make clean-demo`)"
        )
    if real_images:
        synthetic = [data for data in paths if _in_demo_folder(data.path)]
        if synthetic:
            owners = list(dict.fromkeys(data.owner for data in synthetic))
            raise ConfigError(
                f"{_listing([f'{data.key} ({data.path})' for data in synthetic])} lie in the demo's synthetic "
                f"data (a folder the demo generator wrote), but input_dir {input_dir} holds your own images: "
                f"remove {_listing(owners)} from the config"
            )
    if not config.get("demo_data") and not holds_images(input_dir):
        return  # no data yet (a fresh checkout of the full config): linting and listing rules still work
    for data in paths:
        if not _exists(data) and not _made_by_demo(config, data.path):
            made = {"truth_dir": DEMO_TRUTH, "tsv": DEMO_PUBLIC_TABLE, "base_url": DEMO_PUBLIC_SERVER}
            what = made.get(data.key.rsplit(".", 1)[-1])
            only_demo = f" (only demo_data writes one, into input_dir/{what})" if what else ""
            raise ConfigError(f"{data.key}: {data.path} does not exist and no rule makes it{only_demo}: {data.fix}")


# ---------------------------------------------------------------------------------------- annotate mode

#: The key of the annotate mode's config (configs/annotate.yaml, schemas/annotate.schema.yaml): a trained
#: bundle applied to a folder of new images. A config with it has none of the training keys.
ANNOTATE = "annotate"

#: The annotate mode's paths that must exist before anything runs, and what each should be.
_ANNOTATE_PATHS = (
    ("bundle", os.path.exists, "a bundle folder or .zip (`snakemake bundle` writes results/bundle.zip)"),
    ("input_dir", os.path.isdir, "a folder of {ID}_{red,green,blue,yellow}.png|tif|jpg files"),
    ("segment_weights", os.path.isdir, "the folder of the hpacellseg weight files the bundle names"),
)


def check_annotate_config(config: dict[str, Any]) -> None:
    """Check the annotate mode's paths against the disk, before the DAG is built (relative paths from the
    working directory, the workflow's).

    Raises:
        ConfigError: naming the key and the path that does not exist.
    """
    settings = config[ANNOTATE]
    for key, exists, what in _ANNOTATE_PATHS:
        path = settings.get(key)
        if path is not None and not exists(str(path)):
            raise ConfigError(f"{ANNOTATE}.{key}: {path} does not exist; give {what}")


def annotate_hpacellseg_weights(config: dict[str, Any], segment: dict[str, Any]) -> dict[str, str]:
    """The hpacellseg weight files of a bundle's segmentation (``segment``: the manifest's, by file name and
    sha256) in ``annotate.segment_weights``, keyed as the training config's ``segment.hpacellseg``.

    Raises:
        ConfigError: ``annotate.segment_weights`` is not set.
    """
    folder = config[ANNOTATE].get("segment_weights")
    if not folder:
        raise ConfigError(
            f"{ANNOTATE}.segment_weights: the bundle segments with hpacellseg; name the folder of its weight "
            f"files ({segment['nuclei_model']}, {segment['cell_model']}; Zenodo record 4665863)"
        )
    return {
        "nuclei_model": str(Path(folder) / segment["nuclei_model"]),
        "nuclei_model_sha256": segment["nuclei_model_sha256"],
        "cell_model": str(Path(folder) / segment["cell_model"]),
        "cell_model_sha256": segment["cell_model_sha256"],
    }


# ------------------------------------------------------------------------------------------- tasks

#: Keys of the per-cell task that the image-level task has no use for (it has no cells).
CELL_TASK_KEYS = (
    "segment",
    "preprocess.crop_image_sizes",
    "preprocess.crop_size",
    "submission.edge_area_threshold",
    "submission.center_area_threshold",
)


def task_of(config: dict[str, Any]) -> str:
    """The config's task: ``hpa2021-cells`` (the default) or ``hpa2018-images``."""
    return config.get("task") or TASK_CELLS


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _check_cell_task(config: dict[str, Any]) -> None:
    """The per-cell task needs segmentation, crops and area thresholds, and CAM heads on whole images."""
    for key in CELL_TASK_KEYS:
        if _lookup(config, key) is None:
            raise ConfigError(f"{key} is required by task {TASK_CELLS}")
    for name in config.get("models") or {}:
        settings = resolve_model(config, name)
        if settings.get("head", "cam") != "cam":
            raise ConfigError(
                f"models.{name}.head: {settings['head']} gives no class activation map, and task {TASK_CELLS} "
                "pools the CAM over each cell; use head cam (gap_gmp is for task hpa2018-images)"
            )
        if settings.get("tta_crops"):
            raise ConfigError(
                f"models.{name}.tta_crops: task {TASK_CELLS} predicts cells on the whole image; "
                "random-crop TTA is for task hpa2018-images (use tta: 1..8 D4 views)"
            )
        _check_swa(settings, f"models.{name}")


def _check_image_task(config: dict[str, Any]) -> None:
    """The image-level task: no segmentation, masks or crops; image models on whole images only."""
    for key in CELL_TASK_KEYS:
        if _lookup(config, key) is not None:
            raise ConfigError(f"{key}: task {TASK_IMAGES} has no cells (no segmentation, masks or crops); remove it")
    if (config.get("demo_data") or {}).get("empty_test_images"):
        raise ConfigError(f"demo_data.empty_test_images: task {TASK_IMAGES} has no cells, so no image without cells")
    sizes = list(config["preprocess"]["image_sizes"])
    models = config.get("models") or {}
    for name in models:
        settings = resolve_model(config, name)
        where = f"models.{name}"
        if settings["kind"] != "image":
            raise ConfigError(
                f"{where}.kind: {settings['kind']} models classify cell crops; task {TASK_IMAGES} has none"
            )
        if settings.get("pseudo_labels"):
            raise ConfigError(f"{where}.pseudo_labels: pseudo labels are per-cell targets; task {TASK_IMAGES} has none")
        if "consistency_weight" in settings:
            raise ConfigError(
                f"{where}.consistency_weight (on the model or in model_defaults.image): the cell consistency "
                f"loss needs cells; task {TASK_IMAGES} has none"
            )
        _check_swa(settings, where)
    method = ensemble_method(config)
    if method != "mean":
        raise ConfigError(
            f"ensemble.method: {method} needs task {TASK_CELLS}; task {TASK_IMAGES} combines its members by mean "
            "(its thresholds are fitted on the members' mean)"
        )
    _check_models(config, sizes, [])


def _check_swa(settings: dict[str, Any], where: str) -> None:
    swa = settings.get("swa")
    if swa and "epochs" in settings and swa["start_epoch"] > settings["epochs"]:
        raise ConfigError(
            f"{where}.swa.start_epoch {swa['start_epoch']} is after its last epoch ({settings['epochs']})"
        )
