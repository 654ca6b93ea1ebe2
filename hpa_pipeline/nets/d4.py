"""The dihedral group D4 on the last two (spatial) dims: training augmentation and test-time views."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from hpa_pipeline.errors import ConfigError


class D4View(NamedTuple):
    """One element of the dihedral group D4, applied in this order: vflip, hflip, rot90."""

    vflip: bool
    hflip: bool
    rot90: bool


# All 8 on/off combinations; the identity first, then the flips (training used hflip), then rot90.
D4_VIEWS: tuple[D4View, ...] = tuple(
    D4View(vflip, hflip, rot90) for rot90 in (False, True) for vflip in (False, True) for hflip in (False, True)
)


def tta_views(n: int) -> tuple[D4View, ...]:
    """The first ``n`` of ``D4_VIEWS`` (1 = identity only, 8 = full D4 as in the original)."""
    if not 1 <= n <= len(D4_VIEWS):
        raise ConfigError(f"n_tta = {n}: expected 1..{len(D4_VIEWS)} D4 views")
    return D4_VIEWS[:n]


def _view(k: int | D4View) -> D4View:
    if isinstance(k, D4View):
        return k
    if not 0 <= int(k) < len(D4_VIEWS):
        raise ConfigError(f"D4 view {k}: expected 0..{len(D4_VIEWS) - 1}")
    return D4_VIEWS[int(k)]


def d4_transform(x: Tensor, k: int | D4View) -> Tensor:
    """Apply a D4 element to the last two (spatial) dims, so images and masks move together.

    Args:
        x: (..., H, W) tensor.
        k: index into ``D4_VIEWS`` or a ``D4View``.

    Returns:
        The transformed tensor ((..., W, H) when the view rotates).
    """
    view = _view(k)
    if view.vflip:
        x = torch.flip(x, dims=(-2,))
    if view.hflip:
        x = torch.flip(x, dims=(-1,))
    if view.rot90:
        x = torch.rot90(x, 1, dims=(-2, -1))
    return x


def d4_inverse(x: Tensor, k: int | D4View) -> Tensor:
    """Undo ``d4_transform(., k)`` (the steps in reverse order, rotation backwards)."""
    view = _view(k)
    if view.rot90:
        x = torch.rot90(x, -1, dims=(-2, -1))
    if view.hflip:
        x = torch.flip(x, dims=(-1,))
    if view.vflip:
        x = torch.flip(x, dims=(-2,))
    return x
