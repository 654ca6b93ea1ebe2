"""Checkpoint averaging (SWA, as pudae, 3rd in 2018, used it in his swa.py; bestfitting's recipe has none):
the weights of late epochs are averaged, then the BatchNorm statistics are recomputed on the training data,
because the running statistics of the averaged weights are not the average of the epochs' statistics.

A model's ``swa: {start_epoch, every}`` setting picks the epochs (1-based) ``start_epoch``,
``start_epoch + every``, ... up to the last; the averaged model is the ``final.pt`` prediction uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def is_swa_epoch(epoch: int, swa: dict[str, Any] | None) -> bool:
    """True when the weights after ``epoch`` (1-based) join the average."""
    if not swa:
        return False
    start, every = int(swa["start_epoch"]), int(swa.get("every") or 1)
    return epoch >= start and (epoch - start) % every == 0


class WeightAverage:
    """The running equal-weight average of a model's floating-point parameters and buffers."""

    def __init__(self) -> None:
        self.average: dict[str, Tensor] = {}
        self.count = 0

    def update(self, model: nn.Module) -> None:
        """Add the model's current weights to the average (float64 sums would be exact; float32 is enough)."""
        self.count += 1
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                self.average[name] = value.detach().clone()  # e.g. BatchNorm's num_batches_tracked
            elif name not in self.average:
                self.average[name] = value.detach().float().clone()
            else:
                self.average[name] += (value.detach().float() - self.average[name]) / self.count

    def apply_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (in its own dtypes)."""
        own = model.state_dict()
        model.load_state_dict({name: self.average[name].to(own[name].dtype) for name in own})

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "count": self.count}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.average = dict(state.get("average") or {})
        self.count = int(state.get("count") or 0)


def recompute_batchnorm(model: nn.Module, inputs: Iterable[Tensor]) -> int:
    """Recompute every BatchNorm layer's running mean and variance as the plain average over ``inputs``.

    Args:
        model: the model with averaged weights (its BatchNorm statistics are replaced).
        inputs: model inputs (already on the model's device), e.g. the training batches.

    Returns:
        The number of batches seen (0: no BatchNorm layer, nothing done).
    """
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    momenta = {layer: layer.momentum for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch counts equally
    was_training = model.training
    model.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in inputs:
                model(batch)
                seen += 1
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        model.train(was_training)
    return seen
