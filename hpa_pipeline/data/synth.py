"""Synthetic HPA-SCC 2021 data in Kaggle's layout: RGBY fields of touching cells with per-cell weak labels.

The generator stands in for the real competition data in the embedded demo, the tests and the benchmarks.
Every field is drawn from a seeded ``numpy`` generator, so one seed always gives byte-identical files (with the
same numpy/OpenCV/scipy versions; float rounding may differ across versions or CPUs).

A field imitates an HPA confocal field of view (2048x2048 at full resolution, ~10-40 cells): irregular,
touching cells (a noisy, size-weighted Voronoi tessellation), some cut by the border, each with an irregular
nucleus; red (microtubules) and yellow (ER) fill the cytoplasm and fade towards the cell edge, blue shows the
nuclei, and green shows one or more of the 19 localisation patterns. Sizes scale with the cell size, so a 512x512
field with ~12 cells looks like a 2048x2048 field at 1/4 scale.

Weak labels follow the competition: an image carries 1-3 classes (Negative only alone); most cells show all or
some of them, some show none and are Negative in the per-cell truth.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile
from scipy.special import ndtri
from tqdm import tqdm

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.io.folders import SYNTHETIC_MARKER, holds_real_images
from hpa_pipeline.labels import CLASS_NAMES, N_CLASSES, NEGATIVE

#: Classes whose pattern lies inside the nucleus; a mitotic cell (no nuclear envelope) cannot show them.
NUCLEAR_CLASSES: frozenset[int] = frozenset({0, 1, 2, 3, 4, 5})
MITOTIC_SPINDLE: int = 11
#: Classes a mitotic cell can show next to the spindle (diffuse or scattered cytoplasmic patterns).
MITOTIC_COMPATIBLE: frozenset[int] = frozenset({6, 9, 11, 13, 14, 16, 17})
#: Free radius (px) of a typical cell on a full-resolution 2048x2048 HPA field (median cell area ~1e5 px);
#: texture sizes are given for this radius and scaled with the actual cell size.
REF_CELL_RADIUS: float = 180.0
#: PredictionString of every row of Kaggle's sample_submission.csv, kept verbatim for every size: class 0,
#: confidence 1, an empty mask whose RLE only decodes at 2048x2048 (it is a placeholder, not a prediction).
SAMPLE_PREDICTION: str = "0 1 eNoLCAgIMAEABJkBdQ=="

# Peak green brightness (0-255 scale, before per-image and per-cell variation) of each class: point-like
# patterns are brighter than diffuse ones, as in HPA stainings.
_GREEN_PEAK: dict[int, float] = {
    0: 80.0,
    1: 130.0,
    2: 160.0,
    3: 200.0,
    4: 150.0,
    5: 210.0,
    6: 150.0,
    7: 170.0,
    8: 200.0,
    9: 190.0,
    10: 190.0,
    11: 220.0,
    12: 230.0,
    13: 130.0,
    14: 170.0,
    15: 240.0,
    16: 75.0,
    17: 190.0,
}


@dataclass(frozen=True)
class FieldSpec:
    """What one field of a dataset holds (decided before it is rendered).

    Attributes:
        split: ``"train"``, ``"test"`` or ``"public"`` (the public-HPA mirror's images).
        index: position within the split.
        image_id: UUID-shaped Kaggle-like ID.
        height, width: field size in pixels.
        n_cells: number of cells (0 = empty field).
        classes: the image's classes (1-3; ``[18]`` alone for Negative).
    """

    split: str
    index: int
    image_id: str
    height: int
    width: int
    n_cells: int
    classes: tuple[int, ...]


@dataclass
class SynthField:
    """One rendered field.

    Attributes:
        channels: (4, H, W) uint8, channels red, green, blue, yellow.
        cell_mask: (H, W) uint16, 0 = background, 1..N = cells.
        nucleus_mask: (H, W) uint16, nucleus (or mitotic chromosomes) of cell k labelled k.
        cell_labels: cell id -> its true classes (``[18]`` for a cell that shows none of the image's classes).
        image_labels: the image-level label (the classes some cell shows; ``[18]`` for a Negative or empty field).
        mitotic: ids of the mitotic cells.
    """

    channels: np.ndarray
    cell_mask: np.ndarray
    nucleus_mask: np.ndarray
    cell_labels: dict[int, list[int]]
    image_labels: list[int]
    mitotic: list[int] = field(default_factory=list)


@dataclass
class _Cell:
    """Shape parameters of one cell (positions in field pixels, y first)."""

    cy: float
    cx: float
    r: float  # free radius: the cell's extent where no neighbour competes
    elong: float
    theta: float
    harm: np.ndarray  # (k, 2): amplitude, phase of angular harmonics 2.. of the outline
    mix: float  # angle mixing the two field-wide boundary-noise fields, so that each cell's outline differs
    rho: float  # nucleus radius / cell radius
    ndy: float
    ndx: float
    nelong: float
    ntheta: float
    nharm: np.ndarray
    mitotic: bool = False
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


# Standard normal quantiles of 65536 equal-probability bins: mapping random uint16 through this table gives
# Gaussian noise ~10x faster than Generator.standard_normal (which dominated the time of a 2048^2 field).
_GAUSS_LUT: np.ndarray = ndtri((np.arange(65536, dtype=np.float64) + 0.5) / 65536).astype(np.float32)


def _gauss(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 standard normal noise (quantised to 65536 levels, tails to about +-4.3)."""
    return _GAUSS_LUT[rng.integers(0, 65536, size=(h, w), dtype=np.uint16)]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, feature: float) -> np.ndarray:
    """Gaussian noise with features of about `feature` px, zero mean, unit std, (h, w) float32.

    Drawn on a coarse grid and upsampled (bicubic), which is far cheaper than blurring a full-size field.
    """
    step = max(1.0, feature)
    gh, gw = max(2, int(math.ceil(h / step)) + 3), max(2, int(math.ceil(w / step)) + 3)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    big = cv2.resize(coarse, (int(round(gw * step)), int(round(gh * step))), interpolation=cv2.INTER_CUBIC)
    big = big[int(step) : int(step) + h, int(step) : int(step) + w]
    if big.shape != (h, w):  # tiny fields: fall back to a plain resize
        big = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    std = float(big.std())
    return (big - float(big.mean())) / (std if std > 1e-6 else 1.0)


def _bandpass(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Difference-of-Gaussians filtered white noise (unit std): the raw material of fine textures."""
    white = _gauss(rng, h, w)
    a = cv2.GaussianBlur(white, (0, 0), max(0.5, sigma))
    b = cv2.GaussianBlur(white, (0, 0), max(1.0, 2.0 * sigma))
    band = a - b
    std = float(band.std())
    return band / (std if std > 1e-6 else 1.0)


def _shape_distance(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float, elong: float, theta: float, harm: np.ndarray
) -> np.ndarray:
    """Normalised distance of pixels from a lobed ellipse's centre: < 1 inside, 1 on the outline."""
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    a, b = radius * math.sqrt(elong), radius / math.sqrt(elong)
    base = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phi = np.arctan2(v / b, u / a)
    mod = np.ones_like(base)
    for k, (amp, phase) in enumerate(harm, start=2):
        mod += amp * np.cos(k * phi + phase)
    return (base / np.maximum(mod, 0.35)).astype(np.float32)


def _shape_distance_box(
    box: tuple[int, int, int, int], cy: float, cx: float, radius: float, elong: float, theta: float, harm: np.ndarray
) -> np.ndarray:
    """`_shape_distance` over the pixels of box (y0, y1, x0, x1).

    The distance is smooth, so it is evaluated on a grid of about 20 samples per radius and interpolated
    (bicubic): the trigonometry on every pixel of a 2048^2 field would take seconds.
    """
    y0, y1, x0, x1 = box
    step = max(1, int(radius / 20))
    if step == 1:
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        return _shape_distance(yy, xx, cy, cx, radius, elong, theta, harm)
    ny, nx = -(-(y1 - y0) // step), -(-(x1 - x0) // step)
    # Sample at the centres of step x step blocks, which is where cv2.resize puts its source samples.
    off = (step - 1) / 2
    yy = (y0 + off + step * np.arange(ny, dtype=np.float32))[:, None]
    xx = (x0 + off + step * np.arange(nx, dtype=np.float32))[None, :]
    coarse = _shape_distance(yy, xx, cy, cx, radius, elong, theta, harm)
    fine = cv2.resize(coarse, (nx * step, ny * step), interpolation=cv2.INTER_CUBIC)
    return fine[: y1 - y0, : x1 - x0]


def _sample_points(rng: np.random.Generator, mask: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """`k` random (y, x) positions inside a boolean mask (optionally weighted); empty array if the mask is."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0 or k <= 0:
        return np.zeros((0, 2), dtype=np.float64)
    if weights is not None:
        p = weights[ys, xs].astype(np.float64) + 1e-9
        idx = rng.choice(len(ys), size=k, p=p / p.sum())
    else:
        idx = rng.integers(0, len(ys), size=k)
    # Sub-pixel jitter so that dots do not sit on the integer grid.
    return np.stack([ys[idx], xs[idx]], axis=1) + rng.uniform(-0.5, 0.5, size=(k, 2))


_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions for small fields


def _fx(value: float) -> int:
    return int(round(value * (1 << _SHIFT)))


def _draw_dots(
    canvas: np.ndarray, rng: np.random.Generator, points: np.ndarray, radius: tuple[float, float], level=(0.5, 1.0)
) -> None:
    """Filled anti-aliased discs (uint8 canvas, maximum where they overlap)."""
    for y, x in points:
        r = rng.uniform(*radius)
        value = int(255 * rng.uniform(*level))
        cv2.circle(canvas, (_fx(x), _fx(y)), max(1, _fx(r)), value, -1, cv2.LINE_AA, _SHIFT)


def _draw_paths(canvas: np.ndarray, paths: list[np.ndarray], thickness: int, values: Sequence[float]) -> None:
    """Anti-aliased open polylines; each path is (n, 2) in (y, x)."""
    for path, value in zip(paths, values):
        pts = np.round(path[:, ::-1] * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], False, int(255 * value), thickness, cv2.LINE_AA, _SHIFT)


def _random_walks(
    rng: np.random.Generator,
    starts: np.ndarray,
    angles: np.ndarray,
    n_steps: int,
    step: float,
    wiggle: float,
    bend: np.ndarray | float = 0.0,
) -> list[np.ndarray]:
    """Curved paths: each step turns by `bend` (per path) + N(0, wiggle) radians (vectorised over all paths)."""
    n = len(starts)
    if n == 0:
        return []
    turns = rng.normal(0.0, wiggle, size=(n, n_steps)) + np.broadcast_to(np.asarray(bend, dtype=float), (n,))[:, None]
    heading = angles[:, None] + np.cumsum(turns, axis=1)
    dy, dx = np.sin(heading) * step, np.cos(heading) * step
    ys = starts[:, 0:1] + np.concatenate([np.zeros((n, 1)), np.cumsum(dy, axis=1)], axis=1)
    xs = starts[:, 1:2] + np.concatenate([np.zeros((n, 1)), np.cumsum(dx, axis=1)], axis=1)
    return [np.stack([ys[i], xs[i]], axis=1) for i in range(n)]


def _to_unit(canvas: np.ndarray) -> np.ndarray:
    return canvas.astype(np.float32) * (1.0 / 255.0)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.5, sigma))


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Inner rim of a mask, `width` px thick (the image border does not count as an edge)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
    return mask & (inner == 0)


def _point_on_nucleus_edge(nm: np.ndarray, ny: float, nx: float, angle: float) -> tuple[float, float]:
    """The nucleus pixel farthest along `angle` from the nucleus centre (its outline on that side)."""
    ys, xs = np.nonzero(nm)
    if len(ys) == 0:
        return ny, nx
    proj = (xs - nx) * math.cos(angle) + (ys - ny) * math.sin(angle)
    i = int(np.argmax(proj))
    return float(ys[i]), float(xs[i])


# ----------------------------------------------------------------------------------------------------------------
# Layout: cell positions, outlines and nuclei
# ----------------------------------------------------------------------------------------------------------------


def _place_cells(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[list[_Cell], float]:
    """Seed positions and shape parameters for `n` cells; returns the cells and the mean free radius."""
    coverage = rng.uniform(0.62, 0.85)
    r0 = math.sqrt(coverage * h * w / (n * math.pi))
    radii = np.clip(r0 * rng.lognormal(0.0, 0.2, n), 0.6 * r0, 1.7 * r0)
    # Clustering: cells prefer the brighter parts of a smooth density field, which leaves HPA-like gaps.
    density = _smooth_noise(rng, max(8, h // 8), max(8, w // 8), max(2.0, 2.5 * r0 / 8))
    centres: list[tuple[float, float]] = []
    spacing = 0.62
    for i in range(n):
        margin_y = min(0.25 * radii[i], h / 4)
        margin_x = min(0.25 * radii[i], w / 4)
        while True:
            cand = np.stack([rng.uniform(margin_y, h - margin_y, 48), rng.uniform(margin_x, w - margin_x, 48)], axis=1)
            if centres:
                placed = np.asarray(centres)
                dist = np.hypot(cand[:, None, 0] - placed[None, :, 0], cand[:, None, 1] - placed[None, :, 1])
                ok = np.all(dist >= spacing * (radii[i] + radii[None, :i]), axis=1)
            else:
                ok = np.ones(len(cand), dtype=bool)
            if ok.any():
                good = cand[ok][:6]
                dy = np.clip((good[:, 0] / h * density.shape[0]).astype(int), 0, density.shape[0] - 1)
                dx = np.clip((good[:, 1] / w * density.shape[1]).astype(int), 0, density.shape[1] - 1)
                best = good[int(np.argmax(density[dy, dx]))]
                centres.append((float(best[0]), float(best[1])))
                break
            spacing *= 0.93  # too crowded for this spacing: relax it (always terminates)
    cells = []
    for (cy, cx), r in zip(centres, radii):
        theta = rng.uniform(0, math.pi)
        cells.append(
            _Cell(
                cy=cy,
                cx=cx,
                r=float(r) * 1.2,  # free extent beyond the mean radius so that neighbours meet
                elong=rng.uniform(1.0, 2.0),
                theta=theta,
                harm=np.stack([rng.normal(0, 1, 4) * [0.14, 0.1, 0.07, 0.05], rng.uniform(0, 2 * math.pi, 4)], 1),
                mix=rng.uniform(0, 2 * math.pi),
                rho=rng.uniform(0.34, 0.44),
                ndy=rng.normal(0, 0.06) * r,
                ndx=rng.normal(0, 0.06) * r,
                nelong=rng.uniform(1.0, 1.6),
                ntheta=theta + rng.normal(0, 0.4),  # nuclei tend to align with their cell
                nharm=np.stack([rng.normal(0, 1, 3) * [0.05, 0.04, 0.02], rng.uniform(0, 2 * math.pi, 3)], 1),
            )
        )
    # Raster order of ids (top to bottom), like a labelled segmentation.
    cells.sort(key=lambda c: (int(c.cy), c.cx))
    return cells, r0


def _tessellate(
    rng: np.random.Generator, h: int, w: int, cells: list[_Cell], r0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus label masks (uint16) from the cells' shapes.

    Each pixel goes to the cell with the smallest normalised distance, if that is < 1 (a multiplicatively
    weighted Voronoi diagram, perturbed by smooth noise so that shared borders are irregular).
    """
    coarse1 = _smooth_noise(rng, h, w, 0.35 * r0)
    coarse2 = _smooth_noise(rng, h, w, 0.35 * r0)
    fine = _smooth_noise(rng, h, w, max(2.0, 0.08 * r0))
    best = np.full((h, w), np.inf, dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.uint16)
    for k, cell in enumerate(cells, start=1):
        reach = cell.r * math.sqrt(cell.elong) * (1.0 + float(np.abs(cell.harm[:, 0]).sum())) * 1.25 + 2
        y0, y1 = max(0, int(cell.cy - reach)), min(h, int(cell.cy + reach) + 1)
        x0, x1 = max(0, int(cell.cx - reach)), min(w, int(cell.cx + reach) + 1)
        cell.bbox = (y0, y1, x0, x1)
        d = _shape_distance_box(cell.bbox, cell.cy, cell.cx, cell.r, cell.elong, cell.theta, cell.harm)
        noise = math.cos(cell.mix) * coarse1[y0:y1, x0:x1] + math.sin(cell.mix) * coarse2[y0:y1, x0:x1]
        d *= 1.0 + 0.12 * noise + 0.02 * fine[y0:y1, x0:x1]
        sub_best, sub_lab = best[y0:y1, x0:x1], labels[y0:y1, x0:x1]
        closer = d < sub_best
        sub_best[closer] = d[closer]
        sub_lab[closer] = k
    labels[best >= 1.0] = 0

    nuclei = np.zeros((h, w), dtype=np.uint16)
    for k, cell in enumerate(cells, start=1):
        y0, y1, x0, x1 = cell.bbox
        own = labels[y0:y1, x0:x1] == k
        # Keep only the piece that holds the seed: competition can leave detached fragments.
        iy, ix = min(max(int(cell.cy) - y0, 0), y1 - y0 - 1), min(max(int(cell.cx) - x0, 0), x1 - x0 - 1)
        own[iy, ix] = True  # the seed is always its own cell's (distance 0)
        n_comp, comp = cv2.connectedComponents(own.astype(np.uint8), connectivity=4)
        if n_comp > 2:
            stray = own & (comp != comp[iy, ix])
            labels[y0:y1, x0:x1][stray] = 0
            own &= ~stray
        # Background enclosed by this cell alone is a hole of the tessellation, not a gap between cells.
        outline, _ = cv2.findContours(own.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        filled = cv2.drawContours(np.zeros(own.shape, np.uint8), outline, -1, 1, -1).astype(bool)
        own |= filled & (labels[y0:y1, x0:x1] == 0)
        labels[y0:y1, x0:x1][own] = k
        # From here on the cell's box is its actual extent (smaller than its free reach): less work per cell.
        bx, by, bw, bh = cv2.boundingRect(own.astype(np.uint8))
        own = own[by : by + bh, bx : bx + bw]
        y0, y1, x0, x1 = y0 + by, y0 + by + bh, x0 + bx, x0 + bx + bw
        cell.bbox = (y0, y1, x0, x1)
        # The nucleus stays a few px inside its cell, so that cytoplasm surrounds it.
        gap = max(1, int(round(0.05 * cell.r)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
        inner = cv2.erode(own.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        if cell.mitotic:
            # Condensed chromosomes: a thin bar (metaphase plate) across the rounded cell.
            plate_harm = np.stack([rng.normal(0, 0.08, 3), rng.uniform(0, 2 * math.pi, 3)], 1)
            dn = _shape_distance_box(cell.bbox, cell.cy, cell.cx, 0.3 * cell.r, 9.0, cell.ntheta, plate_harm)
            dn *= 1.0 + 0.15 * fine[y0:y1, x0:x1]
        else:
            rn = cell.rho * cell.r
            dn = _shape_distance_box(
                cell.bbox, cell.cy + cell.ndy, cell.cx + cell.ndx, rn, cell.nelong, cell.ntheta, cell.nharm
            )
        nuc = (dn < 1.0) & inner
        if not nuc.any():  # a sliver of a cell: give it at least a small nucleus around its seed
            nuc = (np.hypot(yy - cell.cy, xx - cell.cx) <= max(1.5, 0.15 * cell.r)) & own
        n_comp, comp = cv2.connectedComponents(nuc.astype(np.uint8), connectivity=4)
        if n_comp > 2:
            sizes = np.bincount(comp.ravel())[1:]
            nuc = comp == (1 + int(np.argmax(sizes)))
        nuclei[y0:y1, x0:x1][nuc] = k
    return labels, nuclei


# ----------------------------------------------------------------------------------------------------------------
# Per-cell patterns
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """Everything a pattern needs about one cell, in the coordinates of its bounding box."""

    rng: np.random.Generator
    cell: _Cell
    cm: np.ndarray  # cell mask (bool)
    nm: np.ndarray  # nucleus mask (bool)
    cyto: np.ndarray  # cytoplasm (bool)
    prof: np.ndarray  # 1 at the nucleus, falling to 0 at the cell edge (float32)
    gran: np.ndarray  # fine granular texture in [0, 1]
    ret: np.ndarray  # reticular (ER-like) texture in [0, 1]
    s: float  # size scale: 1 for a 2048^2-like cell
    ny: float  # nucleus centre (local)
    nx: float
    rn: float  # nucleus radius (px)
    mtoc: tuple[float, float]  # microtubule organising centre (local), next to the nucleus
    nucleoli: list[tuple[float, float, float]]  # (y, x, radius), local
    mt: np.ndarray  # microtubule texture (spindle in mitosis), shared by red and green classes 10/11
    nucleoli_mask: np.ndarray | None = None  # soft nucleoli, drawn once (blue holes and green class 2 agree)

    def canvas(self) -> np.ndarray:
        return np.zeros(self.cm.shape, dtype=np.uint8)


def _thick(ctx: _Ctx, base: float) -> int:
    return max(1, int(round(base * ctx.s)))


def _nucleoli_mask(ctx: _Ctx) -> np.ndarray:
    if ctx.nucleoli_mask is not None:
        return ctx.nucleoli_mask
    canvas = ctx.canvas()
    for y, x, r in ctx.nucleoli:
        cv2.ellipse(
            canvas,
            (_fx(x), _fx(y)),
            (max(1, _fx(r * 1.15)), max(1, _fx(r * 0.9))),
            float(ctx.rng.uniform(0, 180)),
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
    ctx.nucleoli_mask = _to_unit(canvas) * ctx.nm
    return ctx.nucleoli_mask


def _p_nucleoplasm(ctx: _Ctx) -> np.ndarray:
    return _soft(ctx.nm, ctx.s) * (0.75 + 0.25 * ctx.gran) * (1.0 - 0.8 * _nucleoli_mask(ctx))


def _p_nuclear_membrane(ctx: _Ctx) -> np.ndarray:
    rim = _ring(ctx.nm, _thick(ctx, 4)).astype(np.float32)
    return np.maximum(rim * (0.7 + 0.3 * ctx.gran), 0.08 * ctx.nm)


def _p_nucleoli(ctx: _Ctx) -> np.ndarray:
    return np.maximum(_nucleoli_mask(ctx) * (0.8 + 0.2 * ctx.gran), 0.04 * ctx.nm)


def _p_fibrillar_center(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    for y, x, r in ctx.nucleoli:
        k = int(ctx.rng.integers(2, 6))
        ang = ctx.rng.uniform(0, 2 * math.pi, k)
        dist = r * np.sqrt(ctx.rng.uniform(0, 0.5, k))
        pts = np.stack([y + dist * np.sin(ang), x + dist * np.cos(ang)], 1)
        _draw_dots(canvas, ctx.rng, pts, (max(0.6, 0.025 * ctx.rn), max(0.9, 0.045 * ctx.rn)), (0.7, 1.0))
    return _to_unit(canvas) * ctx.nm + 0.03 * ctx.nm


def _p_speckles(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    inside = ctx.nm & (_nucleoli_mask(ctx) < 0.3)
    pts = _sample_points(ctx.rng, inside, int(ctx.rng.integers(30, 70)))
    _draw_dots(canvas, ctx.rng, pts, (max(0.6, 0.025 * ctx.rn), max(0.9, 0.05 * ctx.rn)), (0.4, 0.9))
    return _soft(canvas, 0.8 * ctx.s) * (1.0 / 255.0) * ctx.nm + 0.15 * ctx.nm


def _p_nuclear_bodies(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    pts = _sample_points(ctx.rng, ctx.nm, int(ctx.rng.integers(1, 7)))
    _draw_dots(canvas, ctx.rng, pts, (max(0.8, 0.045 * ctx.rn), max(1.1, 0.07 * ctx.rn)), (0.8, 1.0))
    return _to_unit(canvas) * ctx.nm + 0.03 * ctx.nm


def _p_er(ctx: _Ctx) -> np.ndarray:
    return ctx.cyto * (0.25 + 0.75 * ctx.ret) * (0.15 + 0.85 * ctx.prof) + 0.04 * ctx.nm


def _p_golgi(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    angle = ctx.rng.uniform(0, 2 * math.pi)
    ey, ex = _point_on_nucleus_edge(ctx.nm, ctx.ny, ctx.nx, angle)
    ty, tx = math.cos(angle), -math.sin(angle)  # tangent to the nucleus
    for _ in range(int(ctx.rng.integers(8, 16))):
        along = ctx.rng.uniform(-0.55, 0.55) * ctx.rn
        out = ctx.rng.uniform(0.05, 0.4) * ctx.rn
        y = ey + along * ty + out * math.sin(angle)
        x = ex + along * tx + out * math.cos(angle)
        axes = (max(1, _fx(ctx.rn * ctx.rng.uniform(0.06, 0.14))), max(1, _fx(ctx.rn * ctx.rng.uniform(0.03, 0.06))))
        tilt = math.degrees(math.atan2(ty, tx)) + ctx.rng.normal(0, 25)
        cv2.ellipse(
            canvas, (_fx(x), _fx(y)), axes, tilt, 0, 360, int(255 * ctx.rng.uniform(0.6, 1.0)), -1, cv2.LINE_AA, _SHIFT
        )
    return _to_unit(canvas) * ctx.cyto


def _p_intermediate_filaments(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    rng = ctx.rng
    n = int(rng.integers(14, 26))
    ang = rng.uniform(0, 2 * math.pi, n)
    dist = ctx.rn * rng.uniform(1.05, 1.5, n)
    starts = np.stack([ctx.ny + dist * np.sin(ang), ctx.nx + dist * np.cos(ang)], 1)
    # Mostly tangential: the filaments form a cage around the nucleus and sweep out to the periphery.
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    heading = ang + sign * (math.pi / 2 - rng.uniform(0, 0.6, n))
    step = 0.05 * ctx.cell.r
    # Bend round the nucleus (turn rate of a circle a bit larger than it), then drift outwards.
    bend = sign * step / (ctx.rn * rng.uniform(2.0, 6.0, n))
    paths = _random_walks(rng, starts, heading, 45, step, 0.07, bend)
    _draw_paths(canvas, paths, _thick(ctx, 2.5), rng.uniform(0.6, 1.0, n))
    return _to_unit(canvas) * ctx.cm * (0.4 + 0.6 * ctx.prof) + 0.04 * ctx.cyto


def _p_actin(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    rng, cell = ctx.rng, ctx.cell
    y0, _, x0, _ = cell.bbox
    cy, cx = cell.cy - y0, cell.cx - x0
    n = int(rng.integers(8, 20))
    direction = cell.theta + rng.normal(0, 0.15)
    offsets = rng.uniform(-0.9, 0.9, n) * cell.r / math.sqrt(cell.elong)
    paths = []
    for off in offsets:
        a = direction + rng.normal(0, 0.06)
        py, px = cy + off * math.cos(direction), cx - off * math.sin(direction)
        half = 1.6 * cell.r * math.sqrt(cell.elong)
        paths.append(
            np.array(
                [[py - half * math.sin(a), px - half * math.cos(a)], [py + half * math.sin(a), px + half * math.cos(a)]]
            )
        )
    _draw_paths(canvas, paths, _thick(ctx, 3), rng.uniform(0.4, 1.0, n))
    cortex = _ring(ctx.cm, _thick(ctx, 4)).astype(np.float32) * 0.6
    fibres = _to_unit(canvas) * ctx.cm * (0.5 + 0.5 * ctx.gran) * np.where(ctx.nm, 0.6, 1.0)
    return np.maximum(fibres, cortex) + 0.06 * ctx.cyto


def _p_microtubules(ctx: _Ctx) -> np.ndarray:
    # Fibres crossing the nucleus are out of the focal plane: dimmer there.
    return ctx.mt * (0.3 + 0.7 * ctx.prof) * np.where(ctx.nm, 0.35, 1.0) + 0.05 * ctx.cyto


def _p_spindle(ctx: _Ctx) -> np.ndarray:
    return ctx.mt + 0.05 * ctx.cyto


def _spindle(ctx: _Ctx) -> np.ndarray:
    """Bipolar spindle of a mitotic cell: fibres from two poles to the chromosome plate, plus short asters."""
    canvas = ctx.canvas()
    rng, cell = ctx.rng, ctx.cell
    y0, _, x0, _ = cell.bbox
    cy, cx = cell.cy - y0, cell.cx - x0
    plate = cell.ntheta  # plate axis; the spindle axis is perpendicular
    half_plate, pole_dist = 0.3 * cell.r, 0.5 * cell.r
    paths, values = [], []
    for sign in (-1.0, 1.0):
        py = cy + sign * pole_dist * math.cos(plate)
        px = cx - sign * pole_dist * math.sin(plate)
        for t in rng.uniform(-1, 1, 26):
            ty, tx = cy + t * half_plate * math.sin(plate), cx + t * half_plate * math.cos(plate)
            paths.append(np.array([[py, px], [ty, tx]]))
            values.append(rng.uniform(0.5, 1.0))
        for a in rng.uniform(0, 2 * math.pi, 10):
            length = rng.uniform(0.1, 0.3) * cell.r
            paths.append(np.array([[py, px], [py + length * math.sin(a), px + length * math.cos(a)]]))
            values.append(rng.uniform(0.3, 0.6))
        cv2.circle(canvas, (_fx(px), _fx(py)), max(1, _fx(0.05 * cell.r)), 255, -1, cv2.LINE_AA, _SHIFT)
    _draw_paths(canvas, paths, _thick(ctx, 2), values)
    return _to_unit(canvas) * ctx.cm


def _p_centrosome(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    k = int(ctx.rng.integers(1, 3))
    pts = np.array([ctx.mtoc]) + ctx.rng.normal(0, 0.04 * ctx.rn, size=(k, 2))
    _draw_dots(canvas, ctx.rng, pts, (max(1.0, 0.04 * ctx.rn), max(1.3, 0.06 * ctx.rn)), (0.85, 1.0))
    return _to_unit(canvas) * ctx.cm + 0.02 * ctx.cyto


def _p_plasma_membrane(ctx: _Ctx) -> np.ndarray:
    rim = _ring(ctx.cm, _thick(ctx, 5)).astype(np.float32)
    return rim * (0.6 + 0.4 * ctx.gran) + 0.06 * ctx.cyto


def _p_mitochondria(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    rng = ctx.rng
    area_scale = float(ctx.cyto.sum()) / max(1.0, (0.5 * ctx.cell.r) ** 2 * math.pi * 4)
    n = int(np.clip(rng.integers(250, 450) * area_scale, 30, 900))
    starts = _sample_points(rng, ctx.cyto, n, weights=ctx.prof**0.7)
    paths = _random_walks(
        rng, starts, rng.uniform(0, 2 * math.pi, len(starts)), 3, ctx.rn * rng.uniform(0.025, 0.05), 0.6
    )
    _draw_paths(canvas, paths, _thick(ctx, 2), rng.uniform(0.4, 1.0, len(paths)))
    return _to_unit(canvas) * ctx.cyto


def _p_aggresome(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    rng = ctx.rng
    angle = rng.uniform(0, 2 * math.pi)
    ey, ex = _point_on_nucleus_edge(ctx.nm, ctx.ny, ctx.nx, angle)
    size = ctx.rn * rng.uniform(0.2, 0.32)
    cy, cx = ey + 1.1 * size * math.sin(angle), ex + 1.1 * size * math.cos(angle)
    for _ in range(5):  # overlapping discs make an irregular blob
        oy, ox = rng.normal(0, 0.3 * size, 2)
        _draw_dots(canvas, rng, np.array([[cy + oy, cx + ox]]), (0.6 * size, 0.9 * size), (0.85, 1.0))
    return _to_unit(canvas) * ctx.cm + 0.06 * ctx.cyto


def _p_cytosol(ctx: _Ctx) -> np.ndarray:
    return ctx.cyto * (0.5 + 0.5 * ctx.prof**0.5) * (0.85 + 0.15 * ctx.gran) + 0.1 * ctx.nm


def _p_vesicles(ctx: _Ctx) -> np.ndarray:
    canvas = ctx.canvas()
    rng = ctx.rng
    n = int(rng.integers(40, 140))
    pts = _sample_points(rng, ctx.cyto, n, weights=0.3 + ctx.prof)
    _draw_dots(canvas, rng, pts, (max(0.7, 0.03 * ctx.rn), max(1.0, 0.06 * ctx.rn)), (0.4, 1.0))
    return _to_unit(canvas) * ctx.cm + 0.03 * ctx.cyto


_PATTERNS = {
    0: _p_nucleoplasm,
    1: _p_nuclear_membrane,
    2: _p_nucleoli,
    3: _p_fibrillar_center,
    4: _p_speckles,
    5: _p_nuclear_bodies,
    6: _p_er,
    7: _p_golgi,
    8: _p_intermediate_filaments,
    9: _p_actin,
    10: _p_microtubules,
    11: _p_spindle,
    12: _p_centrosome,
    13: _p_plasma_membrane,
    14: _p_mitochondria,
    15: _p_aggresome,
    16: _p_cytosol,
    17: _p_vesicles,
}


def _microtubules(ctx: _Ctx) -> np.ndarray:
    """Microtubule network: many thin, gently curved fibres radiating from the MTOC to the cell edge."""
    canvas = ctx.canvas()
    rng = ctx.rng
    n = int(np.clip(110 * max(ctx.s, 0.3), 30, 160))
    # A third start at the MTOC, the rest anywhere around the nucleus: a network, not a star.
    n_star = n // 3
    ang = rng.uniform(0, 2 * math.pi, n - n_star)
    dist = ctx.rn * rng.uniform(0.9, 1.4, n - n_star)
    around = np.stack([ctx.ny + dist * np.sin(ang), ctx.nx + dist * np.cos(ang)], 1)
    starts = np.concatenate([np.array([ctx.mtoc]) + rng.normal(0, 0.1 * ctx.rn, size=(n_star, 2)), around])
    heading = np.concatenate([rng.uniform(0, 2 * math.pi, n_star), ang + rng.normal(0, 0.6, n - n_star)])
    paths = _random_walks(rng, starts, heading, 40, 0.045 * ctx.cell.r, 0.16)
    _draw_paths(canvas, paths, 1, rng.uniform(0.3, 0.9, n))
    return _to_unit(canvas) * ctx.cm


# ----------------------------------------------------------------------------------------------------------------
# Weak labels
# ----------------------------------------------------------------------------------------------------------------


def _assign_labels(
    rng: np.random.Generator, n: int, image_classes: list[int], mitotic: set[int]
) -> tuple[dict[int, list[int]], list[int]]:
    """Which of the image's classes each cell shows (cell ids 1..n); returns per-cell labels and image labels."""
    if n == 0:
        return {}, [NEGATIVE]
    if image_classes == [NEGATIVE]:
        return {k: [NEGATIVE] for k in range(1, n + 1)}, [NEGATIVE]
    shown: dict[int, list[int]] = {}
    for k in range(1, n + 1):
        if k in mitotic:
            allowed = [c for c in image_classes if c in MITOTIC_COMPATIBLE]
            extra = [c for c in allowed if c != MITOTIC_SPINDLE and rng.random() < 0.6]
            shown[k] = [c for c in image_classes if c == MITOTIC_SPINDLE or c in extra]
            continue
        allowed = [c for c in image_classes if c != MITOTIC_SPINDLE]
        u = rng.random()
        if not allowed or u < 0.12:
            shown[k] = []  # the cell shows none of the image's patterns: Negative in the truth
        elif u < 0.72:
            shown[k] = list(allowed)
        else:
            keep = [c for c in allowed if rng.random() < 0.5] or [allowed[int(rng.integers(len(allowed)))]]
            shown[k] = keep
    # Every image class must be visible somewhere; a class no cell can show is dropped from the image label.
    plain = [k for k in range(1, n + 1) if k not in mitotic]
    for c in image_classes:
        if any(c in labels for labels in shown.values()):
            continue
        hosts = [
            k
            for k in (plain if c not in MITOTIC_COMPATIBLE else range(1, n + 1))
            if c != MITOTIC_SPINDLE or k in mitotic
        ]
        if hosts:
            k = hosts[int(rng.integers(len(hosts)))]
            shown[k] = [x for x in image_classes if x in shown[k] or x == c]
    # Weak labels: make sure at least one cell differs from the image label when the field has a few cells.
    image_labels = [c for c in image_classes if any(c in labels for labels in shown.values())]
    if n >= 4 and all(shown[k] == image_labels for k in plain) and len(plain) >= 2 and not mitotic:
        shown[plain[int(rng.integers(len(plain)))]] = []
    if not image_labels:
        image_labels = [NEGATIVE]
    return {k: (labels or [NEGATIVE]) for k, labels in shown.items()}, image_labels


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------


def _finish_channel(
    rng: np.random.Generator,
    signal: np.ndarray,
    blur: float,
    haze_sigma: float,
    haze: float,
    bg: float,
    gain: float,
    read: float,
) -> np.ndarray:
    """Optics and camera: blur, out-of-focus haze, background, shot and read noise, 8-bit quantisation."""
    h, w = signal.shape
    img = cv2.GaussianBlur(signal, (0, 0), blur)
    if haze > 0 and img.any():
        # Out-of-focus light around the cells, computed on a 1/8 grid (a wide blur at full size is slow).
        small = cv2.resize(img, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), max(0.5, haze_sigma / 8))
        img += haze * cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    img += bg
    std = np.maximum(img, 0.0)
    std *= gain
    std += read * read
    np.sqrt(std, out=std)
    std *= _gauss(rng, h, w)
    img += std
    np.rint(img, out=img)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_field(
    rng: np.random.Generator, height: int, width: int, n_cells: int, image_classes: Sequence[int]
) -> SynthField:
    """Render one synthetic HPA field of view.

    Args:
        rng: the random generator (the only source of randomness, so a seeded one gives identical fields).
        height, width: field size in pixels.
        n_cells: number of cells (0 gives an empty field with only background noise; > 255 is fine, the mask
            is uint16). Cell sizes follow from the field area and this number.
        image_classes: the image's classes (0..18; 18 = Negative only alone). Cells show all, some or none of
            them; class 11 (mitotic spindle) is shown by the mitotic cells only.

    Returns:
        The rendered field (channels, cell and nucleus masks, per-cell and image labels).
    """
    if height < 8 or width < 8:
        raise ValueError(f"field too small: {width}x{height} (at least 8x8)")
    if not 0 <= n_cells <= 65535:
        raise ValueError(f"n_cells must be in 0..65535 (uint16 mask), got {n_cells}")
    classes = list(dict.fromkeys(int(c) for c in image_classes))
    if not classes or any(c < 0 or c >= N_CLASSES for c in classes):
        raise ValueError(f"image_classes must be 1+ class ids in 0..{N_CLASSES - 1}, got {list(image_classes)}")
    if NEGATIVE in classes and len(classes) > 1:
        raise ValueError(f"Negative ({NEGATIVE}) cannot be combined with other classes: {classes}")
    h, w = int(height), int(width)

    signal = np.zeros((4, h, w), dtype=np.float32)
    cells: list[_Cell] = []
    r0 = REF_CELL_RADIUS * min(h, w) / 2048.0  # only sets the noise scale of an empty field
    if n_cells > 0:
        cells, r0 = _place_cells(rng, h, w, n_cells)
    s = r0 / REF_CELL_RADIUS * 1.2  # cells' free radius is 1.2 * r0

    mitotic: set[int] = set()
    if n_cells > 0 and MITOTIC_SPINDLE in classes:
        # Mitotic cells are rare; keep one non-mitotic cell when other classes need one to show them.
        n_mit = max(1, int(round(n_cells * rng.uniform(0.05, 0.15))))
        n_mit = min(n_mit, n_cells - 1) if (len(classes) > 1 and n_cells > 1) else min(n_mit, n_cells)
        for k in rng.choice(n_cells, size=n_mit, replace=False):
            mitotic.add(int(k) + 1)
            cell = cells[int(k)]
            # A mitotic cell rounds up: smaller, round, smooth outline.
            cell.mitotic, cell.r, cell.elong = True, cell.r * 0.75, 1.0
            cell.harm = cell.harm * 0.25

    if cells:
        labels, nuclei = _tessellate(rng, h, w, cells, r0)
    else:
        labels = np.zeros((h, w), dtype=np.uint16)
        nuclei = np.zeros((h, w), dtype=np.uint16)
    cell_labels, image_labels = _assign_labels(rng, n_cells, classes, mitotic)

    # Field-wide textures, cropped per cell.
    ret = np.exp(-((_bandpass(rng, h, w, max(0.7, 2.2 * s)) / 0.45) ** 2))  # ridges of band-pass noise: a mesh
    gran = np.clip(0.5 + 0.25 * _bandpass(rng, h, w, max(0.6, 1.2 * s)), 0, 1)
    chrom = np.clip(0.5 + 0.25 * _bandpass(rng, h, w, max(0.7, 1.6 * s)), 0, 1)

    # Intensity profile: 1 at the nucleus, 0 at the cell edge (relative distance between the two).
    if cells:
        edge = np.zeros((h, w), dtype=bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[1:] |= labels[1:] != labels[:-1]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        d_edge = cv2.distanceTransform(((labels > 0) & ~edge).astype(np.uint8), cv2.DIST_L2, 3)
        d_nuc = cv2.distanceTransform((nuclei == 0).astype(np.uint8), cv2.DIST_L2, 3)
        profile = 1.0 - d_nuc / (d_nuc + d_edge + 1e-3)

    antibody = rng.uniform(0.6, 1.25)  # per-image staining strength of the protein of interest
    for k, cell in enumerate(cells, start=1):
        y0, y1, x0, x1 = cell.bbox
        sl = (slice(y0, y1), slice(x0, x1))
        cm = labels[sl] == k
        if not cm.any():
            continue
        nm = nuclei[sl] == k
        cyto = cm & ~nm
        prof = np.where(cm, profile[sl], 0.0).astype(np.float32)
        nys, nxs = np.nonzero(nm)
        ny, nx = float(nys.mean()), float(nxs.mean())
        rn = max(1.0, math.sqrt(len(nys) / math.pi)) if not cell.mitotic else 0.4 * cell.r
        ctx = _Ctx(
            rng=rng,
            cell=cell,
            cm=cm,
            nm=nm,
            cyto=cyto,
            prof=prof,
            gran=gran[sl],
            ret=ret[sl],
            s=s,
            ny=ny,
            nx=nx,
            rn=rn,
            mtoc=(ny, nx),
            nucleoli=[],
            mt=np.zeros(cm.shape, np.float32),
        )
        if not cell.mitotic:
            ey, ex = _point_on_nucleus_edge(nm, ny, nx, rng.uniform(0, 2 * math.pi))
            ctx.mtoc = (ey + (ey - ny) * 0.12, ex + (ex - nx) * 0.12)
            inner = cv2.erode(nm.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, int(0.3 * rn)))
            for y, x in _sample_points(rng, inner.astype(bool), int(rng.integers(1, 5))):
                ctx.nucleoli.append((y, x, rn * rng.uniform(0.09, 0.17)))
            ctx.mt = _microtubules(ctx)
            _nucleoli_mask(ctx)
        else:
            ctx.mt = _spindle(ctx)

        # Blue: chromatin texture, darker nucleoli; condensed (bright) chromosomes in mitosis.
        blue = rng.uniform(70, 170) * (0.8 + 0.35 * chrom[sl])
        if cell.mitotic:
            blue = blue * 1.5
        else:
            blue = blue * (1.0 - 0.35 * _nucleoli_mask(ctx))
        signal[2][sl][nm] += blue[nm]

        # Red (microtubules) and yellow (ER): cytoplasm, strong near the nucleus, fading to the edge.
        red_peak, yellow_peak = rng.uniform(60, 170), rng.uniform(80, 190)
        fade = 0.3 + 0.7 * prof**1.2
        if cell.mitotic:
            red = red_peak * (0.35 * cm + 0.9 * ctx.mt) * (0.6 + 0.4 * prof)
            yellow = yellow_peak * cm * (0.35 + 0.35 * ctx.ret) * (0.7 + 0.3 * prof)
        else:
            red = red_peak * (0.18 * cm + 0.9 * ctx.mt) * fade
            red = np.where(nm, red * 0.4, red)
            yellow = yellow_peak * (0.2 + 0.8 * ctx.ret) * fade * cm
            yellow = np.where(nm, yellow * 0.3, yellow)
        signal[0][sl][cm] += red[cm]
        signal[3][sl][cm] += yellow[cm]

        # Green: the sum of the patterns this cell shows; faint unspecific staining otherwise.
        green = np.zeros(cm.shape, dtype=np.float32)
        for c in cell_labels.get(k, []):
            if c == NEGATIVE:
                continue
            strength = _GREEN_PEAK[c] * antibody * rng.lognormal(0.0, 0.3)
            green += strength * _PATTERNS[c](ctx)
        green += rng.uniform(1.5, 6.0) * cm  # unspecific background staining of every cell
        signal[1][sl][cm] += green[cm]

    blur = max(0.5, 1.1 * s)
    haze_sigma = 0.6 * r0
    out = np.empty((4, h, w), dtype=np.uint8)
    for c, (haze, bg, gain, read) in enumerate(
        [
            (0.06, rng.uniform(0.0, 1.5), 0.5, 1.2),  # red
            (0.05, rng.uniform(0.0, 0.8), 0.5, 0.8),  # green
            (0.02, 0.0, 0.4, 0.4),  # blue: nuclei on a nearly black background
            (0.06, rng.uniform(0.0, 1.5), 0.5, 1.2),
        ]  # yellow
    ):
        out[c] = _finish_channel(rng, signal[c], blur, haze_sigma, haze, bg, gain, read)
    return SynthField(
        channels=out,
        cell_mask=labels,
        nucleus_mask=nuclei,
        cell_labels=cell_labels,
        image_labels=image_labels,
        mitotic=sorted(mitotic),
    )


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------

_SPLIT_CODE = {"train": 0, "test": 1, "public": 2}


def _image_id(seed: int, split: str, index: int) -> str:
    """An ID derived from the seed, split and index only (independent of the dataset's size): UUID-shaped
    as Kaggle's, or for the public set ``{antibody}_{plate}_{well}_{field}`` as the HPA server's
    ``/{antibody}/{plate}_{well}_{field}`` URL stems give it."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1])
    if split == "public":
        antibody, plate = (int(v) for v in rng.integers(1000, 60000, size=2))
        return f"{antibody}_{plate}_{'ABCDEFGH'[index % 8]}{index % 12 + 1}_{index % 4 + 1}"
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _image_classes(rng: np.random.Generator, primary: int, n_cells: int) -> tuple[int, ...]:
    """The primary class (cycled over the dataset) plus 0-2 others; Negative stays alone."""
    if primary == NEGATIVE:
        return (NEGATIVE,)
    n_extra = int(rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25]))
    pool = [c for c in range(N_CLASSES) if c not in (primary, NEGATIVE)]
    if n_cells < 2:  # a single cell cannot be mitotic and show nuclear patterns at once
        pool = [c for c in pool if c != MITOTIC_SPINDLE and not (primary == MITOTIC_SPINDLE and c in NUCLEAR_CLASSES)]
    extras = [int(c) for c in rng.choice(pool, size=n_extra, replace=False)] if n_extra else []
    return (primary, *extras)


def plan_dataset(
    *,
    n_train: int,
    n_test: int,
    image_size: int | tuple[int, int] = 512,
    cells_per_image: tuple[int, int] = (8, 16),
    seed: int = 0,
    non_square_test: bool = True,
    empty_test_images: int = 0,
    n_public: int = 0,
) -> list[FieldSpec]:
    """The fields `write_demo_dataset` renders, in order (train first); arguments as there.

    Returns:
        One FieldSpec per image.
    """
    if isinstance(image_size, int):
        base_h = base_w = int(image_size)
    else:
        base_h, base_w = (int(v) for v in image_size)
    lo, hi = (int(v) for v in cells_per_image)
    if not 0 <= lo <= hi:
        raise ValueError(f"cells_per_image must be (low, high) with 0 <= low <= high, got {cells_per_image}")
    if min(base_h, base_w) < 32:
        raise ValueError(f"image_size too small: {image_size} (at least 32)")
    if n_train < 0 or n_test < 0 or n_public < 0 or not 0 <= empty_test_images <= n_test:
        raise ValueError(
            f"need n_train, n_test, n_public >= 0 and 0 <= empty_test_images <= n_test "
            f"(got {n_train}, {n_test}, {n_public}, {empty_test_images})"
        )
    specs = []
    for split, count in (("train", n_train), ("test", n_test), ("public", n_public)):
        # Cycle through a seeded order of the 19 classes: any 19 consecutive images cover every class.
        order = np.random.default_rng([seed, _SPLIT_CODE[split], 1000]).permutation(N_CLASSES)
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 2])
            h, w = base_h, base_w
            if split == "test" and non_square_test and index == count - 1:
                w = int(round(base_w * 4 / 3))  # 4:3, e.g. 683x512: also an odd width
            n_cells = int(rng.integers(lo, hi + 1))
            n_cells = int(round(n_cells * (h * w) / (base_h * base_w)))  # same cell size in a larger field
            if split == "test" and index < empty_test_images:
                n_cells = 0
            classes = _image_classes(rng, int(order[index % N_CLASSES]), n_cells)
            specs.append(FieldSpec(split, index, _image_id(seed, split, index), h, w, n_cells, classes))
    ids = [spec.image_id for spec in specs]
    if len(set(ids)) != len(ids):  # 122 random bits: practically impossible, but never write a broken set
        raise RuntimeError("duplicate image IDs generated; use another seed")
    return specs


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"cannot write {path}")


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _join(labels: Sequence[int]) -> str:
    return "|".join(str(c) for c in labels)


def write_demo_dataset(
    out_dir: str | Path,
    *,
    n_train: int,
    n_test: int,
    image_size: int | tuple[int, int] = 512,
    cells_per_image: tuple[int, int] = (8, 16),
    seed: int = 0,
    non_square_test: bool = True,
    empty_test_images: int = 0,
    n_public: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Write a synthetic dataset in Kaggle's layout, plus the true cell masks and per-cell labels.

    Layout: ``train/`` and ``test/`` (``{ID}_{red,green,blue,yellow}.png``, uint8), ``train.csv`` (ID, Label),
    ``sample_submission.csv`` (ID, ImageWidth, ImageHeight, PredictionString), ``truth/{train,test}/
    {ID}_cellmask.png`` (uint16), ``truth/cells.csv`` (split, ID, instance, Label) and the marker file
    ``.hpa-pipeline-synthetic`` that tells the workflow's checks this folder holds synthetic data.
    With ``n_public``, also a local mirror of the HPA image server for the download stage:
    ``public_hpa/kaggle_2021.tsv`` (Image, Label_idx, in_trainset, Label; plus one row that is in the
    train set and one without labels, which the download drops) and ``public_hpa/server/{antibody}/
    {plate}_{well}_{field}_{color}.tif.gz`` (16 bit, as the server's). As the real public set holds
    fields of the Kaggle sets, with ``n_public >= 3`` its last two images are copies of the first
    train image and of the last non-empty test image (16 bit instead of 8): the duplicates stage must
    find them.
    Everything is written into a temporary sibling folder that is renamed to `out_dir` at the end, so an
    interrupted run leaves no (partial) `out_dir`.

    Args:
        out_dir: the dataset folder; must not exist unless `overwrite`.
        n_train, n_test: number of train and test images.
        image_size: side of the square fields, or (height, width); it stands for a whole HPA field of view.
        cells_per_image: inclusive range of the number of cells per field.
        seed: the same seed always gives byte-identical files.
        non_square_test: make the last test image 4:3 (width = 4/3 of the normal width).
        empty_test_images: the first this many test images contain no cells.
        n_public: number of labelled images in the public-HPA mirror (0: no mirror).
        overwrite: replace an existing `out_dir`, unless it holds images that this generator did not write.
        progress: show a tqdm progress bar.

    Raises:
        InputDataError: `out_dir` exists and `overwrite` is not set, or it holds someone's own images.
    """
    out_dir = Path(out_dir)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    specs = plan_dataset(
        n_train=n_train,
        n_test=n_test,
        image_size=image_size,
        cells_per_image=cells_per_image,
        seed=seed,
        non_square_test=non_square_test,
        empty_test_images=empty_test_images,
        n_public=n_public,
    )
    with dataset_folder(out_dir, overwrite) as tmp:
        for sub in ("train", "test", "truth/train", "truth/test"):
            (tmp / sub).mkdir(parents=True)
        train_rows, test_rows, cell_rows, public_rows = [], [], [], []
        copied = _copied_fields(specs, n_public)
        originals: dict[str, SynthField] = {}
        for spec in tqdm(specs, desc="synthetic fields", unit="field", disable=not progress):
            if spec.image_id in copied:
                result = originals[copied[spec.image_id]]
            else:
                rng = np.random.default_rng([seed, _SPLIT_CODE[spec.split], spec.index, 3])
                result = render_field(rng, spec.height, spec.width, spec.n_cells, list(spec.classes))
            if spec.image_id in copied.values():
                originals[spec.image_id] = result
            if spec.split == "public":
                public_rows.append(_write_public_image(tmp / "public_hpa", spec.image_id, result))
                continue
            for channel, plane in zip(CHANNELS, result.channels):
                _write_png(tmp / spec.split / f"{spec.image_id}_{channel}.png", plane)
            _write_png(tmp / "truth" / spec.split / f"{spec.image_id}_cellmask.png", result.cell_mask)
            for instance, labels in sorted(result.cell_labels.items()):
                cell_rows.append([spec.split, spec.image_id, instance, _join(labels)])
            if spec.split == "train":
                train_rows.append([spec.image_id, _join(result.image_labels)])
            else:
                test_rows.append([spec.image_id, spec.width, spec.height, SAMPLE_PREDICTION])
        _write_csv(tmp / "train.csv", ["ID", "Label"], train_rows)
        _write_csv(tmp / "sample_submission.csv", ["ID", "ImageWidth", "ImageHeight", "PredictionString"], test_rows)
        _write_csv(tmp / "truth" / "cells.csv", ["split", "ID", "instance", "Label"], cell_rows)
        if n_public:
            # what the download must drop: an image of the Kaggle train set, and one without labels
            public_rows.append([f"{PUBLIC_SERVER}/1/1_A1_1", "", "True", "Nucleoplasm"])
            public_rows.append([f"{PUBLIC_SERVER}/2/2_A1_1", "", "False", ""])
            _write_csv(
                tmp / "public_hpa" / "kaggle_2021.tsv", ["Image", "Label_idx", "in_trainset", "Label"], public_rows
            )
        (tmp / SYNTHETIC_MARKER).write_text(
            f"Synthetic dataset written by hpa_pipeline.data.synth (seed {seed}, {n_train} train and {n_test} test "
            "images).\nThe workflow may replace this folder; without this file it is treated as real data.\n",
            encoding="utf-8",
        )


def _copied_fields(specs: Sequence[FieldSpec], n_public: int) -> dict[str, str]:
    """Public image ID -> the ID of the train or test field it copies (see `write_demo_dataset`)."""
    public = [spec for spec in specs if spec.split == "public"]
    train = [spec for spec in specs if spec.split == "train"]
    test = [spec for spec in specs if spec.split == "test" and spec.n_cells]
    if n_public < 3 or not train or not test:
        return {}
    return {public[-2].image_id: train[0].image_id, public[-1].image_id: test[-1].image_id}


#: The scheme and host of the public table's Image URLs (the download replaces them by its base URL).
PUBLIC_SERVER = "https://images.proteinatlas.org"


def _write_public_image(mirror: Path, image_id: str, result: SynthField) -> list[str]:
    """Write one field as the HPA server holds it (``.tif.gz`` per channel, 16 bit); return its table row."""
    antibody, stem = image_id.split("_", 1)
    folder = mirror / "server" / antibody
    folder.mkdir(parents=True, exist_ok=True)
    for channel, plane in zip(CHANNELS, result.channels):
        encoded = io.BytesIO()
        tifffile.imwrite(encoded, plane.astype(np.uint16) * 257)  # 8 -> 16 bit, full range
        (folder / f"{stem}_{channel}.tif.gz").write_bytes(gzip.compress(encoded.getvalue(), mtime=0))
    labels = result.image_labels
    return [f"{PUBLIC_SERVER}/{antibody}/{stem}", _join(labels), "False", "|".join(CLASS_NAMES[c] for c in labels)]


@contextmanager
def dataset_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to write a dataset into: renamed to ``out_dir`` when the block
    succeeds, removed when it fails, so that an interrupted run leaves no (partial) ``out_dir``.

    Raises:
        InputDataError: ``out_dir`` exists and ``overwrite`` is not set, or it holds someone's own images.
    """
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset should be readable like any other folder
        old = None
        if out_dir.exists():
            _check_target(out_dir, overwrite)  # it appeared or changed while we were writing
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / "data")
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a folder unless asked to, and never one that holds a user's own images."""
    if not out_dir.exists():
        return
    if holds_real_images(out_dir):
        raise InputDataError(
            f"refusing to write synthetic data into {out_dir}: it holds images that the demo generator did not "
            f"write (no {SYNTHETIC_MARKER} file); choose another folder, or remove demo_data from the config "
            "to use these images"
        )
    if not overwrite:
        raise InputDataError(f"{out_dir} exists already; remove it, or pass --overwrite (overwrite=True) to replace it")
