"""Segmentation: labelling shapes, segment_image, the classical producer, the hpacellseg backend."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REALDATA, blob_image, real_image_ids, requires_realdata
from scipy import ndimage as ndi
from torch import nn

from hpa_pipeline.errors import ConfigError, InputDataError, PipelineError
from hpa_pipeline.io.channels import read_rgby
from hpa_pipeline.preprocess.segment import (
    ProbabilityMaps,
    create_producer,
    labelling_shape,
    segment_image,
)

KAGGLE = REALDATA / "kaggle2021_train"


def best_iou(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Best IoU of each true cell with any predicted cell (at IoU >= 0.5 a match is one-to-one)."""
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(labels, return_inverse=True)
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    table = np.bincount(t.ravel() * n_p + p.ravel(), minlength=n_t * n_p).reshape(n_t, n_p)
    inter = table[1:, 1:]
    union = table[1:].sum(1)[:, None] + table[:, 1:].sum(0)[None, :] - inter
    return (inter / np.maximum(union, 1)).max(axis=1) if n_p > 1 else np.zeros(n_t - 1)


def dense_field(size: int = 2048, pitch: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A field packed with small touching cells (dim gaps between them) and their true labels."""
    rng = np.random.default_rng(seed)
    grid = np.arange(pitch // 2, size, pitch)
    seeds = np.zeros((size, size), np.int32)
    cy, cx = np.meshgrid(grid, grid, indexing="ij")
    cy = np.clip(cy.ravel() + rng.integers(-pitch // 10, pitch // 10 + 1, cy.size), 0, size - 1)
    cx = np.clip(cx.ravel() + rng.integers(-pitch // 10, pitch // 10 + 1, cx.size), 0, size - 1)
    seeds[cy, cx] = np.arange(1, cy.size + 1)
    distance, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    truth = np.where(distance < 0.6 * pitch, seeds[iy, ix], 0)
    body = (truth > 0) & (ndi.morphological_gradient(truth, size=3) == 0)
    image = np.stack([90 * body, 20 * body, 160 * (distance < 0.33 * pitch), 70 * body]).astype(np.float32)
    image += rng.normal(5, 4, image.shape).astype(np.float32)
    image = np.stack([cv2.GaussianBlur(plane, (0, 0), 1.5) for plane in image])
    return np.clip(image, 0, 255).astype(np.uint8), truth


class FixedProducer:
    """A producer returning prepared maps, to test segment_image on its own."""

    name = "fixed"

    def __init__(self, maps: ProbabilityMaps) -> None:
        self.maps = maps

    def predict(self, rgby: np.ndarray) -> ProbabilityMaps:
        return self.maps


# --- labelling_shape / segment_image -----------------------------------------------------------


@pytest.mark.parametrize(
    ("image_shape", "scale", "expected"),
    [
        ((2048, 2048), 1.0, (2048, 2048)),
        ((1536, 1536), 1.0, (2048, 2048)),  # train path: fixed relative to the field
        ((3072, 3072), 0.5, (1024, 1024)),  # test path
        ((1728, 1728), 0.5, (1024, 1024)),
        ((512, 512), 0.25, (512, 512)),  # demo
        ((1500, 1000), 0.5, (1024, 683)),  # non-square: long side fixed, aspect kept
        ((384, 512), 0.25, (384, 512)),
        ((100, 4000), 0.5, (26, 1024)),
    ],
)
def test_labelling_shape(image_shape: tuple[int, int], scale: float, expected: tuple[int, int]) -> None:
    assert labelling_shape(image_shape, scale) == expected


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), 1e-6])
def test_labelling_shape_rejects_bad_scale(scale: float) -> None:
    with pytest.raises(ConfigError, match="scale factor"):
        labelling_shape((512, 512), scale)


@pytest.mark.parametrize(
    ("shape", "out_shape"),
    [((256, 256), None), ((200, 320), None), ((256, 256), (512, 512)), ((200, 320), (150, 240))],
)
def test_segment_image_shape_and_dtype(shape: tuple[int, int], out_shape: tuple[int, int] | None) -> None:
    image, truth = blob_image(
        *shape, [(shape[0] // 3, shape[1] // 3), (2 * shape[0] // 3, 2 * shape[1] // 3)], radius=min(shape) // 6
    )
    labels = segment_image(image, create_producer("classical"), 0.125, out_shape=out_shape)
    assert labels.dtype == np.uint16
    assert labels.shape == (out_shape or shape)
    if out_shape is None:
        assert labels.max() == 2 and (best_iou(truth, labels) >= 0.7).all()


def test_segment_image_resizes_maps_and_labels() -> None:
    """Maps of any resolution go to the labelling shape; labels come back nearest-exact."""
    maps = np.zeros((128, 128, 3), np.uint8)
    maps[32:96, 32:96, 2] = 255  # one square cell at the maps' resolution
    nuclei = maps.copy()
    nuclei[:, :, 2] = 0
    nuclei[52:76, 52:76, 2] = 255
    producer = FixedProducer(ProbabilityMaps(nuclei, maps))
    rgby = np.zeros((4, 300, 600), np.uint8)  # 1:2 image; the maps are square and get stretched
    labels = segment_image(rgby, producer, 0.25)
    assert labels.shape == (300, 600) and labels.dtype == np.uint16 and labels.max() == 1
    rows, cols = np.nonzero(labels)
    assert abs(rows.min() - 75) <= 3 and abs(rows.max() - 224) <= 3
    assert abs(cols.min() - 150) <= 4 and abs(cols.max() - 449) <= 4


def test_segment_image_rejects_bad_input() -> None:
    producer = create_producer("classical")
    with pytest.raises(InputDataError, match=r"\(4, H, W\) uint8"):
        segment_image(np.zeros((3, 64, 64), np.uint8), producer, 0.25)
    with pytest.raises(InputDataError, match=r"\(4, H, W\) uint8"):
        segment_image(np.zeros((4, 64, 64), np.uint16), producer, 0.25)
    with pytest.raises(ConfigError, match="output shape"):
        segment_image(np.zeros((4, 64, 64), np.uint8), producer, 0.25, out_shape=(0, 64))
    bad = FixedProducer(ProbabilityMaps(np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(PipelineError, match="'fixed' returned a bad nuclei map"):
        segment_image(np.zeros((4, 64, 64), np.uint8), bad, 0.25)


def test_unknown_backend_and_threads() -> None:
    with pytest.raises(ConfigError, match="unknown segmentation backend 'cellpose'"):
        create_producer("cellpose")
    with pytest.raises(ConfigError, match="threads"):
        create_producer("classical", threads=0)


# --- classical producer --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(512, 512), (300, 700), (2048, 2048), (1, 1)])
def test_classical_black_image_gives_no_cells_and_no_warnings(shape: tuple[int, int]) -> None:
    producer = create_producer("classical")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = producer.predict(np.zeros((4, *shape), np.uint8))
        labels = segment_image(np.zeros((4, *shape), np.uint8), producer, 0.25)
        noise = np.random.default_rng(0).integers(0, 6, (4, *shape)).astype(np.uint8)
        noisy = segment_image(noise, producer, 0.25)
    assert not maps.nuclei.any() and not maps.cell.any()
    assert labels.shape == shape and labels.dtype == np.uint16 and not labels.any() and not noisy.any()


def test_classical_maps_follow_hpacellseg_layout() -> None:
    image, _ = blob_image(256, 256, [(80, 80), (170, 170)], radius=45)
    maps = create_producer("classical").predict(image)
    for pred in maps:
        assert pred.dtype == np.uint8 and pred.shape == (512, 512, 3)
        assert not pred[..., 0].any() and pred[..., 2].any()


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_classical_many_small_cells(scale: float) -> None:
    """400 small, touching cells (the smallest label_cell keeps): all found, uint16 labels."""
    image, truth = dense_field()
    labels = segment_image(image, create_producer("classical"), scale)
    assert labels.dtype == np.uint16
    assert labels.max() > 255
    assert (best_iou(truth, labels) >= 0.6).mean() >= 0.95


def _pooled_recall_precision(path: str) -> tuple[float, float]:
    producer = create_producer("classical")
    matched = n_ref = n_pred = 0
    for image_id in real_image_ids():
        rgby = read_rgby(KAGGLE / "images", image_id)
        reference = cv2.imread(str(KAGGLE / "masks" / f"{image_id}_predictedmask.png"), cv2.IMREAD_UNCHANGED)
        if path == "train":  # the train images come in resized to 1536, segmented at s = 1.0
            rgby = np.stack([cv2.resize(plane, (1536, 1536), interpolation=cv2.INTER_AREA) for plane in rgby])
            reference = cv2.resize(reference, (1536, 1536), interpolation=cv2.INTER_NEAREST_EXACT)
            labels = segment_image(rgby, producer, 1.0)
        else:  # test images: originals, s = 0.5, labels at the original resolution
            labels = segment_image(rgby, producer, 0.5)
        assert labels.shape == reference.shape
        iou = best_iou(reference, labels)
        matched += int((iou >= 0.6).sum())
        n_ref += len(iou)
        n_pred += len(np.unique(labels)) - 1
    assert n_ref == 128
    return matched / n_ref, matched / n_pred


@pytest.mark.slow
@requires_realdata
@pytest.mark.parametrize("path", ["train", "test"])
def test_classical_matches_hpa_cnn_masks(path: str) -> None:
    recall, precision = _pooled_recall_precision(path)
    assert recall >= 0.85, f"{path} path recall {recall:.3f}"
    assert precision >= 0.85, f"{path} path precision {precision:.3f}"


# --- hpacellseg backend --------------------------------------------------------------------------


class PickledByOldTorch(nn.Upsample):
    """An Upsample as unpickled from a torch < 1.11 file by a torch without the compatibility
    hook that current torch has: the ``recompute_scale_factor`` attribute stays missing."""

    def __setstate__(self, state: dict) -> None:
        state.pop("recompute_scale_factor", None)
        nn.Module.__setstate__(self, state)


class TinyUNet(nn.Module):
    """Stands in for HPA's pickled DPN-UNets: 3 input channels, 3 class logits, an nn.Upsample."""

    def __init__(self, seed: int, upsample: type[nn.Upsample] = nn.Upsample) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(8, 3, 3, padding=1)
        self.last_input: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_input = x.detach().clone()
        return self.head(self.up(torch.relu(self.down(x))))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_hpacellseg(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in module satisfying only the 'is hpacellseg importable' check."""
    monkeypatch.setitem(sys.modules, "hpacellseg", types.ModuleType("hpacellseg"))


@pytest.fixture
def weights(tmp_path: Path) -> dict[str, str]:
    """Pickled whole modules as HPA ships them: one wrapped in DataParallel, one from an 'old torch'
    (its Upsample lacks recompute_scale_factor)."""
    nuclei, cell = TinyUNet(0), TinyUNet(1, upsample=PickledByOldTorch)
    paths = {"nuclei_model": tmp_path / "nuclei.pth", "cell_model": tmp_path / "cell.pth"}
    torch.save(nn.DataParallel(nuclei), paths["nuclei_model"])
    torch.save(cell, paths["cell_model"])
    config = {key: str(path) for key, path in paths.items()}
    config.update({f"{key}_sha256": _sha256(path) for key, path in paths.items()})
    return config


def test_hpacellseg_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, weights: dict) -> None:
    monkeypatch.setitem(sys.modules, "hpacellseg", None)  # makes "import hpacellseg" fail
    with pytest.raises(ConfigError) as info:
        create_producer("hpacellseg", hpacellseg=weights)
    message = str(info.value)
    assert "pip install --no-deps" in message and "HPA-Cell-Segmentation" in message
    assert "pytorch_zoo" in message and "import setuptools" in message


@pytest.mark.skipif(importlib.util.find_spec("hpacellseg") is not None, reason="hpacellseg is installed")
def test_hpacellseg_really_missing_is_a_config_error(weights: dict) -> None:
    with pytest.raises(ConfigError, match="pip install"):
        create_producer("hpacellseg", hpacellseg=weights)


@pytest.mark.usefixtures("fake_hpacellseg")
def test_hpacellseg_missing_weight_file_names_key_path_and_source(weights: dict, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "dpn.pth"
    with pytest.raises(ConfigError) as info:
        create_producer("hpacellseg", hpacellseg={**weights, "cell_model": str(missing)})
    message = str(info.value)
    assert "hpacellseg.cell_model" in message and str(missing) in message
    assert "4665863" in message and "dpn_unet_cell_3ch_v1.pth" in message


@pytest.mark.usefixtures("fake_hpacellseg")
@pytest.mark.parametrize("key", ["nuclei_model", "nuclei_model_sha256"])
def test_hpacellseg_missing_key_is_named(weights: dict, key: str) -> None:
    config = {k: v for k, v in weights.items() if k != key}
    with pytest.raises(ConfigError, match=f"hpacellseg.{key}"):
        create_producer("hpacellseg", hpacellseg=config)


@pytest.mark.usefixtures("fake_hpacellseg")
def test_hpacellseg_without_config(weights: dict) -> None:
    with pytest.raises(ConfigError, match="nuclei_model, nuclei_model_sha256, cell_model, cell_model_sha256"):
        create_producer("hpacellseg")
    with pytest.raises(ConfigError, match="unknown hpacellseg config key"):
        create_producer("hpacellseg", hpacellseg={**weights, "cell_modle": "x"})


@pytest.mark.usefixtures("fake_hpacellseg")
def test_hpacellseg_checksum_mismatch_names_file_and_both_sums(weights: dict) -> None:
    wrong = "0" * 64
    with pytest.raises(ConfigError) as info:
        create_producer("hpacellseg", hpacellseg={**weights, "nuclei_model_sha256": wrong})
    message = str(info.value)
    assert weights["nuclei_model"] in message and wrong in message and weights["nuclei_model_sha256"] in message


@pytest.mark.usefixtures("fake_hpacellseg")
def test_hpacellseg_not_a_module(weights: dict, tmp_path: Path) -> None:
    path = tmp_path / "state_dict.pth"
    torch.save(TinyUNet(0).state_dict(), path)
    with pytest.raises(ConfigError, match="not a pickled torch.nn.Module"):
        create_producer(
            "hpacellseg", hpacellseg={**weights, "nuclei_model": str(path), "nuclei_model_sha256": _sha256(path)}
        )


@pytest.mark.usefixtures("fake_hpacellseg")
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU"])
def test_hpacellseg_bad_device(weights: dict, device: str) -> None:
    with pytest.raises(ConfigError, match="'cpu', 'cuda' or 'cuda:N'"):
        create_producer("hpacellseg", device=device, hpacellseg=weights)


@pytest.mark.usefixtures("fake_hpacellseg")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_hpacellseg_cuda_without_gpu(weights: dict) -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        create_producer("hpacellseg", device="cuda", hpacellseg=weights)


@pytest.mark.usefixtures("fake_hpacellseg")
def test_hpacellseg_end_to_end_on_cpu(weights: dict) -> None:
    producer = create_producer("hpacellseg", device="cpu", hpacellseg=weights, threads=1)
    assert producer.name == "hpacellseg"
    assert not isinstance(producer.nuclei_model, nn.DataParallel)  # unwrapped
    assert producer.cell_model.up.recompute_scale_factor is None  # patched for old pickles
    image, _ = blob_image(300, 420, [(100, 120), (200, 300)], radius=60)  # non-square, smaller than 512
    image[:, :20, :20] = 0  # a black corner to check the normalisation on
    maps = producer.predict(image)
    for pred in maps:
        assert pred.dtype == np.uint8 and pred.shape == (512, 512, 3)
        assert not pred[..., 0].any()  # hpacellseg convention: channel 0 zeroed
        assert int(pred[..., 1:].astype(int).sum(-1).max()) <= 256  # softmax shares (+ rounding)
    # The 7th-place inputs: the nuclei model sees the normalised blue plane three times.
    nuclei_input = producer.nuclei_model.last_input
    cell_input = producer.cell_model.last_input
    assert nuclei_input.shape == cell_input.shape == (1, 3, 512, 512)
    assert torch.equal(nuclei_input[0, 0], nuclei_input[0, 2]) and torch.equal(cell_input[0, 2], nuclei_input[0, 0])
    corner = (0.0 - np.array([124, 117, 104]) / 255.0) * 0.0167 * 255.0  # a background pixel of value 0
    np.testing.assert_allclose(cell_input[0, :, 0, 0].numpy(), corner, atol=1e-3)
    labels = segment_image(image, producer, 0.25)
    assert labels.shape == (300, 420) and labels.dtype == np.uint16


@pytest.mark.usefixtures("fake_hpacellseg")
def test_hpacellseg_module_from_missing_package_is_explained(
    weights: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unpickling HPA's files imports pytorch_zoo; when that fails the error says how to install it."""
    module = types.ModuleType("fake_zoo_models")

    class ZooNet(TinyUNet):
        pass

    ZooNet.__module__ = "fake_zoo_models"
    ZooNet.__qualname__ = "ZooNet"
    module.ZooNet = ZooNet
    monkeypatch.setitem(sys.modules, "fake_zoo_models", module)
    path = tmp_path / "zoo.pth"
    torch.save(ZooNet(0), path)
    monkeypatch.delitem(sys.modules, "fake_zoo_models")
    config = {**weights, "nuclei_model": str(path), "nuclei_model_sha256": _sha256(path)}
    with pytest.raises(ConfigError, match="module 'fake_zoo_models' is missing.*pytorch_zoo"):
        create_producer("hpacellseg", hpacellseg=config)
