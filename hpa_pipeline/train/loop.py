"""The training loop: epochs, per-epoch validation metrics, checkpoints that resume exactly.

A checkpoint is written after every epoch outside the rule's declared outputs (Snakemake would delete
those before a rerun). A killed training restarts from its last epoch and, because every random draw
of an epoch is seeded by (seed, fold, epoch), ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

import hpa_pipeline
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file, write_text_atomic
from hpa_pipeline.labels import N_CLASSES
from hpa_pipeline.predict import predict_cam_cells, predict_cell_crops
from hpa_pipeline.predictions import PredictionSet, align_to_cells, read_predictions
from hpa_pipeline.progress import progress
from hpa_pipeline.train.data import (
    CamTrainingSet,
    CellCropSet,
    CellIndex,
    EpochSampler,
    LabelledImages,
    ShardedArray,
    cell_targets_from_images,
    collate_cam,
    normalize_images,
    read_cell_index,
    read_labelled_images,
)
from hpa_pipeline.train.devices import (
    amp_dtype,
    autocast_context,
    claim_device,
    configure_threads,
)
from hpa_pipeline.train.models import create_model, create_optimizer
from hpa_pipeline.train.schedule import lr_at_epoch, set_lr
from hpa_pipeline.train.settings import ModelSettings
from hpa_pipeline.train.steps import cam_consistency_loss, cell_crop_loss

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainingData:
    """Paths of everything a model of one kind reads (shards of all training datasets, in order)."""

    index_paths: list[Path]
    folds_paths: list[Path]
    cells_paths: list[Path]
    images_paths: list[Path] = field(default_factory=list)  # image models
    masks_paths: list[Path] = field(default_factory=list)  # image models
    crops_paths: list[Path] = field(default_factory=list)  # cell models
    pseudo_labels: Path | None = None
    init_checkpoint: Path | None = None

    def all_paths(self) -> list[Path]:
        extra = [p for p in (self.pseudo_labels, self.init_checkpoint) if p is not None]
        return [*self.index_paths, *self.folds_paths, *self.cells_paths, *self.images_paths,
                *self.masks_paths, *self.crops_paths, *extra]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, fold, epoch, ...), stable across runs and platforms."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


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


def _average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the step precision-recall curve (sklearn's average_precision_score), ties grouped."""
    order = np.argsort(-scores, kind="mergesort")
    targets, scores = targets[order], scores[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(targets)[last_of_each_score]
    precision = true_positives / (last_of_each_score + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro average precision over the classes that have a positive (NaN if none has)."""
    present = np.flatnonzero(targets.sum(axis=0) > 0)
    if not len(present):
        return float("nan")
    return float(np.mean([_average_precision(targets[:, c], scores[:, c]) for c in present]))


def macro_f1(targets: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Macro F1 at ``threshold`` over the classes that have a positive (a class never predicted scores 0)."""
    present = np.flatnonzero(targets.sum(axis=0) > 0)
    if not len(present):
        return float("nan")
    truth, predicted = targets[:, present] > 0, scores[:, present] >= threshold
    true_positives = (truth & predicted).sum(axis=0)
    return float(np.mean(2 * true_positives / (truth.sum(axis=0) + predicted.sum(axis=0))))


class Trainer:
    """Trains one model on one fold.

    Args:
        settings: the model's resolved settings.
        fold: the held-out fold.
        data: input paths.
        device: the claimed torch device.
        threads: CPU threads (torch intra-op) and loader workers.
    """

    def __init__(self, settings: ModelSettings, fold: int, data: TrainingData, device: torch.device, threads: int) -> None:
        if not 0 <= fold < settings.n_folds:
            raise InputDataError(f"fold {fold} is outside 0..{settings.n_folds - 1}")
        self.settings, self.fold, self.data, self.device = settings, fold, data, device
        self.workers = max(0, min(threads - 1, 8))
        self.images: LabelledImages = read_labelled_images(data.index_paths, data.folds_paths)
        self.cells: CellIndex = read_cell_index(data.cells_paths)
        if self.cells.ids != self.images.ids:
            raise InputDataError("the cell tables do not list the training images in index order (rebuild them)")
        self.train_rows = np.flatnonzero(self.images.folds != fold)
        self.valid_rows = np.flatnonzero(self.images.folds == fold)
        if not len(self.train_rows):
            raise InputDataError(f"fold {fold}: no training images")
        self.cell_targets = self._cell_targets()
        torch.manual_seed(derive_seed(settings.seed, fold))
        self.model = create_model(
            settings.kind, settings.backbone, pretrained=settings.pretrained, pretrained_file=settings.pretrained_file,
            init_checkpoint=data.init_checkpoint, cosine_head=settings.cosine_head,
            instance_norm_input=settings.instance_norm_input,
        ).to(device)
        self.optimizer = create_optimizer(settings.optimizer, self.model.parameters(), settings.lr, weight_decay=settings.weight_decay)
        self.amp = amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        if settings.kind == "image":
            self.image_array = ShardedArray(data.images_paths, "images", "images")
            self.mask_array = ShardedArray(data.masks_paths, "masks_resized", "masks")
            if len(self.image_array) != len(self.images.ids) or len(self.mask_array) != len(self.images.ids):
                raise InputDataError("image/mask stores and the index differ in their number of images")
        else:
            self.crop_array = ShardedArray(data.crops_paths, "crops", "crops")
            if len(self.crop_array) != self.cells.n_cells:
                raise InputDataError("crop stores and cell tables differ in their number of cells")

    def _cell_targets(self) -> np.ndarray | None:
        """Pseudo labels aligned with the cell index, the image labels for cell models without them."""
        if self.data.pseudo_labels is not None:
            pseudo = read_predictions(self.data.pseudo_labels).mean_views()
            aligned = align_to_cells(pseudo, self.cells.ids, self.cells.offsets, self.cells.instance, str(self.data.pseudo_labels))
            return aligned.probs[:, :, 0]
        if self.settings.kind == "cell":
            return cell_targets_from_images(self.cells, self.images.labels)
        return None

    # ------------------------------------------------------------------------------------ epochs

    def _loader(self, seed: int) -> tuple[DataLoader, EpochSampler]:
        settings = self.settings
        if settings.kind == "image":
            dataset = CamTrainingSet(
                self.image_array, self.mask_array, self.train_rows, self.images.labels, self.cells,
                self.cell_targets, settings.crop_size, settings.hflip, seed,
            )
            collate = collate_cam
        else:
            rows = self.cells.cell_rows(self.train_rows)
            dataset = CellCropSet(self.crop_array, rows, self.cell_targets[rows])
            collate = None
        sampler = EpochSampler(len(dataset), seed)
        loader = DataLoader(
            dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=self.workers,
            collate_fn=collate, drop_last=len(dataset) > settings.batch_size,
            persistent_workers=self.workers > 0, pin_memory=self.device.type == "cuda",
        )
        return loader, sampler

    def train_epoch(self, loader: DataLoader, sampler: EpochSampler, epoch: int) -> dict[str, float]:
        settings = self.settings
        sampler.set_epoch(epoch)
        lr = lr_at_epoch(epoch, settings.lr, settings.epochs, settings.warmup_epochs, settings.warmup_factor)
        set_lr(self.optimizer, lr)
        generator = torch.Generator().manual_seed(derive_seed(settings.seed, self.fold, epoch, 1))
        self.model.train()
        sums = {"loss": 0.0, "class_loss": 0.0, "consistency_loss": 0.0}
        steps = 0
        for batch in progress(loader, f"epoch {epoch + 1}/{settings.epochs}", total=len(loader), unit="batch"):
            with autocast_context(self.device):
                if settings.kind == "image":
                    pseudo = batch.get("pseudo")
                    parts = cam_consistency_loss(
                        self.model, batch["image"].to(self.device, non_blocking=True),
                        batch["mask"].to(self.device, non_blocking=True),
                        batch["labels"].to(self.device), None if pseudo is None else pseudo.to(self.device),
                        generator, settings.consistency_weight,
                    )
                else:
                    parts = cell_crop_loss(self.model, batch["crop"].to(self.device, non_blocking=True),
                                           batch["target"].to(self.device), generator)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(parts.total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                parts.total.backward()
                self.optimizer.step()
            sums["loss"] += float(parts.total.detach())
            sums["class_loss"] += float(parts.class_loss.detach())
            sums["consistency_loss"] += float(parts.consistency_loss.detach())
            steps += 1
        row = {"epoch": epoch + 1, "lr": lr}
        row.update({f"train_{key}": value / max(steps, 1) for key, value in sums.items()})
        if settings.kind == "cell":
            del row["train_consistency_loss"]
        return row

    # -------------------------------------------------------------------------------- validation

    def predict(self, rows: np.ndarray, n_tta: int, desc: str = "predict") -> PredictionSet:
        """Predictions of the current model for the training-pool images ``rows``."""
        return predict_rows(self.model, self.settings, rows, self.cells, n_tta,
                            images=getattr(self, "image_array", None), masks=getattr(self, "mask_array", None),
                            crops=getattr(self, "crop_array", None), desc=desc)

    def validate(self) -> dict[str, float]:
        """Image-level mAP and macro F1 and cell-level mAP against the weak labels, on the held-out fold."""
        if not len(self.valid_rows):
            return {}
        predictions = self.predict(self.valid_rows, n_tta=1, desc="validate")
        image_targets = self.images.labels[self.valid_rows]
        image_scores = predictions.image_probs[:, :, 0]
        cell_targets = image_targets[np.repeat(np.arange(len(self.valid_rows)), np.diff(predictions.offsets))]
        cell_scores = predictions.probs[:, :, 0]
        clipped = np.clip(image_scores, 1e-7, 1 - 1e-7)
        bce = -np.mean(image_targets * np.log(clipped) + (1 - image_targets) * np.log(1 - clipped))
        return {
            "valid_image_bce": float(bce),
            "valid_image_map": mean_average_precision(image_targets, image_scores),
            "valid_image_macro_f1": macro_f1(image_targets, image_scores),
            "valid_cell_map": mean_average_precision(cell_targets, cell_scores) if len(cell_scores) else float("nan"),
        }


def predict_rows(
    model: torch.nn.Module,
    settings: ModelSettings,
    rows: np.ndarray,
    cells: CellIndex,
    n_tta: int,
    *,
    images: ShardedArray | None = None,
    masks: ShardedArray | None = None,
    crops: ShardedArray | None = None,
    desc: str = "predict",
) -> PredictionSet:
    """Predict the images ``rows`` (of ``images``/``masks`` or, for cell models, of the cell index).

    Image models see the whole image with its mask; a cell's probability is the sigmoid of the mean
    CAM logit over its pixels. Cell models classify each crop; their image probability is the
    maximum over the image's cells (0 for an image without cells).

    Returns:
        The predictions in the order of ``rows``, with ``n_tta`` views.
    """
    batch_size = settings.eval_batch_size
    selected = cells.subset(np.asarray(rows, dtype=np.int64))
    probs: list[np.ndarray] = []
    image_probs: list[np.ndarray] = []
    if settings.kind == "image":
        for start in progress(range(0, len(rows), batch_size), desc, total=-(-len(rows) // batch_size), unit="batch"):
            chunk = rows[start : start + batch_size]
            batch_images = normalize_images(np.stack([images[int(row)] for row in chunk]))
            batch_masks = torch.from_numpy(np.stack([masks[int(row)] for row in chunk]).astype(np.int64))
            instances = [torch.from_numpy(cells.instances_of(int(row)).astype(np.int64)) for row in chunk]
            result = predict_cam_cells(model, batch_images, batch_masks, instances, n_tta)
            if bool(result.fallback.any()):
                raise InputDataError("a cell has no pixel in its mask (the cell table and the masks disagree)")
            probs.append(result.cell_probs.numpy())
            image_probs.append(result.image_probs.numpy())
    else:
        cell_rows = cells.cell_rows(np.asarray(rows, dtype=np.int64))
        for start in progress(range(0, len(cell_rows), batch_size), desc, total=-(-len(cell_rows) // batch_size), unit="batch"):
            chunk = cell_rows[start : start + batch_size]
            batch = torch.from_numpy(np.stack([crops[int(row)] for row in chunk]))
            probs.append(predict_cell_crops(model, batch, n_tta).numpy())
    cell_probs = np.concatenate(probs) if probs else np.zeros((0, N_CLASSES, n_tta), np.float32)
    if settings.kind == "image":
        per_image = np.concatenate(image_probs) if image_probs else np.zeros((0, N_CLASSES, n_tta), np.float32)
    else:
        per_image = np.zeros((len(rows), N_CLASSES, n_tta), np.float32)
        for position in range(len(rows)):
            block = cell_probs[selected.offsets[position] : selected.offsets[position + 1]]
            if len(block):
                per_image[position] = block.max(axis=0)
    return PredictionSet(selected.ids, selected.offsets, selected.instance, cell_probs.astype(np.float32), per_image.astype(np.float32))


def train_model(
    settings: ModelSettings,
    fold: int,
    data: TrainingData,
    out_dir: Path,
    checkpoint_dir: Path,
    device: str = "auto",
    threads: int = 1,
) -> None:
    """Train one model on one fold and write ``final.pt``, ``metrics.csv`` and ``run.yaml``.

    Args:
        settings: the model's resolved settings.
        fold: the held-out fold.
        data: input paths.
        out_dir: the rule's output folder.
        checkpoint_dir: where the per-epoch checkpoint lives (kept across reruns).
        device: "auto", "cpu", "cuda" or "cuda:N".
        threads: CPU threads.
    """
    configure_threads(threads)
    fingerprint = input_fingerprint(data.all_paths())
    with claim_device(device) as claim:
        log.info("model %s fold %d on %s", settings.name, fold, claim.device)
        trainer = Trainer(settings, fold, data, claim.torch_device, threads)
        rows: list[dict[str, Any]] = []
        start_epoch = 0
        checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
        if checkpoint_path.is_file():
            checkpoint = torch.load(checkpoint_path, map_location=claim.torch_device, weights_only=False)
            if checkpoint.get("settings_digest") == settings.digest() and checkpoint.get("fold") == fold \
                    and checkpoint.get("inputs") == fingerprint:
                trainer.model.load_state_dict(checkpoint["model"])
                trainer.optimizer.load_state_dict(checkpoint["optimizer"])
                if trainer.scaler is not None and checkpoint.get("scaler"):
                    trainer.scaler.load_state_dict(checkpoint["scaler"])
                rows = checkpoint["metrics"]
                start_epoch = checkpoint["epoch"] + 1
                log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)
            else:
                log.info("ignoring %s: it belongs to other settings or inputs", checkpoint_path)
        loader, sampler = trainer._loader(derive_seed(settings.seed, fold))
        for epoch in range(start_epoch, settings.epochs):
            started = time.perf_counter()
            row = trainer.train_epoch(loader, sampler, epoch)
            if (epoch + 1) % settings.validate_every == 0 or epoch + 1 == settings.epochs:
                row.update(trainer.validate())
            row["seconds"] = round(time.perf_counter() - started, 3)
            rows.append(row)
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
            state = {
                "epoch": epoch, "fold": fold, "model": trainer.model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
                "metrics": rows, "settings_digest": settings.digest(), "inputs": fingerprint,
            }
            with atomic_file(checkpoint_path, "wb") as handle:
                torch.save(state, handle)
            write_metrics_csv(out_dir / "metrics.csv", rows)
        write_metrics_csv(out_dir / "metrics.csv", rows)
        final = {
            "model": trainer.model.state_dict(), "settings": settings.to_dict(), "fold": fold,
            "versions": versions(), "seed": settings.seed,
        }
        run = {
            "settings": settings.to_dict(), "fold": fold, "seed": settings.seed, "versions": versions(),
            "device": claim.device, "threads": threads, "inputs": [str(path) for path in data.all_paths()],
        }
        write_text_atomic(out_dir / "run.yaml", yaml.safe_dump(run, sort_keys=False))
        with atomic_file(out_dir / "final.pt", "wb") as handle:
            torch.save(final, handle)
