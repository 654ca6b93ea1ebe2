"""Learning-rate schedules: cosine decay per epoch with a linear warm-up factor (as in the original), or
the 2018 solutions' step schedule (``lr_steps``)."""

from __future__ import annotations

import math

import torch

from hpa_pipeline.errors import ConfigError


def lr_at_epoch(epoch: int, base_lr: float, epochs: int, warmup_epochs: int = 5, warmup_factor: float = 0.1) -> float:
    """Learning rate of a (0-based) epoch.

    ``0.5 * base_lr * (1 + cos(pi * epoch / epochs))``, times
    ``warmup_factor * (1 - epoch / warmup_epochs) + epoch / warmup_epochs`` while
    ``epoch < warmup_epochs``.

    Args:
        epoch: 0-based epoch.
        base_lr: peak learning rate.
        epochs: total epochs (the cosine reaches 0 at ``epochs``).
        warmup_epochs: length of the warm-up (0 disables it).
        warmup_factor: factor at epoch 0.

    Returns:
        The learning rate.
    """
    if epochs < 1:
        raise ConfigError(f"epochs = {epochs}: expected at least 1")
    if epoch < 0:
        raise ConfigError(f"epoch = {epoch}: expected >= 0")
    lr = 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))
    if epoch < warmup_epochs:
        ramp = epoch / warmup_epochs
        lr *= warmup_factor * (1.0 - ramp) + ramp
    return lr


def step_lr(epoch: int, steps: list[list[float]]) -> float:
    """The learning rate of a (0-based) epoch under a step schedule ``[[first_epoch, lr], ...]``: the lr
    of the last step that has started (the first step's before it starts)."""
    if not steps:
        raise ConfigError("lr_steps is empty: give [[epoch, lr], ...]")
    ordered = sorted((int(start), float(lr)) for start, lr in steps)
    current = ordered[0][1]
    for start, lr in ordered:
        if epoch >= start:
            current = lr
    return current


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
