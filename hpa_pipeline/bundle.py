"""The bundle stage (rules/bundle.smk): a trained run as one portable, verifiable artifact.

A bundle is a folder (and the same files as a deterministic ``.zip``) holding ``manifest.yaml`` and one
safetensors state dict per submission member and fold. The manifest says everything that annotating new
images needs: the task and its class names, the preprocessing sizes, the test set's segmentation settings,
each member's resolved settings, how the members are averaged, the area and per-class thresholds, a digest
of the training index, and the sha256 of every weight file (docs/bundle.md).

Opening a bundle never unpickles anything: the manifest is read with ``yaml.safe_load`` and the weights
with safetensors, so a bundle from someone else can carry numbers only, never code. Every check that
fails raises :class:`BundleError`, one sentence naming the file and the reason.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

import hpa_pipeline
from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.files import atomic_file, replace_directory, write_text_atomic
from hpa_pipeline.io.index import read_index
from hpa_pipeline.io.thresholds import read_thresholds
from hpa_pipeline.labels import TASK_CELLS, TASK_IMAGES, TASKS, class_names
from hpa_pipeline.settings import MODEL_JOB_SETTINGS, ModelSettings

if TYPE_CHECKING:
    import torch

#: The layout version of the manifest; a bundle of a higher format comes from a newer hpa-pipeline.
BUNDLE_FORMAT = 1
MANIFEST = "manifest.yaml"
WEIGHTS_DIR = "weights"
#: How the members' probabilities are combined: equal weights over every member x fold (make_submission).
AVERAGING = "mean"
#: The zip's entries carry this timestamp (the earliest a zip can hold), so equal inputs give equal bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

_SEGMENT_KEYS = ("backend", "source", "scale_factor")
_HPACELLSEG_KEYS = ("nuclei_model", "nuclei_model_sha256", "cell_model", "cell_model_sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: The keys a manifest of :data:`BUNDLE_FORMAT` may hold, by where they occur; anything else comes from a
#: newer version and is refused rather than ignored.
_MANIFEST_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "format",
            "hpa_pipeline_version",
            "task",
            "class_names",
            "preprocess",
            "segment",
            "members",
            "averaging",
            "edge_area_threshold",
            "center_area_threshold",
            "class_thresholds",
            "provenance",
            "files",
        }
    ),
    "preprocess": frozenset({"image_sizes", "crop_image_sizes", "crop_size"}),
    "segment": frozenset(_SEGMENT_KEYS + _HPACELLSEG_KEYS),
    "members[]": frozenset({"name", "settings", "weights", "trained_with"}),
    "members[].settings": frozenset(field.name for field in dataclasses.fields(ModelSettings)),
    "provenance": frozenset({"training_index_sha256", "training_index"}),
    "provenance.training_index[]": frozenset({"dataset", "images", "sha256"}),
}
#: Keys only the per-cell task has (segmentation, crops, area scaling); the image task's bundle has none.
_CELL_TASK_KEYS = ("segment", "edge_area_threshold", "center_area_threshold")


class BundleError(InputDataError):
    """A bundle that cannot be used: one sentence naming the file and the reason."""


@dataclass(frozen=True)
class BundleMember:
    """One submission member: its resolved settings and one weight file per fold."""

    name: str
    #: the member's settings as at training (job settings such as compile take their defaults)
    settings: ModelSettings
    #: absolute paths of its safetensors files, in fold order
    weights: tuple[Path, ...]


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: what a trained run needs to annotate new images (docs/bundle.md)."""

    root: Path
    manifest: dict
    version: str
    task: str
    class_names: tuple[str, ...]
    image_sizes: tuple[int, ...]
    #: () in task hpa2018-images (no cells, no crops)
    crop_image_sizes: tuple[int, ...]
    #: None in task hpa2018-images
    crop_size: int | None
    #: backend, source ("original" or a size), scale_factor and the backend's own settings (hpacellseg: its
    #: weight file names and sha256) of the run's test set; {} in task hpa2018-images
    segment: dict
    members: tuple[BundleMember, ...]
    averaging: str
    #: None in task hpa2018-images
    edge_area_threshold: float | None
    center_area_threshold: float | None
    class_thresholds: tuple[float, ...]
    training_index_sha256: str


# ------------------------------------------------------------------------------------------------ writing


def write_bundle(
    out_dir: Path,
    checkpoints: Sequence[Path],
    thresholds: Path,
    train_index: Sequence[Path],
    image_sizes: Sequence[int],
    *,
    crop_image_sizes: Sequence[int] = (),
    crop_size: int | None = None,
    segment: Mapping[str, Any] | None = None,
    edge_area_threshold: float | None = None,
    center_area_threshold: float | None = None,
    zip_path: Path | None = None,
) -> None:
    """Write a run's bundle: ``out_dir`` (and ``zip_path``), in place only when everything succeeded.

    Args:
        out_dir: the bundle folder to write (``results/bundle``); replaced whole.
        checkpoints: every fold's ``final.pt`` of every submission member. The members are the checkpoints'
            models in order of first appearance; each needs its folds 0 .. n_folds - 1 exactly.
        thresholds: the run's per-class thresholds (``results/thresholds.csv``).
        train_index: the training datasets' ``index.csv`` in config order (provenance digest).
        image_sizes: ``preprocess.image_sizes``.
        crop_image_sizes: ``preprocess.crop_image_sizes`` (task hpa2021-cells).
        crop_size: ``preprocess.crop_size`` (task hpa2021-cells).
        segment: the test set's segmentation: ``backend``, ``source``, ``scale_factor`` and, for the
            hpacellseg backend, its weight files and their sha256 (the bundle keeps the file names only).
        edge_area_threshold: the submission's area threshold of cells touching the edge (task hpa2021-cells).
        center_area_threshold: the same for the other cells.
        zip_path: also write the bundle as this zip (deterministic: sorted entries, fixed timestamps).

    Before anything is put in place, the bundle is opened with :func:`load_bundle` and every member's model
    of every fold is built and loaded with :func:`load_member_model`, as a receiver would.

    Raises:
        InputDataError: a checkpoint, the thresholds or an index is missing or inconsistent.
        ConfigError: settings that do not fit the task (e.g. a crop size in task hpa2018-images).
    """
    import torch
    from safetensors.torch import save_file

    members = _read_checkpoints(checkpoints)
    task = members[0][1].task
    names = class_names(task)
    cell_settings = _cell_task_settings(
        task, crop_image_sizes, crop_size, segment, edge_area_threshold, center_area_threshold
    )
    index_sha256, index_files = _training_index(train_index)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "hpa_pipeline_version": hpa_pipeline.__version__,
        "task": task,
        "class_names": list(names),
        "preprocess": {"image_sizes": [int(size) for size in image_sizes], **cell_settings.pop("preprocess")},
        **({"segment": cell_settings.pop("segment")} if task == TASK_CELLS else {}),
        "members": [],
        "averaging": AVERAGING,
        **cell_settings,
        "class_thresholds": read_thresholds(thresholds, names).tolist(),
        "provenance": {"training_index_sha256": index_sha256, "training_index": index_files},
        "files": {},
    }
    with _atomic_directory(Path(out_dir)) as partial:
        for name, settings, states in members:
            weights = []
            for fold, state in enumerate(states):
                relative = f"{WEIGHTS_DIR}/{name}/fold{fold}.safetensors"
                (partial / relative).parent.mkdir(parents=True, exist_ok=True)
                save_file(_plain_tensors(state["model"]), partial / relative, metadata={"format": "pt"})
                os.chmod(partial / relative, 0o644)  # safetensors writes 0600; a bundle is for sharing
                manifest["files"][relative] = _sha256(partial / relative)
                weights.append(relative)
            manifest["members"].append(
                {
                    "name": name,
                    "settings": _bundle_settings(settings),
                    "weights": weights,
                    "trained_with": [dict(state.get("versions") or {}) for state in states],
                }
            )
        write_text_atomic(partial / MANIFEST, yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
        # put in place only what opens the way a receiver opens it: verified, every model built and loaded
        for member, (_, _, states) in zip(load_bundle(partial).members, members):
            for fold, state in enumerate(states):
                try:
                    load_member_model(member, fold, torch.device("cpu"))
                except BundleError as exc:
                    raise InputDataError(f"{state['path']} cannot be bundled: {exc}") from exc
        if zip_path is not None:
            _write_zip(partial, Path(zip_path))


def _read_checkpoints(paths: Sequence[Path]) -> list[tuple[str, ModelSettings, list[dict[str, Any]]]]:
    """(name, settings, checkpoints in fold order) of every model, in order of first appearance."""
    if not paths:
        raise InputDataError("a bundle needs the checkpoints (final.pt) of the submission's members; none given")
    by_model: dict[str, dict[int, tuple[Path, dict[str, Any]]]] = {}
    task = None
    for path in map(Path, paths):
        state = _read_checkpoint(path)
        settings, fold = state["settings"], state["fold"]
        task = task or settings.task
        if settings.task != task:
            raise InputDataError(
                f"{path}: model {settings.name} was trained for task {settings.task}, the first for {task}"
            )
        folds = by_model.setdefault(settings.name, {})
        if fold in folds:
            raise InputDataError(f"{path}: fold {fold} of model {settings.name} is also {folds[fold][0]}")
        for other_path, other in folds.values():
            if _bundle_settings(other["settings"]) != _bundle_settings(settings):
                raise InputDataError(f"{path}: model {settings.name} was trained with other settings than {other_path}")
        folds[fold] = (path, {**state, "path": path})
    members = []
    for name, folds in by_model.items():
        path, first = next(iter(folds.values()))
        n_folds = first["settings"].n_folds
        if sorted(folds) != list(range(n_folds)):
            raise InputDataError(
                f"{path}: model {name} has {n_folds} folds, the checkpoints give fold(s) "
                f"{', '.join(map(str, sorted(folds)))}"
            )
        members.append((name, first["settings"], [folds[fold][1] for fold in range(n_folds)]))
    return members


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A run's own ``final.pt`` (train/checkpoints.py), with its settings as :class:`ModelSettings`."""
    if not path.is_file():
        raise InputDataError(f"missing model checkpoint {path}")
    import torch

    try:
        # the run's own file; weights_only still refuses anything but tensors and plain containers, and mmap
        # keeps the members' weights on disk until they are written
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise InputDataError(f"cannot read model checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(key in state for key in ("model", "settings", "fold")):
        raise InputDataError(f"{path} is not a final.pt of hpa-pipeline (no model, settings and fold)")
    try:
        settings = ModelSettings.from_dict(state["settings"])
    except ConfigError as exc:
        raise InputDataError(f"{path}: {exc}") from exc
    return {**state, "settings": settings}


def _bundle_settings(settings: ModelSettings) -> dict[str, Any]:
    """A member's settings as the manifest holds them: without the settings of how a job runs."""
    return {key: value for key, value in settings.to_dict().items() if key not in MODEL_JOB_SETTINGS}


def _plain_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it: contiguous CPU tensors that share no memory.

    A channels-last model (CUDA training) has non-contiguous weights, and tied weights share one storage;
    both are stored as plain copies with the same values, which ``load_state_dict`` restores alike.
    """
    plain: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[key] = tensor
    return plain


def _cell_task_settings(
    task: str,
    crop_image_sizes: Sequence[int],
    crop_size: int | None,
    segment: Mapping[str, Any] | None,
    edge_area_threshold: float | None,
    center_area_threshold: float | None,
) -> dict[str, Any]:
    """The settings only task hpa2021-cells has, checked: required there, refused in the image task."""
    given = {
        "crop image sizes": bool(crop_image_sizes),
        "crop size": crop_size is not None,
        "segmentation settings": bool(segment),
        "edge area threshold": edge_area_threshold is not None,
        "center area threshold": center_area_threshold is not None,
    }
    if task == TASK_IMAGES:
        extra = [name for name, present in given.items() if present]
        if extra:
            raise ConfigError(f"task {TASK_IMAGES} has no cells, so a bundle of it takes no {', '.join(extra)}")
        return {"preprocess": {}}
    missing = [name for name, present in given.items() if not present]
    if missing or segment is None or crop_size is None or edge_area_threshold is None or center_area_threshold is None:
        raise ConfigError(f"a bundle of task {TASK_CELLS} needs the {', '.join(missing)} of the run")
    return {
        "preprocess": {"crop_image_sizes": [int(size) for size in crop_image_sizes], "crop_size": int(crop_size)},
        "segment": _segment_settings(segment),
        "edge_area_threshold": float(edge_area_threshold),
        "center_area_threshold": float(center_area_threshold),
    }


def _segment_settings(segment: Mapping[str, Any]) -> dict[str, Any]:
    """The segmentation settings without machine-specific paths: hpacellseg's weights by name and sha256."""
    unknown = sorted(set(segment) - set(_SEGMENT_KEYS) - set(_HPACELLSEG_KEYS))
    if unknown:
        raise ConfigError(f"segmentation settings: unknown key(s) {', '.join(unknown)}")
    missing = [key for key in _SEGMENT_KEYS if segment.get(key) is None]
    if missing:
        raise ConfigError(f"segmentation settings: a bundle of task {TASK_CELLS} needs {', '.join(missing)}")
    source = str(segment["source"])
    if source != "original" and not source.isdecimal():
        raise ConfigError(f"segmentation source {source!r} is neither 'original' nor an image size")
    settings: dict[str, Any] = {
        "backend": str(segment["backend"]),
        "source": source if source == "original" else int(source),
        "scale_factor": float(segment["scale_factor"]),
    }
    if settings["backend"] != "hpacellseg":
        return settings
    for key in ("nuclei_model", "cell_model"):
        digest = str(segment.get(f"{key}_sha256") or "").strip().lower()
        if not segment.get(key) or not _SHA256.fullmatch(digest):
            raise ConfigError(
                f"segment backend hpacellseg: a bundle records its {key} file by name and sha256; "
                f"give both (got {segment.get(key)!r} and {segment.get(f'{key}_sha256')!r})"
            )
        settings[key] = PurePosixPath(str(segment[key]).replace("\\", "/")).name
        settings[f"{key}_sha256"] = digest
    return settings


def _training_index(paths: Sequence[Path]) -> tuple[str, list[dict[str, Any]]]:
    """The sha256 of the training indexes' bytes in order (``cat INDEX... | sha256sum``) and, per file,
    its dataset, image count and sha256."""
    if not paths:
        raise InputDataError("a bundle records the training index (results/{dataset}/index.csv); none given")
    digest = hashlib.sha256()
    files = []
    for path in map(Path, paths):
        index = read_index(path)
        datasets = sorted(set(index["dataset"]))
        if len(datasets) != 1:
            raise InputDataError(f"{path}: a training index of one dataset, not {datasets}")
        data = path.read_bytes()
        digest.update(data)
        files.append({"dataset": datasets[0], "images": len(index), "sha256": hashlib.sha256(data).hexdigest()})
    return digest.hexdigest(), files


@contextmanager
def _atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling ``.NAME.partial`` and rename it to ``path`` when the block succeeds; on an
    exception it is removed and ``path`` is untouched."""
    partial = path.with_name(f".{path.name}.partial")
    if partial.exists():  # left behind by a killed job
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_directory(partial, path)


def _write_zip(folder: Path, zip_path: Path) -> None:
    """Zip ``folder``'s files, sorted, uncompressed (weights hardly compress), with fixed timestamps and
    permissions: the same files give the same bytes."""
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    with atomic_file(zip_path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for name in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3  # unix, so that the permissions below mean the same everywhere
            info.external_attr = 0o100644 << 16
            info.file_size = (folder / name).stat().st_size
            with open(folder / name, "rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1 << 20)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ reading


def load_bundle(path: Path, extract_to: Path | None = None) -> Bundle:
    """Open and verify a bundle folder or a bundle zip; never unpickles anything.

    Args:
        path: a bundle folder (with ``manifest.yaml``) or a bundle ``.zip``.
        extract_to: where a zip is extracted: a new or empty folder, or one that holds this very bundle
            already (verified again, not rewritten). None: a temporary folder removed at interpreter exit.

    Returns:
        The bundle, its weight paths inside ``root``.

    Raises:
        BundleError: naming the file and the reason: a file that does not match its sha256, an unlisted
            weight file, an unknown key (a bundle of a newer version), a task or class count that disagrees,
            a backbone the installed timm does not have, a zip entry that points outside the bundle.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if path.is_file():
        return load_bundle(_extract(path, extract_to))
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: no {MANIFEST} (neither a bundle folder nor a bundle zip)")
    manifest = _read_manifest(manifest_path)
    _check_files(path, manifest_path, manifest["files"])
    task = manifest["task"]
    segment = manifest.get("segment", {})
    return Bundle(
        root=path.resolve(),
        manifest=manifest,
        version=manifest["hpa_pipeline_version"],
        task=task,
        class_names=tuple(manifest["class_names"]),
        image_sizes=tuple(manifest["preprocess"]["image_sizes"]),
        crop_image_sizes=tuple(manifest["preprocess"].get("crop_image_sizes", ())),
        crop_size=manifest["preprocess"].get("crop_size"),
        segment=dict(segment),
        members=tuple(_member(path.resolve(), entry) for entry in manifest["members"]),
        averaging=manifest["averaging"],
        edge_area_threshold=manifest.get("edge_area_threshold"),
        center_area_threshold=manifest.get("center_area_threshold"),
        class_thresholds=tuple(float(value) for value in manifest["class_thresholds"]),
        training_index_sha256=manifest["provenance"]["training_index_sha256"],
    )


def copy_bundle(path: Path, out_dir: Path) -> None:
    """Put a verified copy of a bundle folder or zip (extracted) at ``out_dir``: the bundle the workflow's
    annotate jobs open. ``out_dir`` is replaced only once the copy opened with :func:`load_bundle`.

    Raises:
        BundleError: as :func:`load_bundle`, naming the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    with _atomic_directory(Path(out_dir)) as partial:
        if path.is_file():
            _extract(path, partial)
        else:
            shutil.copytree(path, partial, dirs_exist_ok=True)
        load_bundle(partial)


def load_member_model(member: BundleMember, fold: int, device: torch.device) -> torch.nn.Module:
    """Build one member's model of one fold and load its safetensors weights (never ``torch.load``).

    Args:
        member: a member of a bundle opened with :func:`load_bundle`.
        fold: the fold, an index into ``member.weights``.
        device: where the model goes.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        BundleError: no such fold, or a weight file that is unreadable or does not fit the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hpa_pipeline.nets.models import create_model_from_settings

    if not 0 <= fold < len(member.weights):
        raise BundleError(f"member {member.name} has folds 0..{len(member.weights) - 1}, not fold {fold}")
    path = member.weights[fold]
    settings = member.settings
    model = create_model_from_settings(settings)
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise BundleError(
            f"{path} does not fit the model of member {member.name} ({settings.backbone}): {reason}"
        ) from exc
    return model.to(device).eval()


def _extract(zip_path: Path, extract_to: Path | None) -> Path:
    """Extract a bundle zip after checking every entry's name; returns the folder."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{zip_path} is not a bundle: neither a folder nor a readable zip ({exc})") from exc
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        for info in entries:
            _check_entry(zip_path, info)
        if extract_to is None:
            target = Path(tempfile.mkdtemp(prefix="hpa-bundle-"))
            atexit.register(shutil.rmtree, target, True)
            _copy_entries(archive, entries, target)
            return target
        target = Path(extract_to)
        if target.is_dir() and any(target.iterdir()):
            manifest = target / MANIFEST
            if (
                manifest.is_file()
                and MANIFEST in archive.namelist()
                and manifest.read_bytes() == archive.read(MANIFEST)
            ):
                return target  # extracted before; load_bundle verifies every file again
            raise BundleError(f"cannot extract {zip_path} into {target}: the folder holds something else")
        with _atomic_directory(target) as partial:
            _copy_entries(archive, entries, partial)
        return target


def _check_entry(zip_path: Path, info: zipfile.ZipInfo) -> None:
    name = PurePosixPath(info.filename)
    outside = name.is_absolute() or ".." in name.parts or "\\" in info.filename or ":" in info.filename
    if outside:
        raise BundleError(f"{zip_path}: entry {info.filename!r} points outside the bundle; refusing to extract it")
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        raise BundleError(f"{zip_path}: entry {info.filename!r} is a symbolic link; refusing to extract it")


def _copy_entries(archive: zipfile.ZipFile, entries: Sequence[zipfile.ZipInfo], target: Path) -> None:
    for info in entries:
        destination = target / info.filename
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, open(destination, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)


def read_manifest(path: Path) -> dict[str, Any]:
    """The checked manifest of a bundle folder or zip, read without extracting it, verifying its files'
    sha256 or importing torch: what the workflow's annotate mode plans its jobs from when it starts.

    Everything :func:`load_bundle` checks in the manifest is checked but the members' backbones; the
    workflow's first job opens the bundle with :func:`load_bundle`, which checks those and every file.

    Raises:
        BundleError: naming the file and the reason, as :func:`load_bundle` does.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if path.is_dir():
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not a bundle: no {MANIFEST} (neither a bundle folder nor a bundle zip)")
        return _read_manifest(manifest_path, manifest_path.read_bytes(), backbones=False)
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(MANIFEST)
    except KeyError as exc:
        raise BundleError(f"{path} is not a bundle: the zip holds no {MANIFEST}") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path} is not a bundle: neither a folder nor a readable zip ({exc})") from exc
    return _read_manifest(path / MANIFEST, data, backbones=False)


def _read_manifest(path: Path, data: bytes | None = None, *, backbones: bool = True) -> dict[str, Any]:
    """The parsed and checked manifest (structure, keys, task, classes, members and, with ``backbones``,
    their backbones); ``data`` is the file's bytes when ``path`` names an entry of a zip."""
    try:
        manifest = yaml.safe_load((path.read_bytes() if data is None else data).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} holds no mapping of manifest keys")
    found = manifest.get("format")
    if not isinstance(found, int) or isinstance(found, bool):
        raise BundleError(f"{path}: no bundle format number (key format)")
    if found != BUNDLE_FORMAT:
        newer = " (a bundle of a newer hpa-pipeline)" if found > BUNDLE_FORMAT else ""
        raise BundleError(
            f"{path}: bundle format {found}{newer}; "
            f"hpa-pipeline {hpa_pipeline.__version__} reads format {BUNDLE_FORMAT}"
        )
    _check_keys(path, manifest)
    task = _get(path, manifest, "task", str)
    if task not in TASKS:
        raise BundleError(f"{path}: task {task!r} is not one of {', '.join(TASKS)}")
    names = _get(path, manifest, "class_names", list)
    expected = class_names(task)
    if len(names) != len(expected):
        raise BundleError(f"{path}: {len(names)} class names, but task {task} has {len(expected)} classes")
    if tuple(names) != expected:
        position = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
        raise BundleError(
            f"{path}: class {position} is {names[position]!r}, task {task} calls it {expected[position]!r}"
        )
    thresholds = _get(path, manifest, "class_thresholds", list)
    if len(thresholds) != len(expected) or not all(_is_number(v) and 0 <= v <= 1 for v in thresholds):
        raise BundleError(f"{path}: class_thresholds must be {len(expected)} numbers in 0..1 (one per class)")
    _check_task_keys(path, manifest, task)
    if _get(path, manifest, "averaging", str) != AVERAGING:
        raise BundleError(f"{path}: averaging {manifest['averaging']!r} is unknown (this version averages by mean)")
    _get(path, manifest, "hpa_pipeline_version", str)
    provenance = _get(path, manifest, "provenance", dict)
    if not _SHA256.fullmatch(str(provenance.get("training_index_sha256"))):
        raise BundleError(f"{path}: provenance.training_index_sha256 is not a sha256")
    files = _get(path, manifest, "files", dict)
    members = _get(path, manifest, "members", list)
    if not members:
        raise BundleError(f"{path}: the bundle has no members")
    for position, entry in enumerate(members):
        _check_member(path, position, entry, task, len(expected), files, backbones)
    return manifest


def _check_keys(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse any key this format does not define, naming where it is."""

    def check(node: Any, where: str, pattern: str) -> None:
        if not isinstance(node, dict):
            return
        unknown = sorted(str(key) for key in node if key not in _MANIFEST_KEYS[pattern])
        if unknown:
            place = f"{where}.{unknown[0]}" if where else unknown[0]
            raise BundleError(
                f"{path}: unknown key {place} (a bundle of a newer hpa-pipeline? this is {hpa_pipeline.__version__})"
            )

    check(manifest, "", "")
    for key in ("preprocess", "segment", "provenance"):
        check(manifest.get(key), key, key)
    for position, entry in enumerate(_as_list(manifest.get("members"))):
        check(entry, f"members[{position}]", "members[]")
        if isinstance(entry, dict):
            check(entry.get("settings"), f"members[{position}].settings", "members[].settings")
    provenance = manifest.get("provenance")
    for position, entry in enumerate(
        _as_list(provenance.get("training_index") if isinstance(provenance, dict) else None)
    ):
        check(entry, f"provenance.training_index[{position}]", "provenance.training_index[]")


def _check_task_keys(path: Path, manifest: dict[str, Any], task: str) -> None:
    preprocess = _get(path, manifest, "preprocess", dict)
    if not _int_list(preprocess.get("image_sizes")):
        raise BundleError(f"{path}: preprocess.image_sizes must be a list of sizes")
    if task == TASK_IMAGES:
        extra = [key for key in _CELL_TASK_KEYS if key in manifest]
        extra += [f"preprocess.{key}" for key in ("crop_image_sizes", "crop_size") if key in preprocess]
        if extra:
            raise BundleError(f"{path}: task {task} has no cells, but the manifest has {', '.join(extra)}")
        return
    if not _int_list(preprocess.get("crop_image_sizes")) or not _is_int(preprocess.get("crop_size")):
        raise BundleError(f"{path}: task {task} needs preprocess.crop_image_sizes and preprocess.crop_size")
    for key in ("edge_area_threshold", "center_area_threshold"):
        if not _is_number(manifest.get(key)):
            raise BundleError(f"{path}: task {task} needs a number {key}")
    segment = _get(path, manifest, "segment", dict)
    missing = [key for key in _SEGMENT_KEYS if key not in segment]
    if segment.get("backend") == "hpacellseg":
        missing += [key for key in _HPACELLSEG_KEYS if not segment.get(key)]
    if missing:
        raise BundleError(f"{path}: segment lacks {', '.join(missing)}")


def _check_member(
    path: Path, position: int, entry: Any, task: str, n_classes: int, files: Mapping[str, Any], backbones: bool
) -> None:
    where = f"members[{position}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("settings"), dict):
        raise BundleError(f"{path}: {where} needs a name, settings and weights")
    try:
        settings = ModelSettings.from_dict(entry["settings"])
    except (ConfigError, TypeError) as exc:
        raise BundleError(f"{path}: {where}.settings: {exc}") from exc
    if entry.get("name") != settings.name:
        raise BundleError(f"{path}: {where} is named {entry.get('name')!r}, its settings {settings.name!r}")
    if settings.task != task:
        raise BundleError(
            f"{path}: member {settings.name} was trained for task {settings.task}, the bundle's is {task}"
        )
    if settings.n_classes != n_classes:
        raise BundleError(f"{path}: member {settings.name} has {settings.n_classes} classes, the bundle {n_classes}")
    if backbones:
        import timm

        if not timm.is_model(settings.backbone):
            raise BundleError(
                f"{path}: member {settings.name} needs backbone {settings.backbone!r}, which the installed "
                f"timm {timm.__version__} does not have"
            )
    weights = entry.get("weights")
    if not isinstance(weights, list) or len(weights) != settings.n_folds:
        raise BundleError(f"{path}: member {settings.name} needs {settings.n_folds} weight files, one per fold")
    unlisted = [name for name in weights if name not in files]
    if unlisted:
        raise BundleError(f"{path}: member {settings.name}'s weight file {unlisted[0]} is not listed under files")


def _check_files(root: Path, manifest_path: Path, files: Mapping[str, Any]) -> None:
    """Every listed file exists with its sha256; no weight file is left unlisted."""
    for name, expected in files.items():
        relative = PurePosixPath(str(name))
        if relative.is_absolute() or ".." in relative.parts or relative.as_posix() == MANIFEST:
            raise BundleError(f"{manifest_path}: files lists {name!r}, which is not a file inside the bundle")
        file = root / relative
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle (listed in {MANIFEST})")
        actual = _sha256(file)
        if actual != str(expected).lower():
            raise BundleError(
                f"{file} does not match its sha256 in {MANIFEST} (changed or damaged: {actual} instead of {expected})"
            )
    listed = {PurePosixPath(str(name)).as_posix() for name in files}
    for file in sorted((root / WEIGHTS_DIR).rglob("*")):
        if file.is_file() and file.relative_to(root).as_posix() not in listed:
            raise BundleError(f"{file}: a weight file that {MANIFEST} does not list (the bundle was altered)")


def _member(root: Path, entry: dict[str, Any]) -> BundleMember:
    settings = ModelSettings.from_dict(entry["settings"])
    return BundleMember(settings.name, settings, tuple(root / name for name in entry["weights"]))


def _get(path: Path, manifest: dict[str, Any], key: str, kind: type) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise BundleError(f"{path}: key {key} must be a {kind.__name__}, got {value!r}")
    return value


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(size) for size in value)
