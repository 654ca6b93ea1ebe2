"""A model's settings, defined once, and the stores each kind of model reads.

:class:`ModelSettings` is the one definition of a model's settings: the workflow passes a model's
resolved settings to ``hpa-pipeline train`` / ``predict`` as JSON, and the config schema's
``$defs.model_settings`` is generated from the fields' metadata (:func:`model_settings_schema`;
``tests/test_settings.py`` checks that ``schemas/config.schema.yaml`` holds exactly that).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.labels import TASK_CELLS, TASK_IMAGES, TASKS

#: Keys the workflow adds to a model's own settings (they are not config keys of a model).
RESOLVED_KEYS = ("name", "seed", "n_folds", "task")

#: Settings that change how a model's jobs run, not what they compute: the workflow hands them to its jobs
#: outside the rule params (:func:`hpa_pipeline.config.job_settings`), so changing one reruns nothing, and a
#: checkpoint is resumed across a change (:meth:`ModelSettings.digest` leaves them out). Each changes at most
#: the float rounding, as another GPU or thread count does. compile: the same training step through
#: torch.compile's fused kernels; channels_last: the memory layout on CUDA (none on the CPU);
#: predict_batch_size: images per forward pass at prediction, where each image's result is its own (eval mode).
MODEL_JOB_SETTINGS = ("compile", "channels_last", "predict_batch_size")

#: The losses a model may combine (``loss: {name: weight}``); see :mod:`hpa_pipeline.train.losses`.
LOSS_NAMES = ("bce", "focal", "lovasz_hinge", "hard_example")


def _setting(schema: dict[str, Any], default: Any = dataclasses.MISSING, kind: str | None = None) -> Any:
    """A settings field: its JSON schema and, for settings of one model kind only, that kind."""
    return field(default=default, metadata={"schema": schema, "kind": kind})


@dataclass(frozen=True)
class ModelSettings:
    """Everything that defines one model's training and prediction (defaults: the original's)."""

    name: str = _setting({"type": "string"})
    kind: str = _setting({"enum": ["image", "cell"]})
    backbone: str = _setting({"type": "string", "description": "a timm model name"})
    image_size: int = _setting(
        {
            "type": "integer",
            "minimum": 32,
            "description": "images (image models) or crops (cell models) of this size",
        }
    )
    epochs: int = _setting({"type": "integer", "minimum": 1})
    batch_size: int = _setting({"type": "integer", "minimum": 1})
    lr: float = _setting({"type": "number", "exclusiveMinimum": 0})
    seed: int = _setting({"type": "integer", "minimum": 0}, 0)
    n_folds: int = _setting({"type": "integer", "minimum": 2}, 5)
    task: str = _setting({"enum": list(TASKS)}, TASK_CELLS)
    crop_size: int | None = _setting(
        {"type": "integer", "minimum": 32, "description": "random training crop of image models"}, None, "image"
    )
    optimizer: str = _setting({"type": "string"}, "Adam")
    weight_decay: float = _setting({"type": "number", "minimum": 0}, 0.0)
    warmup_epochs: int = _setting({"type": "integer", "minimum": 0}, 5)
    warmup_factor: float = _setting({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, 0.1)
    focal_gamma: float = _setting({"type": "number", "minimum": 0}, 2.0, "image")
    consistency_weight: float = _setting({"type": "number", "minimum": 0}, 1.0, "image")
    hflip: bool = _setting({"type": "boolean"}, True, "image")
    cosine_head: bool = _setting({"type": "boolean"}, False)
    instance_norm_input: bool = _setting({"type": "boolean"}, True)
    pretrained: bool = _setting({"type": "boolean"}, False)
    pretrained_file: str | None = _setting({"type": ["string", "null"]}, None)
    init_from: str | None = _setting(
        {"type": ["string", "null"], "description": "start from this model's checkpoint of the same fold"}, None
    )
    pseudo_labels: str | None = _setting(
        {"type": ["string", "null"], "description": "an ensemble whose out-of-fold predictions are the targets"},
        None,
    )
    pseudo_label_sharpening: float = _setting(
        {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "pseudo labels p become p^a / (p^a + (1 - p)^a) with this a: 1 keeps them, above 1 "
            "pushes them towards 0 and 1",
        },
        1.0,
    )
    pseudo_labels_within_image_labels: bool = _setting(
        {
            "type": "boolean",
            "description": "a cell's pseudo label is 0 for each class but Negative that its image is not labelled with",
        },
        False,
    )
    pseudo_label_weight: float = _setting(
        {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "share of the pseudo label in a cell's target, the rest from its image's labels: 1 "
            "trains on the pseudo labels alone, 0 on the image labels copied to the cells",
        },
        1.0,
    )
    tta: int = _setting({"type": "integer", "minimum": 1, "maximum": 8}, 8)
    predict_batch_size: int | None = _setting({"type": "integer", "minimum": 1}, None)
    validate_every: int = _setting({"type": "integer", "minimum": 1}, 1)
    channels_last: bool = _setting(
        {"type": "boolean", "description": "channels-last model and inputs on CUDA (no effect on the CPU)"}, True
    )
    compile: bool = _setting({"type": "boolean", "description": "torch.compile the training step's model"}, False)
    head: str = _setting(
        {
            "enum": ["cam", "gap_gmp"],
            "description": "cam: class activation map (image logit = its mean); gap_gmp: concatenated average "
            "and max pooling, then two FC layers (image-level task only)",
        },
        "cam",
        "image",
    )
    loss: dict | None = _setting(
        {
            "type": ["object", "null"],
            "description": "weighted sum of losses on the image labels (image models) or cell targets (cell "
            "models); null: the original's (focal for image models, BCE for cell models)",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {name: {"type": "number", "minimum": 0} for name in LOSS_NAMES},
        },
        None,
    )
    hard_example_k: int = _setting(
        {"type": "integer", "minimum": 1, "description": "hard_example loss: the k hardest positives and negatives"},
        8,
    )
    tta_crops: int | None = _setting(
        {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "predict N random crop_size crops per image instead of D4 views (image-level task)",
        },
        None,
        "image",
    )
    tta_combine: str = _setting(
        {"enum": ["mean", "max"], "description": "how the TTA views (or crops) of an image are combined"}, "mean"
    )
    swa: dict | None = _setting(
        {
            "type": ["object", "null"],
            "description": "average the weights of the epochs start_epoch, start_epoch + every, ... (1-based); "
            "BatchNorm statistics recomputed on the training data; the average is final.pt",
            "additionalProperties": False,
            "required": ["start_epoch"],
            "properties": {
                "start_epoch": {"type": "integer", "minimum": 1},
                "every": {"type": "integer", "minimum": 1, "description": "default 1: every epoch"},
            },
        },
        None,
    )
    lr_steps: list | None = _setting(
        {
            "type": ["array", "null"],
            "description": "step schedule instead of the cosine: [[epoch, lr], ...], lr from that (0-based) epoch on",
            "items": {
                "type": "array",
                "prefixItems": [{"type": "integer", "minimum": 0}, {"type": "number", "exclusiveMinimum": 0}],
                "minItems": 2,
                "maxItems": 2,
            },
            "minItems": 1,
        },
        None,
    )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSettings:
        """Build from a resolved settings dict; unknown keys are an error naming them."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"model {values.get('name', '?')!r}: unknown setting(s) {', '.join(unknown)}")
        missing = [
            field.name
            for field in dataclasses.fields(cls)
            if field.default is dataclasses.MISSING and field.name not in values
        ]
        if missing:
            raise ConfigError(f"model {values.get('name', '?')!r}: missing setting(s) {', '.join(missing)}")
        settings = cls(**values)
        if settings.kind not in MODEL_STORES:
            raise ConfigError(f"model {settings.name!r}: kind {settings.kind!r} is neither 'image' nor 'cell'")
        if settings.kind == "image" and not settings.crop_size:
            raise ConfigError(f"model {settings.name!r}: image models need a crop_size")
        if settings.task == TASK_IMAGES and settings.kind != "image":
            raise ConfigError(f"model {settings.name!r}: the {TASK_IMAGES} task has image models only")
        return settings

    @classmethod
    def from_json(cls, text: str, job_settings: dict[str, dict[str, Any]] | None = None) -> ModelSettings:
        """Build from JSON; ``job_settings`` (by model name, the workflow's) fills in the
        :data:`MODEL_JOB_SETTINGS` that the JSON leaves out."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model settings are not valid JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"model settings are not a JSON object: {text[:80]}")
        return cls.from_dict({**(job_settings or {}).get(values.get("name"), {}), **values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 of the canonical JSON without the job settings: a checkpoint is only resumed under
        identical settings, whatever the job ran with (compile, channels_last, ...)."""
        values = {key: value for key, value in self.to_dict().items() if key not in MODEL_JOB_SETTINGS}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()

    @property
    def eval_batch_size(self) -> int:
        return self.predict_batch_size or 2 * self.batch_size

    @property
    def n_classes(self) -> int:
        """The task's number of classes."""
        from hpa_pipeline.labels import n_classes

        return n_classes(self.task)

    @property
    def image_level(self) -> bool:
        """True in the image-level task: no cells, masks or crops; predictions are per image only."""
        return self.task == TASK_IMAGES


def required_settings() -> list[str]:
    """Settings a model must have (on itself or in ``model_defaults``), besides the resolved keys."""
    return [
        field.name
        for field in dataclasses.fields(ModelSettings)
        if field.default is dataclasses.MISSING and field.name not in RESOLVED_KEYS
    ]


def kind_only_settings(kind: str) -> frozenset[str]:
    """Settings that only apply to the other kind of model than ``kind``."""
    return frozenset(
        field.name for field in dataclasses.fields(ModelSettings) if field.metadata["kind"] not in (None, kind)
    )


def model_settings_schema() -> dict[str, Any]:
    """The JSON schema of a model's config keys (``$defs.model_settings`` of the config schema)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            field.name: field.metadata["schema"]
            for field in dataclasses.fields(ModelSettings)
            if field.name not in RESOLVED_KEYS
        },
    }


#: What each kind of model reads besides the cell tables, as (name, store kind, array): image models
#: see whole images with their resized masks, cell models the crops of each cell.
MODEL_STORES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "image": (("images", "images", "images"), ("masks", "masks_resized", "masks")),
    "cell": (("crops", "crops", "crops"),),
}


def model_stores(kind: str, task: str = TASK_CELLS) -> list[str]:
    """Names of the stores (``images``, ``masks``, ``crops``) a model of ``kind`` reads, besides ``cells``.

    In the image-level task (``hpa2018-images``) there are no cells: image models read the images only.
    """
    if kind not in MODEL_STORES:
        raise ConfigError(f"model kind {kind!r} is neither 'image' nor 'cell'")
    if task == TASK_IMAGES:
        if kind != "image":
            raise ConfigError(f"the {TASK_IMAGES} task has image models only, not {kind} models")
        return ["images"]
    return [name for name, _, _ in MODEL_STORES[kind]]


@dataclass
class ModelData:
    """Paths of everything a model reads (shards of all its datasets, in canonical order)."""

    index_paths: list[Path]
    folds_paths: list[Path]
    cells_paths: list[Path]
    images_paths: list[Path] = field(default_factory=list)
    masks_paths: list[Path] = field(default_factory=list)
    crops_paths: list[Path] = field(default_factory=list)
    pseudo_labels: Path | None = None
    init_checkpoint: Path | None = None

    def all_paths(self) -> list[Path]:
        extra = [p for p in (self.pseudo_labels, self.init_checkpoint) if p is not None]
        return [
            *self.index_paths,
            *self.folds_paths,
            *self.cells_paths,
            *self.images_paths,
            *self.masks_paths,
            *self.crops_paths,
            *extra,
        ]

    def open_arrays(self, kind: str, task: str = TASK_CELLS) -> dict:
        """The per-image or per-cell arrays a model of ``kind`` reads, as ``ShardedArray`` by store name."""
        from hpa_pipeline.io.stores import ShardedArray

        wanted = model_stores(kind, task)
        arrays = {}
        for name, store_kind, array in MODEL_STORES[kind]:
            if name not in wanted:
                continue
            paths = getattr(self, f"{name}_paths")
            if not paths:
                raise InputDataError(f"a {kind} model reads {name} stores, but none were given (--{name})")
            arrays[name] = ShardedArray(paths, store_kind, array)
        return arrays
