"""Models: the image-level CAM classifier, the cell-crop classifier and their factories.

Both wrap a timm backbone. The CAM model keeps the spatial feature map and turns it into a class
activation map (CAM) with a 1x1 head; the cell model pools as usual and classifies each 8-channel
crop. ``create_model`` resolves names, pretrained weights and init checkpoints with errors that
name the culprit.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.labels import N_CLASSES

if TYPE_CHECKING:
    from hpa_pipeline.settings import ModelSettings

ModelKind = Literal["image", "cell"]

#: Input normalisation of the original (albumentations Normalize(mean=0.5, std=0.125)).
PIXEL_MEAN, PIXEL_STD = 0.5, 0.125

IMAGE_IN_CHANS = 4  # red, green, blue, yellow
CELL_IN_CHANS = 8  # (centre crop, whole-cell crop) x 4 channels
COSINE_SCALE_INIT = 20.0


def normalize_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., 4, H, W) -> float32 ``(x / 255 - 0.5) / 0.125``, the input of the CAM models."""
    tensor = torch.as_tensor(images).float()
    return (tensor / 255.0 - PIXEL_MEAN) / PIXEL_STD


class CosineConv1x1(nn.Module):
    """A bias-free 1x1 conv on L2-normalised features with L2-normalised class weights.

    Output = s * cos(feature at the pixel, class weight), s learnable (init 20), so the logit range
    is set by s and not by the feature norm.
    """

    def __init__(self, in_features: int, out_features: int, scale_init: float = COSINE_SCALE_INIT) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default init
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, h, w) features -> (B, C, h, w) scaled cosine similarities."""
        features = F.normalize(x, dim=1)
        weight = F.normalize(self.weight, dim=1)
        return self.scale * F.conv2d(features, weight[:, :, None, None])


class CosineLinear(nn.Module):
    """A bias-free linear layer on L2-normalised features and weights, times a learnable scale."""

    def __init__(self, in_features: int, out_features: int, scale_init: float = COSINE_SCALE_INIT) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, F) features -> (B, C) scaled cosine similarities."""
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class CAMClassifier(nn.Module):
    """Image-level classifier whose output is a class activation map.

    Args:
        backbone: a timm model built with ``num_classes=0`` and 4 input channels; its
            ``forward_features`` must return a (B, F, h, w) map.
        num_classes: number of CAM channels.
        cosine_head: cosine 1x1 head instead of a bias-free 1x1 conv.
        instance_norm_input: per-image, per-channel standardisation of the input (affine-free), so
            the model does not depend on the brightness of a well.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = N_CLASSES,
        *,
        cosine_head: bool = False,
        instance_norm_input: bool = True,
    ) -> None:
        super().__init__()
        self.input_norm: nn.Module = (
            nn.InstanceNorm2d(IMAGE_IN_CHANS, affine=False) if instance_norm_input else nn.Identity()
        )
        self.backbone = backbone
        n_features = int(backbone.num_features)
        # No bias: the image logit is the CAM mean, and a bias would only shift every pixel equally.
        self.head: nn.Module = (
            CosineConv1x1(n_features, num_classes)
            if cosine_head
            else nn.Conv2d(n_features, num_classes, kernel_size=1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Compute the CAM.

        Args:
            x: (B, 4, H, W) float images.

        Returns:
            (B, num_classes, h, w) CAM logits at the backbone's stride; image logits are their mean.
        """
        features = self.backbone.forward_features(self.input_norm(x))
        if features.ndim != 4:
            raise ConfigError(
                f"backbone {type(self.backbone).__name__} returns features of shape {tuple(features.shape)}; "
                "the CAM model needs a convolutional backbone with a (B, F, h, w) feature map"
            )
        return self.head(features)


class GapGmpClassifier(nn.Module):
    """Image-level classifier with the 2018 solutions' head: global average and global max pooling of the
    feature map, concatenated, then two fully connected layers (bestfitting's densenet recipe).

    Args:
        backbone: a timm model built with ``num_classes=0`` and 4 input channels, with a (B, F, h, w)
            ``forward_features``.
        num_classes: number of outputs.
        hidden: width of the first FC layer.
        dropout: dropout before each FC layer.
        instance_norm_input: per-image, per-channel standardisation of the input (affine-free).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = N_CLASSES,
        *,
        hidden: int = 512,
        dropout: float = 0.5,
        instance_norm_input: bool = True,
    ) -> None:
        super().__init__()
        self.input_norm: nn.Module = (
            nn.InstanceNorm2d(IMAGE_IN_CHANS, affine=False) if instance_norm_input else nn.Identity()
        )
        self.backbone = backbone
        n_features = int(backbone.num_features)
        self.head = nn.Sequential(
            nn.BatchNorm1d(2 * n_features),
            nn.Dropout(dropout),
            nn.Linear(2 * n_features, hidden),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 4, H, W) float images -> (B, num_classes) image logits."""
        features = self.backbone.forward_features(self.input_norm(x))
        if features.ndim != 4:
            raise ConfigError(
                f"backbone {type(self.backbone).__name__} returns features of shape {tuple(features.shape)}; "
                "the gap_gmp head needs a convolutional backbone with a (B, F, h, w) feature map"
            )
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


def image_logits(model: nn.Module, x: Tensor) -> Tensor:
    """(B, C) image logits of an image model: the CAM's mean for the CAM head, the output of the others."""
    out = model(x)
    return out.mean(dim=(2, 3)) if out.ndim == 4 else out


class CellClassifier(nn.Module):
    """Cell-crop classifier: instance norm on the raw 8-channel crop, timm backbone, linear head.

    The backbone is built with ``num_classes=0`` (pooled features) and the head is our own, so the
    linear and cosine variants share one layout; a timm linear classifier computes the same thing.

    Args:
        backbone: a timm model built with ``num_classes=0`` and 8 input channels.
        num_classes: number of outputs.
        cosine_head: bias-free cosine head with a learnable scale instead of a linear layer.
        instance_norm_input: per-crop, per-channel standardisation of the input (affine-free).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = N_CLASSES,
        *,
        cosine_head: bool = False,
        instance_norm_input: bool = True,
    ) -> None:
        super().__init__()
        # The crops are raw uint8 values cast to float; instance norm is their only normalisation.
        self.input_norm: nn.Module = (
            nn.InstanceNorm2d(CELL_IN_CHANS, affine=False) if instance_norm_input else nn.Identity()
        )
        self.backbone = backbone
        n_features = int(backbone.num_features)
        self.head: nn.Module = (
            CosineLinear(n_features, num_classes) if cosine_head else nn.Linear(n_features, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Classify crops.

        Args:
            x: (B, 8, C, C) crops as float (0..255).

        Returns:
            (B, num_classes) logits.
        """
        return self.head(self.backbone(self.input_norm(x.float())))


def _check_backbone_name(backbone: str) -> None:
    if not timm.is_model(backbone):
        architecture = backbone.split(".", 1)[0]
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close timm names: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown backbone {backbone!r}: timm has no such model{hint}")


def _check_pretrained_tag(backbone: str) -> None:
    """Fail early, and clearly, when timm has no pretrained weights for the name."""
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except RuntimeError:  # unknown tag after the dot
        cfg = None
    has_source = cfg is not None and any(getattr(cfg, key, None) for key in ("url", "file", "hf_hub_id", "state_dict"))
    if not has_source:
        architecture = backbone.split(".", 1)[0]
        tags = timm.list_pretrained(f"{architecture}.*")
        hint = f" (available: {', '.join(tags[:10])})" if tags else " (timm has none for this architecture)"
        raise ConfigError(
            f"backbone {backbone!r}: timm has no pretrained weights under this name{hint}; "
            "give a local weight file (pretrained_file) or an init_checkpoint, or set pretrained to false"
        )


def _build_backbone(backbone: str, in_chans: int, pretrained: bool, pretrained_file: str | Path | None) -> nn.Module:
    kwargs: dict[str, Any] = dict(pretrained=pretrained, num_classes=0, in_chans=in_chans)
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise ConfigError(f"backbone {backbone!r}: pretrained weight file {path} does not exist")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    elif pretrained:
        _check_pretrained_tag(backbone)
    try:
        return timm.create_model(backbone, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if not kwargs["pretrained"]:
            raise ConfigError(f"cannot build backbone {backbone!r}: {exc}") from exc
        source = f"file {pretrained_file}" if pretrained_file is not None else "the Hugging Face Hub / timm URLs"
        raise ConfigError(
            f"backbone {backbone!r}: cannot load timm's pretrained weights from {source} "
            f"({type(exc).__name__}: {exc}). Without network access, download the weights elsewhere and "
            "give them as a local file (pretrained_file, passed to timm as pretrained_cfg_overlay=dict(file=...)), "
            "or pre-fill the Hugging Face cache and set HF_HUB_OFFLINE=1, or start from an init_checkpoint"
        ) from exc


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(f"init checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read init checkpoint {path}: {exc}") from exc
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]  # a training checkpoint: {"model": ..., "optimizer": ...}
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ConfigError(f"init checkpoint {path} holds no state_dict (neither raw nor under the key 'model')")
    # Checkpoints saved from DataParallel/DDP or torch.compile carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if checkpoint and all(key.startswith(prefix) for key in checkpoint):
            checkpoint = {key[len(prefix) :]: value for key, value in checkpoint.items()}
    return checkpoint


def load_init_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the weights of a checkpoint of the same architecture into ``model`` (strict).

    Args:
        model: the freshly built model.
        path: a ``final.pt`` of another run: a raw state_dict or a dict with key ``"model"``.

    Raises:
        ConfigError: naming the file and the first mismatching keys or shapes.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in own.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es), e.g. {'; '.join(wrong_shape[:3])}")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise ConfigError(
            f"init checkpoint {path} does not fit the model (is it the same backbone, head and kind?): "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def create_model(
    kind: ModelKind,
    backbone: str,
    *,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    init_checkpoint: str | Path | None = None,
    cosine_head: bool = False,
    instance_norm_input: bool = True,
    num_classes: int = N_CLASSES,
    head: str = "cam",
) -> nn.Module:
    """Build a CAM (``"image"``) or cell-crop (``"cell"``) model.

    Args:
        kind: ``"image"`` for the CAM model (4 channels), ``"cell"`` for the crop model (8 channels).
        backbone: a timm model name, optionally with a pretrained tag (``efficientnet_b2.ra_in1k``).
        pretrained: start from timm's pretrained weights (first conv adapted by timm).
        pretrained_file: a local file with timm's pretrained weights (implies ``pretrained``); the
            way to use them without network access.
        init_checkpoint: a checkpoint of this very model (e.g. the 768 model of the same fold for a
            1536 fine-tune); loaded after building, so pretrained weights are then not fetched.
        cosine_head: cosine head (scale init 20) instead of the plain one.
        instance_norm_input: affine-free instance norm on the input (both kinds; on in the original).
        num_classes: number of classes (19, or 28 for the 2018 task).
        head: image models: ``cam`` (class activation map) or ``gap_gmp`` (pooled features, two FC layers).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ConfigError: unknown kind or backbone, unavailable pretrained weights, unfit checkpoint.
    """
    if kind not in ("image", "cell"):
        raise ConfigError(f"unknown model kind {kind!r}: expected 'image' or 'cell'")
    _check_backbone_name(backbone)
    if init_checkpoint is not None:
        # Every weight is overwritten by the checkpoint: fetching pretrained ones would be wasted.
        pretrained, pretrained_file = False, None
    in_chans = IMAGE_IN_CHANS if kind == "image" else CELL_IN_CHANS
    body = _build_backbone(backbone, in_chans, pretrained, pretrained_file)
    model: nn.Module
    if kind == "image" and head == "gap_gmp":
        model = GapGmpClassifier(body, num_classes, instance_norm_input=instance_norm_input)
    elif kind == "image":
        if head != "cam":
            raise ConfigError(f"unknown head {head!r}: expected 'cam' or 'gap_gmp'")
        model = CAMClassifier(body, num_classes, cosine_head=cosine_head, instance_norm_input=instance_norm_input)
    else:
        model = CellClassifier(body, num_classes, cosine_head=cosine_head, instance_norm_input=instance_norm_input)
    if init_checkpoint is not None:
        load_init_checkpoint(model, init_checkpoint)
    return model


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` of a model for training steps; the result shares the model's parameters.

    The first steps pay the compilation (tens of seconds), so it pays off on long trainings only;
    ``benchmarks/bench_gpu.py --compile`` measures it. Batches of a new shape recompile: the training
    loader drops its last partial batch for that reason.
    """
    try:
        return torch.compile(model)
    except Exception as exc:  # a missing compiler toolchain, an unsupported platform
        raise ConfigError(f"compile: true, but torch.compile is not available here: {exc}") from exc


def create_optimizer(name: str, params: Any, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Build any ``torch.optim`` optimizer by its class name (case-insensitive).

    Args:
        name: e.g. ``"Adam"`` or ``"adamw"``.
        params: parameters or parameter groups.
        lr: learning rate.
        **kwargs: further optimizer arguments (``weight_decay``, ``betas``, ...).

    Returns:
        The optimizer.
    """
    classes = {
        attr.lower(): cls
        for attr in dir(torch.optim)
        if isinstance(cls := getattr(torch.optim, attr), type)
        and issubclass(cls, torch.optim.Optimizer)
        and cls is not torch.optim.Optimizer
    }
    cls = classes.get(name.lower())
    if cls is None:
        raise ConfigError(
            f"unknown optimizer {name!r}: torch.optim has {', '.join(sorted(c.__name__ for c in classes.values()))}"
        )
    try:
        return cls(params, lr=lr, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer {cls.__name__}: bad arguments {kwargs}: {exc}") from exc


def create_model_from_settings(settings: ModelSettings) -> nn.Module:
    """The untrained network a model's resolved settings describe (what its checkpoints fit)."""
    return create_model(
        settings.kind,
        settings.backbone,
        cosine_head=settings.cosine_head,
        instance_norm_input=settings.instance_norm_input,
        num_classes=settings.n_classes,
        head=settings.head,
    )
