"""The 2018 task's image model as a BioImage Model Zoo package (model description format 0.5).

The exported network is :class:`ProbabilityNetwork`: the raw RGBY image (float32, 0..255) in, the 28 class
probabilities out. The pipeline's input normalisation (that of :func:`hpa_pipeline.nets.models.normalize_images`)
and the sigmoid are inside it, so the package declares no pre- or post-processing. Two weight formats:
``pytorch_state_dict`` (the trained weights; its architecture is this module's class, so it needs
hpa-pipeline and timm installed) and ``torchscript`` (traced from it, self-contained: torch alone runs it).

``bioimageio.spec`` and ``bioimageio.core`` are the optional dependency ``hpa-pipeline[bioimageio]`` and are
imported only inside :func:`export_bioimageio`. The export builds the package in a hidden sibling of the
output, validates it with ``bioimageio.spec``, runs its test with ``bioimageio.core`` and only then renames it
into place; none of this touches the network (the description cites DOIs only, no URLs that the
validation would fetch).
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

import hpa_pipeline
from hpa_pipeline.errors import ConfigError, InputDataError, PipelineError
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.stores import open_store, read_strings
from hpa_pipeline.labels import CLASS_NAMES_2018, TASK_IMAGES
from hpa_pipeline.nets.models import PIXEL_MEAN, PIXEL_STD, create_model, image_logits
from hpa_pipeline.settings import ModelSettings

log = logging.getLogger(__name__)

#: How to get the optional dependency, named by the error when it is missing.
INSTALL_HINT = 'pip install "hpa-pipeline[bioimageio]"'
#: What stains each input channel shows (HPA's immunofluorescence images).
CHANNEL_STAINS = {
    "red": "microtubules",
    "green": "the protein of interest (antibody)",
    "blue": "nucleus (DAPI)",
    "yellow": "endoplasmic reticulum",
}
#: Kaggle 2018 competition analysis (Ouyang et al. 2019), which also describes bestfitting's winning solution.
COMPETITION_DOI = "10.1038/s41592-019-0658-6"
#: The Human Protein Atlas subcellular map (Thul et al. 2017), where the images come from.
HPA_DOI = "10.1126/science.aal3321"
#: The image models' heads, as the package's README explains them.
HEADS = {
    "cam": "class activation map; the image logit is its mean",
    "gap_gmp": "global average and max pooling concatenated, then two fully connected layers",
}
#: Name characters the model description allows (bioimageio.spec ModelDescr.name).
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_+\- ()]")


class ProbabilityNetwork(nn.Module):
    """An image model of the 2018 task with its input normalisation and sigmoid built in.

    Args:
        backbone: the timm backbone name of the model's settings.
        head: ``cam`` or ``gap_gmp``.
        cosine_head: the model's cosine head setting.
        instance_norm_input: the model's input instance norm setting.
        num_classes: 28 in the 2018 task.
    """

    def __init__(
        self,
        backbone: str,
        head: str = "cam",
        cosine_head: bool = False,
        instance_norm_input: bool = True,
        num_classes: int = len(CLASS_NAMES_2018),
    ) -> None:
        super().__init__()
        self.model = create_model(
            "image",
            backbone,
            cosine_head=cosine_head,
            instance_norm_input=instance_norm_input,
            num_classes=num_classes,
            head=head,
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 4, H, W) float32 raw intensities 0..255 (red, green, blue, yellow) -> (B, C) probabilities."""
        # normalize_images's arithmetic without its torch.as_tensor, which tracing would freeze into a constant
        return torch.sigmoid(image_logits(self.model, (x / 255.0 - PIXEL_MEAN) / PIXEL_STD))


def _architecture_kwargs(settings: ModelSettings) -> dict[str, Any]:
    return {
        "backbone": settings.backbone,
        "head": settings.head,
        "cosine_head": settings.cosine_head,
        "instance_norm_input": settings.instance_norm_input,
        "num_classes": settings.n_classes,
    }


def _load_trained_network(checkpoint: Path, model: str) -> tuple[ModelSettings, dict[str, Any], ProbabilityNetwork]:
    """The settings stored in a ``final.pt``, the checkpoint itself and its network in eval mode."""
    if not checkpoint.is_file():
        raise InputDataError(f"missing model checkpoint {checkpoint} (train model {model!r} first)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputDataError(f"cannot read model checkpoint {checkpoint}: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict) or "model" not in state:
        raise InputDataError(f"{checkpoint} is not a final.pt of the workflow (no 'model' and 'settings' in it)")
    settings = ModelSettings.from_dict(state["settings"])
    only = (
        f"only an image model of task {TASK_IMAGES} is 'image in, probabilities out' and can be exported to the "
        "BioImage Model Zoo"
    )
    if settings.kind != "image":
        raise ConfigError(f"model {model!r} has kind: {settings.kind}; {only}")
    if settings.task != TASK_IMAGES:
        # the 2021 task's results are per cell: its models need the cell masks of the segmentation
        raise ConfigError(f"model {model!r} has task: {settings.task}; {only}")
    network = ProbabilityNetwork(**_architecture_kwargs(settings))
    network.model.load_state_dict(state["model"])
    return settings, state, network.eval()


def _test_image(store: Path, size: int) -> tuple[str, np.ndarray]:
    """ID and (4, size, size) uint8 pixels of the first image of an images store."""
    group = open_store(store, "images")
    images = group["images"]
    if images.shape[0] == 0:
        raise InputDataError(f"{store} holds no images; the package needs one as its test input")
    if tuple(images.shape[1:]) != (len(CHANNELS), size, size):
        raise InputDataError(
            f"{store} holds images of shape {tuple(images.shape[1:])}; the model takes ({len(CHANNELS)}, {size}, "
            f"{size}) (its image_size): give an images store of that size (--images)"
        )
    return read_strings(group, "ids")[0], np.asarray(images[0])


def _import_bioimageio() -> tuple[Any, Any]:
    """``bioimageio.spec`` and ``bioimageio.core``, or one error that says how to install them."""
    try:
        import bioimageio.core
        import bioimageio.spec
    except ImportError as exc:
        raise ConfigError(
            f"export-bioimageio needs bioimageio.spec and bioimageio.core ({exc}): {INSTALL_HINT}"
        ) from exc
    return bioimageio.spec, bioimageio.core


def _write_cover(path: Path, image: np.ndarray, probabilities: np.ndarray) -> None:
    """A 2:1 PNG: the test image as a colour composite, and its five most probable classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    red, green, blue, yellow = (plane.astype(np.float32) / 255.0 for plane in image)
    # yellow (ER) is red + green on screen, at half strength so the protein's green stays visible
    composite = np.clip(np.stack([red + 0.5 * yellow, green + 0.5 * yellow, blue], axis=-1), 0, 1)
    figure = Figure(figsize=(8, 4), dpi=64)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    left.imshow(composite)
    left.set_axis_off()
    top = np.argsort(probabilities)[::-1][:5]
    right.barh(range(len(top))[::-1], probabilities[top], color="tab:green")
    right.set_yticks(range(len(top))[::-1], [CLASS_NAMES_2018[i] for i in top], fontsize=9)
    right.set_xlim(0, 1)
    right.set_xlabel("probability")
    figure.tight_layout()
    figure.savefig(path)


def _readme(settings: ModelSettings, fold: int, image_id: str, store: Path, state: dict[str, Any]) -> str:
    size = settings.image_size
    channels = "\n".join(f"| {i} | {name} | {CHANNEL_STAINS[name]} |" for i, name in enumerate(CHANNELS))
    classes = "\n".join(f"| {i} | {name} |" for i, name in enumerate(CLASS_NAMES_2018))
    trained = state.get("versions", {})
    tta = "random crops" if settings.tta_crops else "D4 views"
    return f"""# HPA 2018 image classifier: {settings.name}, fold {fold}

Protein localisation in Human Protein Atlas (HPA) immunofluorescence images: one image in, the probability
of each of the 28 classes of Kaggle's "Human Protein Atlas Image Classification" (2018) out. Trained by
hpa-pipeline {trained.get("hpa_pipeline", "?")} (model `{settings.name}`, fold {fold}
of {settings.n_folds}) and exported by `hpa-pipeline export-bioimageio` {hpa_pipeline.__version__}.

## Input

One tensor `image` of shape (batch, channel, y, x) = (B, 4, {size}, {size}), float32, the raw intensities
0..255, channels in this order:

| channel | name | stain |
|---|---|---|
{channels}

Resize the whole field of view to {size} x {size} px (the pipeline shrinks by pixel-area averaging) and
keep the values as they are: 8-bit images as stored, 16-bit images scaled by 255/65535. The network
normalises the input itself (`(x / 255 - 0.5) / 0.125`, then{"" if settings.instance_norm_input else " no"}
per-image, per-channel instance normalisation), so no preprocessing is declared.

## Output

One tensor `probabilities` of shape (batch, channel) = (B, 28), float32 in [0, 1]: the sigmoid of the
model's image logits, one per class (an image may show several). The channel names are the classes:

| index | class |
|---|---|
{classes}

A class is usually called present above 0.5; the workflow fits one threshold per class on its
out-of-fold predictions (`results/thresholds.csv`), which are not part of this package.

## Model

timm backbone `{settings.backbone}`, head `{settings.head}` ({HEADS[settings.head]}),
trained on {settings.crop_size} px random crops of {size} px images for {settings.epochs} epochs
(loss {settings.loss or "focal"}{", weights averaged over the last epochs (SWA)" if settings.swa else ""}).
Every training setting is in `rdf.yaml` under `config.hpa_pipeline.settings`; the training ran with
{", ".join(f"{key} {value}" for key, value in trained.items())}.

## Weights

- `pytorch_state_dict` (the trained weights): the architecture is `ProbabilityNetwork` of the module
  `hpa_pipeline.zoo.bioimageio`, so hpa-pipeline and timm must be installed (`environment.yaml`).
- `torchscript` (traced from it): self-contained, torch alone runs it.

## Validation

The test input is the run's image `{image_id}` of `{store.name}` ({store.parent.name}); the expected output
is this network's prediction of it, which equals the workflow's own prediction of that image without
test-time augmentation (hpa-pipeline's tests check this to 1e-5). The workflow's predictions average
{tta} of each image, so they differ slightly from one
forward pass. The export validated this package with bioimageio.spec and ran its test with
bioimageio.core, offline. To measure the model on your own labelled images, compare its classes at your
thresholds with the truth by the 2018 task's macro F1 (`hpa-pipeline evaluate-images` does this for a
workflow run).

## Credits

Human Protein Atlas images (Thul et al. 2017, doi:{HPA_DOI}); the Kaggle 2018 competition and its analysis
(Ouyang et al. 2019, doi:{COMPETITION_DOI}), where bestfitting's (Shubin Dai's) winning solution, whose
recipe this pipeline follows (GAP + GMP head, focal + Lovasz + hard-example loss, per-class thresholds),
is described. License: MIT.
"""


def _environment(trained: dict[str, str]) -> str:
    environment = {
        "name": "hpa-pipeline-bioimageio",
        "channels": ["conda-forge", "nodefaults"],
        "dependencies": [
            f"python={platform.python_version()}",
            f"pytorch={str(torch.__version__).split('+')[0]}",
            f"timm={trained.get('timm', '')}".rstrip("="),
            "pip",
            {"pip": [f"hpa-pipeline=={hpa_pipeline.__version__}"]},
        ],
    }
    return (
        "# pytorch_state_dict needs hpa-pipeline (its ProbabilityNetwork) and timm; torchscript needs torch only.\n"
        "# hpa-pipeline installs from its repository: pip install PATH/TO/hpa-pipeline\n"
        + yaml.safe_dump(environment, sort_keys=False)
    )


def _model_name(settings: ModelSettings, fold: int) -> str:
    return _NAME_CHARACTERS.sub("-", f"HPA 2018 image classifier {settings.name} fold {fold}")[:64]


def _description(
    settings: ModelSettings, fold: int, authors: list[str], files: dict[str, str], state: dict[str, Any]
) -> dict[str, Any]:
    """The model description (rdf.yaml content) of the files written into the package's staging folder."""
    size = settings.image_size
    torch_version = str(torch.__version__).split("+")[0]
    return {
        "type": "model",
        "format_version": "0.5.12",
        "name": _model_name(settings, fold),
        "description": (
            "Protein localisation in Human Protein Atlas immunofluorescence images: the probabilities of the 28 "
            f"classes of the Kaggle 2018 task from one RGBY image ({settings.backbone}, head {settings.head}, "
            f"{size} px), trained by hpa-pipeline."
        ),
        "authors": [{"name": name} for name in authors],
        "cite": [
            {
                "text": "Ouyang W. et al. Analysis of the Human Protein Atlas Image Classification competition. "
                "Nat Methods 16, 1254-1261 (2019): the 2018 competition",
                "doi": COMPETITION_DOI,
            },
            {
                "text": "bestfitting (Shubin Dai), 1st place of the 2018 competition, whose recipe this model follows; "
                "described in Ouyang W. et al. (2019)",
                "doi": COMPETITION_DOI,
            },
            {"text": "Thul P. J. et al. A subcellular map of the human proteome. Science 356 (2017)", "doi": HPA_DOI},
        ],
        "license": "MIT",
        "tags": [
            "classification",
            "fluorescence-light-microscopy",
            "2d",
            "protein-localization",
            "human-protein-atlas",
        ],
        "documentation": {"source": files["readme"]},
        "covers": [{"source": files["cover"]}],
        "inputs": [
            {
                "id": "image",
                "description": f"RGBY image at {size} px, raw intensities 0..255 (16-bit scaled by 255/65535)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": list(CHANNELS)},
                    {"type": "space", "id": "y", "size": size},
                    {"type": "space", "id": "x", "size": size},
                ],
                "data": {"type": "float32", "range": [0.0, 255.0]},
                "test_tensor": {"source": files["test_input"]},
                "sample_tensor": {"source": files["sample_input"]},
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "description": "probability of each class of the Kaggle 2018 task (sigmoid of the image logits)",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": list(CLASS_NAMES_2018)}],
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "test_tensor": {"source": files["test_output"]},
                "sample_tensor": {"source": files["sample_output"]},
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": files["state_dict"],
                "architecture": {
                    "callable": ProbabilityNetwork.__name__,
                    "import_from": __name__,
                    "kwargs": _architecture_kwargs(settings),
                },
                "pytorch_version": torch_version,
                "dependencies": {"source": files["environment"]},
            },
            "torchscript": {
                "source": files["torchscript"],
                "pytorch_version": torch_version,
                "parent": "pytorch_state_dict",
            },
        },
        "config": {
            "bioimageio": {"task": "classification", "modality": "fluorescence light microscopy"},
            "hpa_pipeline": {
                "model": settings.name,
                "fold": fold,
                "settings": settings.to_dict(),
                "trained_with": dict(state.get("versions", {})),
                "exported_with": hpa_pipeline.__version__,
            },
        },
    }


def _stage_files(
    staging: Path, network: ProbabilityNetwork, image: np.ndarray, readme: str, environment: str
) -> dict[str, str]:
    """Write the package's files into ``staging``; returns them by role (file names relative to it)."""
    import tifffile

    test_input = image[None].astype(np.float32)
    with torch.inference_mode():
        test_output = network(torch.from_numpy(test_input)).numpy()
    files = {
        "state_dict": "weights.pt",
        "torchscript": "weights_torchscript.pt",
        "test_input": "test_input.npy",
        "test_output": "test_output.npy",
        "sample_input": "sample_input.tif",
        "sample_output": "sample_output.tif",
        "cover": "cover.png",
        "readme": "README.md",
        "environment": "environment.yaml",
    }
    torch.save(network.state_dict(), staging / files["state_dict"])
    with warnings.catch_warnings(), torch.no_grad():
        # torch deprecates tracing, but TorchScript is the zoo's self-contained torch format
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        # the norm layers' checks of the input's shape, which the description fixes
        warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning)
        traced = torch.jit.trace(network, torch.from_numpy(test_input))
    traced.save(str(staging / files["torchscript"]))
    np.save(staging / files["test_input"], test_input)
    np.save(staging / files["test_output"], test_output)
    tifffile.imwrite(staging / files["sample_input"], test_input[0], photometric="minisblack")
    tifffile.imwrite(staging / files["sample_output"], test_output)
    _write_cover(staging / files["cover"], image, test_output[0])
    (staging / files["readme"]).write_text(readme, encoding="utf-8")
    (staging / files["environment"]).write_text(environment, encoding="utf-8")
    return files


def _failures(summary: Any) -> str:
    """The failed checks of a bioimageio validation summary, one line each."""
    lines = []
    for detail in summary.details:
        if detail.status == "failed":
            errors = "; ".join(f"{'.'.join(map(str, error.loc))}: {error.msg}" for error in detail.errors)
            lines.append(f"{detail.name}: {errors}" if errors else detail.name)
    return "\n".join(lines) or f"status {summary.status}"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def export_bioimageio(
    model: str,
    out: str | Path,
    *,
    run_dir: str | Path = ".",
    fold: int = 0,
    images: str | Path | None = None,
    authors: list[str] | None = None,
) -> Path:
    """Write a trained 2018-task image model as a BioImage Model Zoo package, validated and test-run.

    Args:
        model: the model's name (``results/models/{model}`` of the run).
        out: the package: a ``.zip`` (the zoo's upload format, written by bioimageio.spec's packager) or,
            for any other name, a folder with ``rdf.yaml`` and its files. An existing package there is
            replaced; any other existing file or folder is refused.
        run_dir: the workflow's folder, holding ``results/``.
        fold: which fold's ``final.pt`` to export.
        images: an images store whose first image is the package's test input; default the run's
            ``results/test/images_{S}/shard-0.zarr`` at the model's image size S.
        authors: the package's authors (default: hpa-pipeline).

    Returns:
        The package's path (``out``).

    Raises:
        ConfigError: a cell model, a model of task hpa2021-cells, bioimageio not installed, ``out`` not a package.
        InputDataError: a missing or unreadable checkpoint or images store.
        PipelineError: the package fails bioimageio.spec's validation or bioimageio.core's test.
    """
    out, run_dir = Path(out), Path(run_dir)
    zipped = out.suffix == ".zip"
    if out.exists() and not (out.is_file() if zipped else (out / "rdf.yaml").is_file()):
        raise ConfigError(f"--out {out} exists and is not a model package: choose another path")
    checkpoint = run_dir / "results" / "models" / model / f"fold{fold}" / "final.pt"
    settings, state, network = _load_trained_network(checkpoint, model)
    store = Path(images) if images else run_dir / "results" / "test" / f"images_{settings.image_size}" / "shard-0.zarr"
    image_id, image = _test_image(store, settings.image_size)
    spec, core = _import_bioimageio()

    partial = out.with_name(f".{out.stem}.partial.zip" if zipped else f".{out.name}.partial")
    _remove(partial)  # left behind by a killed export
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpa-bioimageio-") as tmp:
        staging = Path(tmp)
        files = _stage_files(
            staging,
            network,
            image,
            _readme(settings, fold, image_id, store, state),
            _environment(state.get("versions", {})),
        )
        content = _description(settings, fold, list(authors or ["hpa-pipeline"]), files, state)
        context = spec.ValidationContext(root=staging, file_name="rdf.yaml", perform_io_checks=True)
        description = spec.build_description(content, context=context)
        if isinstance(description, spec.InvalidDescr):
            raise PipelineError(
                f"the model description of {model!r} is invalid:\n{_failures(description.validation_summary)}"
            )
        try:
            if zipped:
                spec.save_bioimageio_package(description, output_path=partial)
            else:
                spec.save_bioimageio_package_as_folder(description, output_path=partial)
            log.info("package built in %.1f s", time.perf_counter() - started)
            _check_package(spec, core, partial if zipped else partial / "rdf.yaml", model)
        except BaseException:
            _remove(partial)
            raise
    if out.exists():
        trash = out.with_name(f".{out.name}.old")
        _remove(trash)
        os.replace(out, trash)
        os.replace(partial, out)
        _remove(trash)
    else:
        os.replace(partial, out)
    log.info("wrote %s: model %s fold %d, test input %s of %s", out, model, fold, image_id, store)
    return out


def _check_package(spec: Any, core: Any, source: Path, model: str) -> None:
    """bioimageio.spec's validation and bioimageio.core's test of a written package, or an error listing
    the failed checks."""
    started = time.perf_counter()
    loaded = spec.load_description(source, perform_io_checks=True)
    if isinstance(loaded, spec.InvalidDescr):
        raise PipelineError(
            f"the package of {model!r} fails bioimageio.spec's validation:\n{_failures(loaded.validation_summary)}"
        )
    # on the CPU, where the expected output was computed (a GPU's TF32 convolutions round differently)
    summary = core.test_model(source, devices=["cpu"])
    if summary.status != "passed":
        raise PipelineError(f"the package of {model!r} fails bioimageio.core's test:\n{_failures(summary)}")
    log.info(
        "bioimageio.spec: %s; bioimageio.core test: %s (%.1f s)",
        loaded.validation_summary.status,
        summary.status,
        time.perf_counter() - started,
    )
