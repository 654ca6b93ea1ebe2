"""A model's resolved settings, as the workflow passes them to ``hpa-pipeline train`` / ``predict``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from hpa_pipeline.errors import ConfigError


@dataclass(frozen=True)
class ModelSettings:
    """Everything that defines one model's training and prediction (defaults: the original's)."""

    name: str
    kind: str  # "image" (CAM model on whole images) or "cell" (crop model)
    backbone: str
    image_size: int  # images (image models) or the image size the crops were cut from (cell models)
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    n_folds: int = 5
    crop_size: int | None = None  # random training crop of image models
    optimizer: str = "Adam"
    weight_decay: float = 0.0
    warmup_epochs: int = 5
    warmup_factor: float = 0.1
    consistency_weight: float = 1.0
    hflip: bool = True
    cosine_head: bool = False
    instance_norm_input: bool = True
    pretrained: bool = False
    pretrained_file: str | None = None
    init_from: str | None = None
    pseudo_labels: str | None = None
    tta: int = 8
    predict_batch_size: int | None = None
    validate_every: int = 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSettings:
        """Build from a resolved settings dict; unknown keys are an error naming them."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"model {values.get('name', '?')!r}: unknown setting(s) {', '.join(unknown)}")
        missing = [field.name for field in dataclasses.fields(cls)
                   if field.default is dataclasses.MISSING and field.name not in values]
        if missing:
            raise ConfigError(f"model {values.get('name', '?')!r}: missing setting(s) {', '.join(missing)}")
        settings = cls(**values)
        if settings.kind not in ("image", "cell"):
            raise ConfigError(f"model {settings.name!r}: kind {settings.kind!r} is neither 'image' nor 'cell'")
        if settings.kind == "image" and not settings.crop_size:
            raise ConfigError(f"model {settings.name!r}: image models need a crop_size")
        return settings

    @classmethod
    def from_json(cls, text: str) -> ModelSettings:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model settings are not valid JSON: {exc}") from exc
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 of the canonical JSON: a checkpoint is only resumed under identical settings."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def eval_batch_size(self) -> int:
        return self.predict_batch_size or 2 * self.batch_size
