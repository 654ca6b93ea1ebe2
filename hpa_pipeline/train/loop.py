"""The training loop (rule train_model): epochs of optimisation steps and per-epoch validation.

Resuming, fingerprints, versions and the job's output files are :mod:`hpa_pipeline.train.checkpoints`'.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import CellTable, read_cell_table
from hpa_pipeline.io.folds import LabelledImages, read_labelled_images
from hpa_pipeline.io.predictions import PredictionSet, align_to_cells, read_predictions
from hpa_pipeline.kaggle.images2018 import macro_f1
from hpa_pipeline.nets.devices import amp_dtype, autocast_context, claim_device, configure_threads
from hpa_pipeline.nets.models import compile_model, create_model, create_optimizer
from hpa_pipeline.nets.tta import predict_rows
from hpa_pipeline.progress import progress
from hpa_pipeline.scores import mean_average_precision
from hpa_pipeline.settings import ModelData, ModelSettings
from hpa_pipeline.train.checkpoints import (
    CHECKPOINT_NAME,
    input_fingerprint,
    resume,
    save_checkpoint,
    write_metrics_csv,
    write_outputs,
)
from hpa_pipeline.train.datasets import (
    CamTrainingSet,
    CellCropSet,
    EpochSampler,
    ImageTrainingSet,
    cell_targets_from_images,
    collate_cam,
    refine_pseudo_labels,
)
from hpa_pipeline.train.losses import combined_loss
from hpa_pipeline.train.schedule import lr_at_epoch, set_lr, step_lr
from hpa_pipeline.train.steps import cam_consistency_loss, cell_crop_loss, image_label_loss
from hpa_pipeline.train.swa import WeightAverage, is_swa_epoch, recompute_batchnorm

log = logging.getLogger(__name__)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, fold, epoch, ...), stable across runs and platforms."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer:
    """Trains one model on one fold.

    Args:
        settings: the model's resolved settings.
        fold: the held-out fold.
        data: input paths.
        device: the claimed torch device.
        threads: CPU threads (torch intra-op) and loader workers.
    """

    def __init__(self, settings: ModelSettings, fold: int, data: ModelData, device: torch.device, threads: int) -> None:
        if not 0 <= fold < settings.n_folds:
            raise InputDataError(f"fold {fold} is outside 0..{settings.n_folds - 1}")
        self.settings, self.fold, self.data, self.device = settings, fold, data, device
        self.workers = max(0, min(threads - 1, 8))
        self.images: LabelledImages = read_labelled_images(data.index_paths, data.folds_paths, settings.n_classes)
        if settings.image_level:  # the image-level task has no cells: every image has zero
            n = len(self.images.ids)
            self.cells: CellTable = CellTable(
                self.images.ids, np.zeros(n + 1, np.int64), np.zeros(0, np.int32), datasets=self.images.datasets
            )
        else:
            self.cells = read_cell_table(data.cells_paths).identity()
        if self.cells.image_keys() != self.images.image_keys():
            raise InputDataError("the cell tables do not list the training images in index order (rebuild them)")
        self.train_rows = np.flatnonzero((self.images.folds != fold) & self.images.trainable)
        self.valid_rows = np.flatnonzero(self.images.folds == fold)
        if not len(self.train_rows):
            raise InputDataError(f"fold {fold}: no training images")
        log.info(
            "fold %d: training on %s images, validating on %s",
            fold,
            _count_by_dataset(self.images.datasets, self.train_rows),
            _count_by_dataset(self.images.datasets, self.valid_rows),
        )
        self.cell_targets = self._cell_targets()
        torch.manual_seed(derive_seed(settings.seed, fold))
        self.model = create_model(
            settings.kind,
            settings.backbone,
            pretrained=settings.pretrained,
            pretrained_file=settings.pretrained_file,
            init_checkpoint=data.init_checkpoint,
            cosine_head=settings.cosine_head,
            instance_norm_input=settings.instance_norm_input,
            num_classes=settings.n_classes,
            head=settings.head,
        ).to(device)
        # channels-last feeds cuDNN's tensor-core convolutions without layout transposes; on the CPU
        # the default layout is kept (and with it the CPU results)
        self.channels_last = settings.channels_last and device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the compiled module shares the model's parameters: checkpoints and validation use self.model
        self.step_model = compile_model(self.model) if settings.compile else self.model
        self.optimizer = create_optimizer(
            settings.optimizer, self.model.parameters(), settings.lr, weight_decay=settings.weight_decay
        )
        self.amp = amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        # the model's own loss setting, else the original's (focal on image labels, BCE on cell targets);
        # the image-level task has no other default than focal
        self.loss_fn = (
            partial(
                combined_loss,
                weights=settings.loss,
                focal_gamma=settings.focal_gamma,
                hard_k=settings.hard_example_k,
            )
            if settings.loss
            else None
        )
        if settings.image_level and self.loss_fn is None:
            self.loss_fn = partial(combined_loss, weights={"focal": 1.0}, focal_gamma=settings.focal_gamma)
        self.swa = WeightAverage() if settings.swa else None
        self.arrays = data.open_arrays(settings.kind, settings.task)
        if settings.kind == "image":
            if any(len(self.arrays[name]) != len(self.images.ids) for name in self.arrays):
                raise InputDataError("image/mask stores and the index differ in their number of images")
        elif len(self.arrays["crops"]) != self.cells.n_cells:
            raise InputDataError("crop stores and cell tables differ in their number of cells")

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of model inputs on the device, channels-last when the model is."""
        if self.channels_last:
            return batch.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(self.device, non_blocking=True)

    def _cell_targets(self) -> np.ndarray | None:
        """Pseudo labels aligned with the cell index, the image labels for cell models without them."""
        if self.data.pseudo_labels is not None:
            pseudo = read_predictions(self.data.pseudo_labels).mean_views()
            aligned = align_to_cells(pseudo, self.cells, str(self.data.pseudo_labels))
            return refine_pseudo_labels(
                aligned.probs[:, :, 0],
                self.settings.pseudo_label_sharpening,
                cell_targets_from_images(self.cells, self.images.labels),
                self.settings.pseudo_labels_within_image_labels,
                self.settings.pseudo_label_weight,
            )
        if self.settings.kind == "cell":
            return cell_targets_from_images(self.cells, self.images.labels)
        return None

    # ------------------------------------------------------------------------------------ epochs

    def _loader(self, seed: int) -> tuple[DataLoader, EpochSampler]:
        settings = self.settings
        collate = None
        if settings.image_level:
            dataset: ImageTrainingSet | CamTrainingSet | CellCropSet = ImageTrainingSet(
                self.arrays["images"],
                self.train_rows,
                self.images.labels,
                settings.crop_size,
                settings.hflip,
                seed,
            )
        elif settings.kind == "image":
            dataset = CamTrainingSet(
                self.arrays["images"],
                self.arrays["masks"],
                self.train_rows,
                self.images.labels,
                self.cells,
                self.cell_targets,
                settings.crop_size,
                settings.hflip,
                seed,
            )
            collate = collate_cam
        else:
            rows = self.cells.cell_rows(self.train_rows)
            dataset = CellCropSet(self.arrays["crops"], rows, self.cell_targets[rows])
        sampler = EpochSampler(len(dataset), seed)
        loader = DataLoader(
            dataset,
            batch_size=settings.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            collate_fn=collate,
            drop_last=len(dataset) > settings.batch_size,
            persistent_workers=self.workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        return loader, sampler

    def train_epoch(self, loader: DataLoader, sampler: EpochSampler, epoch: int) -> dict[str, float]:
        settings = self.settings
        sampler.set_epoch(epoch)
        if settings.lr_steps:
            lr = step_lr(epoch, settings.lr_steps)
        else:
            lr = lr_at_epoch(epoch, settings.lr, settings.epochs, settings.warmup_epochs, settings.warmup_factor)
        set_lr(self.optimizer, lr)
        generator = torch.Generator().manual_seed(derive_seed(settings.seed, self.fold, epoch, 1))
        self.model.train()
        # Losses accumulate on the device in float64 (as Python floats would) and are read once per
        # epoch: reading them per step would make the host wait for every step to finish.
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        steps = 0
        for batch in progress(loader, f"epoch {epoch + 1}/{settings.epochs}", total=len(loader), unit="batch"):
            with autocast_context(self.device):
                if settings.image_level:
                    parts = image_label_loss(
                        self.step_model,
                        self._to_device(batch["image"]),
                        batch["labels"].to(self.device, non_blocking=True),
                        self.loss_fn,
                    )
                elif settings.kind == "image":
                    pseudo = batch.get("pseudo")
                    parts = cam_consistency_loss(
                        self.step_model,
                        self._to_device(batch["image"]),
                        batch["mask"].to(self.device, non_blocking=True),
                        batch["labels"].to(self.device, non_blocking=True),
                        None if pseudo is None else pseudo.to(self.device, non_blocking=True),
                        generator,
                        settings.consistency_weight,
                        settings.focal_gamma,
                        cells=batch["cells"],
                        class_loss_fn=self.loss_fn,
                    )
                else:
                    parts = cell_crop_loss(
                        self.step_model,
                        self._to_device(batch["crop"]),
                        batch["target"].to(self.device, non_blocking=True),
                        generator,
                        loss_fn=self.loss_fn,
                    )
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(parts.total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                parts.total.backward()
                self.optimizer.step()
            sums += torch.stack([parts.total, parts.class_loss, parts.consistency_loss]).detach().double()
            steps += 1
        row = {"epoch": epoch + 1, "lr": lr}
        names = ("loss", "class_loss", "consistency_loss")
        row.update({f"train_{name}": value / max(steps, 1) for name, value in zip(names, sums.tolist())})
        if settings.kind == "cell" or settings.image_level:
            del row["train_consistency_loss"]
        return row

    def average_weights(self, loader: DataLoader, sampler: EpochSampler) -> int:
        """Load the weight average into the model and recompute its BatchNorm statistics on the
        training data (one pass over the epoch ``settings.epochs``'s batches, no update).

        Returns:
            The number of epochs averaged (0: no average, the model is left as it is).
        """
        if self.swa is None or not self.swa.count:
            return 0
        self.swa.apply_to(self.model)
        sampler.set_epoch(self.settings.epochs)
        key = "crop" if self.settings.kind == "cell" else "image"
        recompute_batchnorm(self.model, (self._to_device(batch[key]) for batch in loader))
        return self.swa.count

    # -------------------------------------------------------------------------------- validation

    def predict(self, rows: np.ndarray, n_tta: int, desc: str = "predict") -> PredictionSet:
        """Predictions of the current model for the training-pool images ``rows``."""
        return predict_rows(self.model, self.settings, rows, self.cells, n_tta, desc=desc, **self.arrays)

    def validate(self) -> dict[str, float]:
        """Image-level mAP and macro F1 and cell-level mAP against the weak labels, on the held-out fold."""
        if not len(self.valid_rows):
            return {}
        predictions = self.predict(self.valid_rows, n_tta=1, desc="validate")
        image_targets = self.images.labels[self.valid_rows]
        image_scores = predictions.image_probs[:, :, 0]
        clipped = np.clip(image_scores, 1e-7, 1 - 1e-7)
        bce = -np.mean(image_targets * np.log(clipped) + (1 - image_targets) * np.log(1 - clipped))
        metrics = {
            "valid_image_bce": float(bce),
            "valid_image_map": mean_average_precision(image_targets, image_scores),
            "valid_image_macro_f1": macro_f1(image_targets > 0.5, image_scores >= 0.5),
        }
        if self.settings.image_level:
            return metrics
        cell_targets = image_targets[np.repeat(np.arange(len(self.valid_rows)), np.diff(predictions.offsets))]
        cell_scores = predictions.probs[:, :, 0]
        metrics["valid_cell_map"] = (
            mean_average_precision(cell_targets, cell_scores) if len(cell_scores) else float("nan")
        )
        return metrics


def train_model(
    settings: ModelSettings,
    fold: int,
    data: ModelData,
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
        checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
        rows, start_epoch = resume(
            checkpoint_path,
            settings=settings,
            fold=fold,
            inputs=fingerprint,
            model=trainer.model,
            optimizer=trainer.optimizer,
            scaler=trainer.scaler,
            device=claim.torch_device,
            swa=trainer.swa,
        )
        loader, sampler = trainer._loader(derive_seed(settings.seed, fold))
        for epoch in range(start_epoch, settings.epochs):
            started = time.perf_counter()
            row = trainer.train_epoch(loader, sampler, epoch)
            if trainer.swa is not None and is_swa_epoch(epoch + 1, settings.swa):
                trainer.swa.update(trainer.model)
            if (epoch + 1) % settings.validate_every == 0 or epoch + 1 == settings.epochs:
                row.update(trainer.validate())
            row["seconds"] = round(time.perf_counter() - started, 3)
            rows.append(row)
            log.info(
                "epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
            )
            save_checkpoint(
                checkpoint_path,
                epoch=epoch,
                fold=fold,
                model=trainer.model,
                optimizer=trainer.optimizer,
                scaler=trainer.scaler,
                metrics=rows,
                settings=settings,
                inputs=fingerprint,
                swa=None if trainer.swa is None else trainer.swa.state_dict(),
            )
            write_metrics_csv(out_dir / "metrics.csv", rows)
        averaged = trainer.average_weights(loader, sampler)
        if averaged:
            # the last row gains the averaged model's validation: what prediction will use
            rows[-1].update({f"swa_{key}": value for key, value in trainer.validate().items()})
            rows[-1]["swa_epochs"] = averaged
            log.info("weights of %d epochs averaged, BatchNorm recomputed: %s", averaged, rows[-1])
        write_outputs(
            out_dir,
            model=trainer.model,
            settings=settings,
            fold=fold,
            metrics=rows,
            device=claim.device,
            threads=threads,
            inputs=data.all_paths(),
        )


def _count_by_dataset(datasets: list[str], rows: np.ndarray) -> str:
    """``12 (train 8, pubhpa 4)``: how many of ``rows`` each dataset holds."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[datasets[row]] = counts.get(datasets[row], 0) + 1
    return f"{len(rows)} ({', '.join(f'{name} {n}' for name, n in counts.items())})"
