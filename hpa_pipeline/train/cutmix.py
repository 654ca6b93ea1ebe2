"""CutMix with an explicit generator, and its inverse for CAMs.

One box and one permutation per batch (as in the original). ``apply_cutmix`` pastes the box of
image ``perm[i]`` into image ``i``; ``invert_cutmix`` takes it back, so a CAM computed on the mixed
batch can be compared with the clean one pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hpa_pipeline.errors import PipelineError


@dataclass(frozen=True, eq=False)  # eq on a tensor field would be ambiguous
class CutMixParams:
    """One CutMix draw for a batch.

    Attributes:
        perm: (B,) int64 permutation on the CPU; image i receives the box of image perm[i].
        top, bottom, left, right: the box in image pixels, half-open ([top, bottom) x [left, right)).
        height, width: the image size the box refers to.
        lam: the Beta(1, 1) draw the box side was derived from (before clipping).
    """

    perm: Tensor
    top: int
    bottom: int
    left: int
    right: int
    height: int
    width: int
    lam: float


def sample_cutmix(batch_size: int, height: int, width: int, generator: torch.Generator) -> CutMixParams:
    """Draw a CutMix box and permutation.

    lambda ~ Beta(1, 1) (= uniform, drawn with ``torch.rand`` so the generator controls it); the box
    sides are ``size * sqrt(1 - lambda)``; the centre is uniform over the image and the box is
    clipped to it, so its area can be smaller than ``1 - lambda``.

    Args:
        batch_size: B.
        height: image height in pixels.
        width: image width in pixels.
        generator: a CPU ``torch.Generator``; the only source of randomness.

    Returns:
        The parameters, to use with ``apply_cutmix`` / ``invert_cutmix`` / ``mixed_fraction``.
    """
    lam = float(torch.rand((), generator=generator))
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (), generator=generator))
    cx = int(torch.randint(0, width, (), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    perm = torch.randperm(batch_size, generator=generator)
    return CutMixParams(perm, top, bottom, left, right, height, width, lam)


def _box_at(params: CutMixParams, height: int, width: int) -> tuple[int, int, int, int]:
    """The box scaled to a tensor of another spatial size (exact at the image size)."""
    if (height, width) == (params.height, params.width):
        return params.top, params.bottom, params.left, params.right
    sy, sx = height / params.height, width / params.width
    return round(params.top * sy), round(params.bottom * sy), round(params.left * sx), round(params.right * sx)


def _check_batch(x: Tensor, params: CutMixParams) -> None:
    if x.ndim < 3 or x.shape[0] != params.perm.numel():
        raise PipelineError(
            f"CutMix drawn for a batch of {params.perm.numel()} applied to a tensor of shape {tuple(x.shape)}"
        )


def apply_cutmix(x: Tensor, params: CutMixParams) -> Tensor:
    """Paste the box of image ``perm[i]`` into image ``i``.

    Args:
        x: (B, ..., H, W) tensor; the box is scaled when (H, W) is not the image size of ``params``.
        params: from ``sample_cutmix``.

    Returns:
        A new tensor; ``x`` is unchanged.
    """
    _check_batch(x, params)
    top, bottom, left, right = _box_at(params, x.shape[-2], x.shape[-1])
    out = x.clone()
    perm = params.perm.to(x.device)
    out[..., top:bottom, left:right] = x[..., top:bottom, left:right][perm]
    return out


def invert_cutmix(x: Tensor, params: CutMixParams) -> Tensor:
    """Undo ``apply_cutmix``: inside the box, image ``i`` gets back what its own pixels produced.

    Image i's pixels were pasted into mixed image j with perm[j] = i, i.e. j = perm^-1[i]; so the
    box of row i is taken from row perm^-1[i]. Outside the box nothing moves.

    Args:
        x: (B, ..., H, W) tensor computed on the mixed batch (e.g. a CAM upsampled to the image size).
        params: the parameters used for the mixing.

    Returns:
        A new tensor.
    """
    _check_batch(x, params)
    top, bottom, left, right = _box_at(params, x.shape[-2], x.shape[-1])
    out = x.clone()
    inverse = torch.argsort(params.perm).to(x.device)
    out[..., top:bottom, left:right] = x[..., top:bottom, left:right][inverse]
    return out


def mixed_fraction(params: CutMixParams) -> float:
    """Box area / image area: the share of each image that comes from its partner."""
    return (params.bottom - params.top) * (params.right - params.left) / (params.height * params.width)
