"""A training job's bookkeeping, apart from the loop: the per-epoch checkpoint a killed job resumes
from, the settings digest and input fingerprint that decide whether it may, and the job's outputs
(``metrics.csv``, ``run.yaml``, ``final.pt``) with the versions that produced them.

The checkpoint lives outside the rule's declared outputs (Snakemake would delete those before a
rerun). Because every random draw of an epoch is seeded by (seed, fold, epoch), a job resumed from it
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import hpa_pipeline
from hpa_pipeline.io.files import atomic_file, write_text_atomic
from hpa_pipeline.settings import ModelSettings

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


def input_fingerprint(paths: list[Path]) -> str:
    """Identifies the versions of the inputs: stores are replaced whole, so their root file's mtime
    changes exactly when they are rebuilt; a checkpoint made from other inputs is not resumed."""
    digest = hashlib.sha256()
    for path in paths:
        marker = path / "zarr.json" if path.is_dir() else path
        digest.update(f"{path}:{marker.stat().st_mtime_ns if marker.exists() else -1}\n".encode())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of what determines a run's numbers."""
    import timm

    return {
        "hpa_pipeline": hpa_pipeline.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per epoch; columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def save_checkpoint(
    path: Path,
    *,
    epoch: int,
    fold: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    metrics: list[dict[str, Any]],
    settings: ModelSettings,
    inputs: str,
    swa: dict[str, Any] | None = None,
) -> None:
    """Write the state after ``epoch`` (0-based) atomically, so a kill never leaves half a checkpoint.

    ``swa`` is the state of the weight average (checkpoint averaging), when the model has one.
    """
    state = {
        "epoch": epoch,
        "fold": fold,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "metrics": metrics,
        "settings_digest": settings.digest(),
        "inputs": inputs,
    }
    if swa is not None:
        state["swa"] = swa
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def resume(
    path: Path,
    *,
    settings: ModelSettings,
    fold: int,
    inputs: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    swa: Any = None,
) -> tuple[list[dict[str, Any]], int]:
    """Load the checkpoint at ``path`` into the model, optimizer and scaler (and the weight average
    ``swa``, a :class:`~hpa_pipeline.train.swa.WeightAverage`) when it belongs to the same settings,
    fold and inputs.

    Returns:
        The metric rows of the epochs done and the epoch to start from (``[], 0`` without a usable
        checkpoint).
    """
    if not path.is_file():
        return [], 0
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    same = (
        checkpoint.get("settings_digest") == settings.digest()
        and checkpoint.get("fold") == fold
        and checkpoint.get("inputs") == inputs
    )
    if not same:
        log.info("ignoring %s: it belongs to other settings or inputs", path)
        return [], 0
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    if swa is not None:
        swa.load_state_dict(checkpoint.get("swa"))
    start_epoch = checkpoint["epoch"] + 1
    log.info("resuming from %s after epoch %d", path, start_epoch)
    return checkpoint["metrics"], start_epoch


def write_outputs(
    out_dir: Path,
    *,
    model: torch.nn.Module,
    settings: ModelSettings,
    fold: int,
    metrics: list[dict[str, Any]],
    device: str,
    threads: int,
    inputs: list[Path],
) -> None:
    """Write ``metrics.csv``, ``run.yaml`` (resolved settings, seed, versions, device, inputs) and
    ``final.pt`` (weights with the settings they were trained under), ``final.pt`` last."""
    write_metrics_csv(out_dir / "metrics.csv", metrics)
    final = {
        "model": model.state_dict(),
        "settings": settings.to_dict(),
        "fold": fold,
        "versions": versions(),
        "seed": settings.seed,
    }
    run = {
        "settings": settings.to_dict(),
        "fold": fold,
        "seed": settings.seed,
        "versions": versions(),
        "device": device,
        "threads": threads,
        "inputs": [str(path) for path in inputs],
    }
    write_text_atomic(out_dir / "run.yaml", yaml.safe_dump(run, sort_keys=False))
    with atomic_file(out_dir / "final.pt", "wb") as handle:
        torch.save(final, handle)
