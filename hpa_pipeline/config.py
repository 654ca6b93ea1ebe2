"""The workflow configuration (read by rules/common.smk): cross-checks a JSON schema cannot express,
resolved model settings and stages.

The Snakefile validates the config against ``schemas/config.schema.yaml`` first (types, names, ranges)
and then calls :func:`check_config`, so every mistake is reported before any job starts, naming the key.
A model's *resolved settings* (its kind's defaults overlaid with its own keys) are the training rule's
params: changing one model retrains that model and what depends on it, and nothing else.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.labels import TASK_CELLS, TASK_IMAGES
from hpa_pipeline.settings import kind_only_settings, required_settings


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


def model_stage(config: dict[str, Any], name: str) -> int:
    """1 for a model without pseudo labels, else one more than its pseudo-label ensemble's stage."""
    pseudo = (config.get("models") or {})[name].get("pseudo_labels")
    return 1 if not pseudo else 1 + ensemble_stage(config, pseudo)


def ensemble_stage(config: dict[str, Any], name: str) -> int:
    """The highest stage among an ensemble's members."""
    return max(model_stage(config, member) for member in (config.get("ensembles") or {})[name])


def settings_json(settings: dict[str, Any]) -> str:
    """Canonical JSON of resolved settings (sorted keys), the form a rule passes to the package."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


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


def check_input_paths(config: dict[str, Any]) -> None:
    """Check the data folders the config names against the disk, before the DAG is built.

    Catches what a demo config copied for one's own data carries over: ``demo_data`` next to an
    ``input_dir`` of real images (the demo would write over them) and a ``truth_dir`` that no rule makes.
    Relative paths are taken from the working directory (the workflow's).

    Raises:
        ConfigError: one sentence naming the key and the fix.
    """
    import os

    from hpa_pipeline.io.folders import SYNTHETIC_MARKER, holds_real_images

    input_dir = str(config["input_dir"])
    demo = bool(config.get("demo_data"))
    if demo and holds_real_images(input_dir):
        raise ConfigError(
            f"demo_data is set, but input_dir {input_dir} holds images that the demo generator did not write "
            f"(no {SYNTHETIC_MARKER} file), so the demo would replace them: remove demo_data and truth_dir from "
            f"the config, or write a config for this folder with `hpa-pipeline init-config --input-dir {input_dir} "
            "--out my.yaml` (a demo dataset made before hpa-pipeline 0.2.0 has no marker: `make clean-demo`)"
        )
    truth_dir = config.get("truth_dir")
    if truth_dir:
        # rule make_demo_data writes input_dir/truth, so only then may the folder be missing at start-up
        made_by_demo = demo and os.path.normpath(truth_dir) == os.path.normpath(os.path.join(input_dir, "truth"))
        if not made_by_demo and not os.path.isdir(truth_dir):
            raise ConfigError(
                f"truth_dir: {truth_dir} does not exist and no rule makes it (only demo_data writes one, into "
                "input_dir/truth): remove truth_dir from the config unless you have per-cell truth for your images"
            )


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
    _check_models(config, sizes, [])


def _check_swa(settings: dict[str, Any], where: str) -> None:
    swa = settings.get("swa")
    if swa and "epochs" in settings and swa["start_epoch"] > settings["epochs"]:
        raise ConfigError(
            f"{where}.swa.start_epoch {swa['start_epoch']} is after its last epoch ({settings['epochs']})"
        )
