"""Cell segmentation of HPA fields: probability-map producers and the shared label post-processing.

Segmentation runs in two stages with one contract between them (as the 7th-place solution did):

1. A *map producer* turns a (4, H, W) uint8 RGBY image into two uint8 (h, w, 3) maps in
   hpacellseg's layout -- channel 0 = 0, channel 1 = touching-border probability x255,
   channel 2 = foreground (nucleus or cell) probability x255 -- at any resolution it likes.
   Backends: ``classical`` (weight-free image processing, the default) and ``hpacellseg``
   (HPA's pickled DPN-UNets, used the 7th-place way; needs the hpacellseg package and weights).
2. :func:`segment_image` resizes both maps to the *labelling resolution* -- a long side of
   ``round(2048 * s)`` pixels whatever the input size, so that label_cell's pixel-count thresholds
   (scaled by ``s**2``) always mean the same physical size -- runs
   :func:`~hpa_pipeline.preprocess.label_cell.label_cell`, and resizes the labels to the requested
   shape with ``cv2.INTER_NEAREST_EXACT``.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from hpa_pipeline.errors import ConfigError, InputDataError, PipelineError
from hpa_pipeline.preprocess.label_cell import LabelCellParams, label_cell

if TYPE_CHECKING:  # torch is imported lazily: the classical backend must not pay for it
    import torch

__all__ = [
    "BACKENDS",
    "ClassicalParams",
    "ClassicalProducer",
    "HpaCellSegProducer",
    "MapProducer",
    "ProbabilityMaps",
    "create_producer",
    "labelling_shape",
    "segment_image",
]

#: Side of the field the label_cell constants were made for; the labelling long side is this times s.
FIELD_SIZE = 2048
BACKENDS: tuple[str, ...] = ("classical", "hpacellseg")

# --- hpacellseg backend constants (HPA-Cell-Segmentation, as used by the 7th place) ---
MODEL_INPUT_SIZE = 512  # both DPN-UNets see the whole field at 512x512
HPA_MEAN = np.array([124.0, 117.0, 104.0]) / 255.0  # hpacellseg's NORMALIZE constants
HPA_STD = 1.0 / (0.0167 * 255.0)
ZENODO_URL = "https://zenodo.org/records/4665863"
WEIGHT_FILES = {"nuclei_model": "dpn_unet_nuclei_v1.pth", "cell_model": "dpn_unet_cell_3ch_v1.pth"}
HPACELLSEG_KEYS = ("nuclei_model", "nuclei_model_sha256", "cell_model", "cell_model_sha256")
INSTALL_HINT = (
    "hpacellseg is not on PyPI. Install it with\n"
    '  pip install --no-deps "https://github.com/CellProfiling/HPA-Cell-Segmentation/archive/master.zip"\n'
    "and its dependency pytorch_zoo (needed to unpickle the DPN-UNet weights), whose setup.py lacks\n"
    "'import setuptools': download https://github.com/haoxusci/pytorch_zoo/archive/master.zip, unpack it,\n"
    "add 'import setuptools' as the first line of its setup.py and run 'pip install --no-deps <unpacked dir>'\n"
    "(or put the unpacked dir on PYTHONPATH). Or use the weight-free backend 'classical'."
)


class ProbabilityMaps(NamedTuple):
    """Nucleus and cell maps, uint8 (h, w, 3) each: [0, touching-border prob, foreground prob] x255."""

    nuclei: np.ndarray
    cell: np.ndarray


class MapProducer(Protocol):
    """Anything that turns an RGBY image into hpacellseg-style probability maps."""

    name: str

    def predict(self, rgby: np.ndarray) -> ProbabilityMaps:
        """Maps of a (4, H, W) uint8 image, channels red, green, blue, yellow."""
        ...


# ----------------------------------------------------------------------------------------------
# shapes and the shared post-processing


def _check_rgby(rgby: Any) -> None:
    if not isinstance(rgby, np.ndarray) or rgby.dtype != np.uint8 or rgby.ndim != 3 or rgby.shape[0] != 4:
        desc = f"{rgby.dtype} array of shape {rgby.shape}" if isinstance(rgby, np.ndarray) else type(rgby).__name__
        raise InputDataError(f"segmentation expects a (4, H, W) uint8 RGBY image, got a {desc}")
    if rgby.shape[1] == 0 or rgby.shape[2] == 0:
        raise InputDataError(f"segmentation got an empty image of shape {rgby.shape}")


def _scaled_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(h, w) with the longer side ``long_side`` and the aspect ratio kept (at least 1 pixel)."""
    h, w = int(shape[0]), int(shape[1])
    longest = max(h, w)
    return max(1, round(h * long_side / longest)), max(1, round(w * long_side / longest))


def labelling_shape(image_shape: tuple[int, int], scale_factor: float) -> tuple[int, int]:
    """Shape at which label_cell runs for an image: long side ``round(2048 * s)``, aspect kept.

    Args:
        image_shape: the image's (H, W).
        scale_factor: label_cell scale factor s (1.0 = a 2048-pixel field, 0.5 = 1024, ...).

    Returns:
        The (h, w) labelling shape.
    """
    if len(image_shape) != 2 or min(int(v) for v in image_shape) <= 0:
        raise InputDataError(f"image shape must be two positive sizes (H, W), got {tuple(image_shape)}")
    if not isinstance(scale_factor, (int, float)) or not np.isfinite(scale_factor) or scale_factor <= 0:
        raise ConfigError(f"segmentation scale factor must be a positive number, got {scale_factor!r}")
    long_side = round(FIELD_SIZE * scale_factor)
    if long_side < 1:
        raise ConfigError(f"segmentation scale factor {scale_factor} is too small (labelling size {long_side} px)")
    return _scaled_shape(image_shape, long_side)


def _resize_map(pred: np.ndarray, shape: tuple[int, int], what: str, producer: str) -> np.ndarray:
    if not isinstance(pred, np.ndarray) or pred.dtype != np.uint8 or pred.ndim != 3 or pred.shape[2] != 3:
        desc = f"{pred.dtype} {pred.shape}" if isinstance(pred, np.ndarray) else type(pred).__name__
        raise PipelineError(f"map producer {producer!r} returned a bad {what} map ({desc}); expected uint8 (h, w, 3)")
    if pred.shape[:2] == shape:
        return pred
    # INTER_AREA as the 7th place: an area average when shrinking, pixel replication for integer upscales.
    return cv2.resize(pred, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def segment_image(
    rgby: np.ndarray,
    producer: MapProducer,
    scale_factor: float,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Segment the cells of one image.

    Args:
        rgby: (4, H, W) uint8 image, channels red, green, blue, yellow; any size, square or not.
        producer: the probability-map backend (see :func:`create_producer`).
        scale_factor: label_cell scale factor s: labelling happens at a long side of ``round(2048 * s)``.
        out_shape: (h, w) of the returned labels; default the image's (H, W).

    Returns:
        uint16 labels of shape ``out_shape``: 0 background, cells 1..N (raster order at labelling size).
    """
    _check_rgby(rgby)
    shape = labelling_shape(rgby.shape[1:], scale_factor)
    target = tuple(int(v) for v in (out_shape if out_shape is not None else rgby.shape[1:]))
    if len(target) != 2 or min(target) <= 0:
        raise ConfigError(f"segmentation output shape must be two positive sizes (h, w), got {out_shape!r}")
    maps = producer.predict(rgby)
    nuclei = _resize_map(maps.nuclei, shape, "nuclei", producer.name)
    cell = _resize_map(maps.cell, shape, "cell", producer.name)
    labels = label_cell(nuclei, cell, scale_factor)
    if labels.shape != target:
        labels = cv2.resize(labels, (target[1], target[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return labels


# ----------------------------------------------------------------------------------------------
# classical (weight-free) backend


@dataclass(frozen=True)
class ClassicalParams:
    """Parameters of the weight-free producer. Lengths are in pixels of the working grid.

    The working grid is the whole field at a long side of ``work_size`` pixels (HPA's CNN input
    size), so, like label_cell's thresholds, the lengths are relative to the field, not the file.
    """

    work_size: int = 512
    min_level: float = 8 / 255  # intensity floor: keeps black or noise-only fields empty
    nucleus_sigma: float = 1.0  # smoothing of the DNA channel before its Otsu threshold
    clump_factor: float = 2.0  # a nucleus blob above this x the field's typical nucleus area is split
    clump_depth: float = 2.0  # ... at necks at least this deep in its distance transform (h-maxima)
    dna_weight: float = 0.5  # share of DNA in the "cell body" signal max(MT, ER, w * DNA)
    body_sigma: float = 2.0  # smoothing of the cell body signal for the foreground threshold
    body_otsu_fraction: float = 0.2  # foreground = smoothed body signal > fraction * Otsu
    boundary_sigma: float = 4.0  # heavier smoothing for the watershed that splits touching cells


def _otsu(values: np.ndarray) -> float:
    lo, hi = float(values.min()), float(values.max())
    return lo if lo == hi else float(threshold_otsu(values))  # Otsu is undefined on a constant image


def _touching_border(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a differently labelled (non-background) 8-neighbour."""
    as_float = labels.astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    larger = cv2.dilate(as_float, kernel) > as_float
    # Background must not count as "another label" when looking for smaller neighbours.
    background_high = np.where(labels > 0, as_float, np.float32(np.inf))
    smaller = cv2.erode(background_high, kernel) < as_float
    return (labels > 0) & (larger | smaller)


def _encode(labels: np.ndarray) -> np.ndarray:
    """A label image as a certain hpacellseg-style map: interiors 255 in ch2, touching borders 255 in ch1."""
    border = _touching_border(labels)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    out[..., 1][border] = 255
    out[..., 2][(labels > 0) & ~border] = 255
    return out


class ClassicalProducer:
    """Weight-free maps from classical image processing, deterministic.

    Nuclei: Otsu threshold of the smoothed DNA channel, holes filled; blobs much larger than the
    field's typical nucleus (clumps of touching nuclei) are split at the necks of their distance
    transform, while ordinary lobed nuclei stay whole (as HPA's CNN keeps them); blobs below
    label_cell's minimum nucleus area are dropped so that their surroundings go to the neighbours.
    Cells: the foreground is a fraction of the Otsu threshold of ``max(MT, ER, 0.5 * DNA)`` (each
    channel scaled by its 99.5th percentile; cf. hpacellseg's ``0.5 * Otsu`` rule on the CNN map);
    touching cells are split by a watershed of the smoothed signal seeded with the nuclei, so
    boundaries follow the dim gaps between cells. Both segmentations are handed over as certain
    maps (interiors 255, touching borders 255 in the border channel), so label_cell reproduces them
    and applies its size rules, exactly as for CNN maps.
    """

    name = "classical"

    def __init__(self, params: ClassicalParams | None = None) -> None:
        self.params = params or ClassicalParams()

    def predict(self, rgby: np.ndarray) -> ProbabilityMaps:
        """Maps at the working grid (long side ``work_size``) of a (4, H, W) uint8 image."""
        _check_rgby(rgby)
        p = self.params
        h, w = _scaled_shape(rgby.shape[1:], p.work_size)
        shrink = h <= rgby.shape[1] and w <= rgby.shape[2]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        planes = [cv2.resize(c, (w, h), interpolation=interpolation).astype(np.float32) / 255.0 for c in rgby]
        red, _green, blue, yellow = planes  # the protein channel is not a cell marker
        # label_cell drops nuclei below this area; dropping them here too lets neighbours take their area.
        min_nucleus_area = LabelCellParams().min_nucleus_area * (p.work_size / FIELD_SIZE) ** 2
        nuclei = self._nuclei(blue, min_nucleus_area)
        if not nuclei.any():
            empty = np.zeros((h, w, 3), dtype=np.uint8)
            return ProbabilityMaps(empty, empty.copy())
        cells = self._cells(red, blue, yellow, nuclei)
        return ProbabilityMaps(_encode(nuclei), _encode(cells))

    def _nuclei(self, blue: np.ndarray, min_area: float) -> np.ndarray:
        p = self.params
        smooth = cv2.GaussianBlur(blue, (0, 0), p.nucleus_sigma)
        mask = ndi.binary_fill_holes(smooth > max(_otsu(smooth), p.min_level))
        blobs, n = ndi.label(mask)
        if n == 0:
            return blobs
        areas = np.bincount(blobs.ravel())
        areas[0] = 0
        # Typical nucleus area: median blob area, each capped at twice its largest inscribed disk so
        # that clumps (however many) cannot inflate it; blobs far above it are clumps to split.
        radius = ndi.maximum(ndi.distance_transform_edt(mask), blobs, np.arange(n + 1))
        capped = np.minimum(areas, 2.0 * np.pi * radius**2)
        real = capped[areas >= min_area]
        if len(real):
            clump = areas > p.clump_factor * np.median(real)
            if clump.any():
                blobs = self._split_clumps(mask, blobs, clump)
        areas = np.bincount(blobs.ravel())
        small = areas < min_area
        small[0] = False
        blobs[small[blobs]] = 0
        return blobs

    def _split_clumps(self, mask: np.ndarray, blobs: np.ndarray, clump: np.ndarray) -> np.ndarray:
        """Split the flagged blobs at distance-transform necks; other blobs keep their label."""
        in_clump = clump[blobs]
        distance = cv2.GaussianBlur(ndi.distance_transform_edt(in_clump).astype(np.float32), (0, 0), 1.0)
        peaks, _ = ndi.label(h_maxima(distance, self.params.clump_depth) & in_clump)
        has_peak = np.zeros(len(clump), dtype=bool)
        has_peak[blobs[peaks > 0]] = True
        markers = np.where(has_peak[blobs], 0, blobs)  # a clump without a peak stays one nucleus
        markers[peaks > 0] = peaks[peaks > 0] + blobs.max()
        return watershed(-distance, markers, mask=mask)

    def _cells(self, red: np.ndarray, blue: np.ndarray, yellow: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
        p = self.params

        def scaled(plane: np.ndarray) -> np.ndarray:
            return plane / max(float(np.percentile(plane, 99.5)), p.min_level)

        body = np.maximum(np.maximum(scaled(red), scaled(yellow)), p.dna_weight * scaled(blue))
        smooth = cv2.GaussianBlur(body, (0, 0), p.body_sigma)
        foreground = (smooth > p.body_otsu_fraction * _otsu(smooth)) | (nuclei > 0)
        elevation = -cv2.GaussianBlur(body, (0, 0), p.boundary_sigma)
        return watershed(elevation, nuclei, mask=foreground)


# ----------------------------------------------------------------------------------------------
# hpacellseg backend (HPA's DPN-UNets)


def _require_hpacellseg() -> None:
    try:
        importlib.import_module("hpacellseg")
    except ImportError as exc:
        raise ConfigError(
            f"segmentation backend 'hpacellseg' needs the hpacellseg package ({exc}).\n{INSTALL_HINT}"
        ) from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weight_file(config: Mapping[str, Any], key: str) -> Path:
    """The verified path of one weight file named in the hpacellseg config."""
    name = WEIGHT_FILES[key]
    where = f"download {name} from Zenodo record 4665863 ({ZENODO_URL}) and set hpacellseg.{key} to its path"
    value = config.get(key)
    if not value:
        raise ConfigError(f"config key hpacellseg.{key} is missing: {where}")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"hpacellseg.{key}: weight file {path} does not exist; {where}")
    expected = config.get(f"{key}_sha256")
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", expected.strip()):
        raise ConfigError(
            f"config key hpacellseg.{key}_sha256 must be the 64-hex-digit sha256 of {path} "
            f"(compute it with 'sha256sum {path}'), got {expected!r}"
        )
    actual = _sha256(path)
    if actual != expected.strip().lower():
        raise ConfigError(
            f"checksum mismatch for {path} (hpacellseg.{key}): expected sha256 {expected.strip().lower()}, "
            f"actual {actual}; the file is corrupt or not {name}"
        )
    return path


def _torch_device(device: str) -> torch.device:
    import torch

    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"segmentation device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"segmentation device {device!r} requested but torch sees no CUDA device; use 'cpu'")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"segmentation device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device)


def _load_model(path: Path, key: str, device: torch.device) -> torch.nn.Module:
    import torch
    from torch import nn

    try:
        # The files are pickled whole modules; weights_only=False is needed for them since torch 2.6
        # and is acceptable because the file's sha256 was checked against the configuration first.
        model = torch.load(path, map_location=device, weights_only=False)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot unpickle {path} (hpacellseg.{key}): module {exc.name!r} is missing; "
            f"the HPA DPN-UNet pickles need pytorch_zoo.\n{INSTALL_HINT}"
        ) from exc
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise ConfigError(f"cannot load {path} (hpacellseg.{key}): {type(exc).__name__}: {exc}") from exc
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{path} (hpacellseg.{key}) holds a {type(model).__name__}, not a pickled torch.nn.Module "
            f"such as HPA's {WEIGHT_FILES[key]}"
        )
    for module in model.modules():
        # Pickles from torch < 1.11 lack this attribute and newer torch fails in forward without it.
        if isinstance(module, nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
    return model.to(device).eval()


class HpaCellSegProducer:
    """HPA's DPN-UNet maps, computed the 7th-place way (their preprocessing, not CellSegmentator's).

    The (R, Y, B) stack is resized to 512x512 with anti-aliasing (whatever the input size or
    aspect), normalised with hpacellseg's constants; the nuclei model sees the normalised blue
    plane three times, the cell model (R, Y, B); softmax, channel 0 zeroed, uint8 maps at 512x512.
    """

    name = "hpacellseg"

    def __init__(self, nuclei_model: torch.nn.Module, cell_model: torch.nn.Module, device: str = "cpu") -> None:
        self.device = _torch_device(device)
        self.nuclei_model = nuclei_model.to(self.device).eval()
        self.cell_model = cell_model.to(self.device).eval()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, device: str = "cpu") -> HpaCellSegProducer:
        """Check the package, the weight files and their checksums, then load both models."""
        _require_hpacellseg()
        if not isinstance(config, Mapping):
            raise ConfigError(
                "segmentation backend 'hpacellseg' needs an hpacellseg config with keys "
                f"{', '.join(HPACELLSEG_KEYS)} (weights: Zenodo record 4665863, {ZENODO_URL})"
            )
        unknown = sorted(set(config) - set(HPACELLSEG_KEYS))
        if unknown:
            raise ConfigError(f"unknown hpacellseg config key(s) {unknown}; expected {list(HPACELLSEG_KEYS)}")
        torch_device = _torch_device(device)
        paths = {key: _weight_file(config, key) for key in WEIGHT_FILES}
        models = {key: _load_model(path, key, torch_device) for key, path in paths.items()}
        return cls(models["nuclei_model"], models["cell_model"], device)

    def _model_input(self, rgby: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        stack = np.stack([rgby[0], rgby[3], rgby[2]], axis=-1)  # (H, W, 3): MT, ER, DNA
        size = MODEL_INPUT_SIZE
        # resize() takes the channel axis from output_shape (it has no channel_axis argument) and
        # smooths only the axes that shrink (Gaussian sigma (factor - 1) / 2), as the 7th place did.
        small = resize(stack, (size, size, 3), order=1, anti_aliasing=max(stack.shape[:2]) > size)
        normalised = (small - HPA_MEAN) / HPA_STD
        return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)  # (3, 512, 512)

    def _run(self, model: torch.nn.Module, tensor: torch.Tensor, what: str) -> np.ndarray:
        import torch

        logits = model(tensor)
        expected = (1, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
        if tuple(logits.shape) != expected:
            raise PipelineError(f"the {what} model returned logits of shape {tuple(logits.shape)}, expected {expected}")
        prob = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        prob[0] = 0.0  # hpacellseg's convention: the background channel is zeroed
        return np.rint(prob.transpose(1, 2, 0) * 255.0).astype(np.uint8)

    def predict(self, rgby: np.ndarray) -> ProbabilityMaps:
        """512x512 maps of a (4, H, W) uint8 image."""
        import torch

        _check_rgby(rgby)
        tensor = torch.from_numpy(self._model_input(rgby))[None].to(self.device)
        with torch.inference_mode():
            nuclei = self._run(self.nuclei_model, tensor[:, [2, 2, 2]], "nuclei")
            cell = self._run(self.cell_model, tensor, "cell")
        return ProbabilityMaps(nuclei, cell)


# ----------------------------------------------------------------------------------------------


def create_producer(
    backend: str,
    *,
    device: str = "cpu",
    hpacellseg: dict | None = None,
    threads: int = 1,
) -> MapProducer:
    """Build a probability-map producer.

    Args:
        backend: ``"classical"`` (weight-free, default choice) or ``"hpacellseg"``.
        device: torch device for ``hpacellseg``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        hpacellseg: for ``hpacellseg``: ``{"nuclei_model": path, "nuclei_model_sha256": hex,
            "cell_model": path, "cell_model_sha256": hex}`` (weights from Zenodo record 4665863).
        threads: CPU threads the producer may use; sets OpenCV's (and for hpacellseg torch's)
            process-wide thread count, so parallel pipeline jobs do not oversubscribe the cores.

    Returns:
        The producer.

    Raises:
        ConfigError: unknown backend, bad device or thread count, hpacellseg not installed,
            weight file missing or with a wrong checksum.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown segmentation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"segmentation threads must be a positive integer, got {threads!r}")
    cv2.setNumThreads(threads)
    if backend == "classical":
        return ClassicalProducer()
    import torch

    producer = HpaCellSegProducer.from_config(hpacellseg, device)
    if producer.device.type == "cpu":
        torch.set_num_threads(threads)
    return producer
