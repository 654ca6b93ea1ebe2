"""Tests of the synthetic demo data generator (hpa_pipeline.data.synth)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hpa_pipeline.data import synth
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import CHANNELS, read_rgby
from hpa_pipeline.io.folders import SYNTHETIC_MARKER, holds_images, holds_real_images, is_synthetic
from hpa_pipeline.labels import (
    N_CLASSES,
    NEGATIVE,
    parse_labels,
    read_test_table,
    read_train_table,
)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Small fields keep the module fast; 20 train images are enough for every class to appear.
SMALL = dict(n_train=20, n_test=4, image_size=128, cells_per_image=(4, 8), empty_test_images=1, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth.write_demo_dataset(out, seed=0, **SMALL)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mask(root: Path, split: str, image_id: str) -> np.ndarray:
    return cv2.imread(str(root / "truth" / split / f"{image_id}_cellmask.png"), cv2.IMREAD_UNCHANGED)


def _cells(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "truth" / "cells.csv", dtype={"ID": str, "Label": str, "split": str})


# ------------------------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synth.write_demo_dataset(again, seed=0, **SMALL)
    first, second = _files(dataset), _files(again)
    assert first.keys() == second.keys()
    different = [name for name in first if first[name] != second[name]]
    assert not different


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    kwargs = dict(n_train=2, n_test=1, image_size=96, cells_per_image=(3, 5), progress=False)
    synth.write_demo_dataset(tmp_path / "a", seed=1, **kwargs)
    synth.write_demo_dataset(tmp_path / "b", seed=2, **kwargs)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() != b.keys()  # other IDs
    assert set(a.values()).isdisjoint(b.values())  # and no file with the same content


def test_render_field_is_deterministic() -> None:
    one = synth.render_field(np.random.default_rng(7), 160, 200, 6, [14, 0])
    two = synth.render_field(np.random.default_rng(7), 160, 200, 6, [14, 0])
    assert np.array_equal(one.channels, two.channels)
    assert np.array_equal(one.cell_mask, two.cell_mask)
    assert one.cell_labels == two.cell_labels


def test_ids_do_not_depend_on_dataset_size() -> None:
    small = synth.plan_dataset(n_train=3, n_test=1, seed=5)
    large = synth.plan_dataset(n_train=30, n_test=8, seed=5)
    assert [s.image_id for s in small if s.split == "train"] == [s.image_id for s in large[:3]]


# ------------------------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------------------------


def test_exact_layout_and_columns(dataset: Path) -> None:
    train = pd.read_csv(dataset / "train.csv", dtype=str)
    sub = pd.read_csv(dataset / "sample_submission.csv", dtype=str)
    assert list(train.columns) == ["ID", "Label"]
    assert list(sub.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    assert list(_cells(dataset).columns) == ["split", "ID", "instance", "Label"]
    assert len(train) == 20 and len(sub) == 4
    assert (sub["PredictionString"] == "0 1 eNoLCAgIMAEABJkBdQ==").all()
    # The project's own readers accept the tables.
    assert len(read_train_table(dataset / "train.csv")) == 20
    assert len(read_test_table(dataset / "sample_submission.csv")) == 4

    expected = {"train.csv", "sample_submission.csv", "truth/cells.csv", SYNTHETIC_MARKER}
    for split, ids in (("train", train["ID"]), ("test", sub["ID"])):
        for image_id in ids:
            expected |= {f"{split}/{image_id}_{channel}.png" for channel in CHANNELS}
            expected.add(f"truth/{split}/{image_id}_cellmask.png")
    assert set(_files(dataset)) == expected
    # No temporary folders are left next to the dataset.
    assert [p.name for p in dataset.parent.iterdir()] == ["data"]


def test_ids_unique_and_uuid_shaped(dataset: Path) -> None:
    ids = list(pd.read_csv(dataset / "train.csv", dtype=str)["ID"])
    ids += list(pd.read_csv(dataset / "sample_submission.csv", dtype=str)["ID"])
    assert len(set(ids)) == len(ids) == 24
    assert all(UUID.match(image_id) for image_id in ids)


def test_images_are_single_channel_uint8_and_masks_uint16(dataset: Path) -> None:
    image_id = pd.read_csv(dataset / "train.csv", dtype=str)["ID"][0]
    for channel in CHANNELS:
        plane = cv2.imread(str(dataset / "train" / f"{image_id}_{channel}.png"), cv2.IMREAD_UNCHANGED)
        assert plane.dtype == np.uint8 and plane.shape == (128, 128)
    mask = _mask(dataset, "train", image_id)
    assert mask.dtype == np.uint16 and mask.shape == (128, 128)
    rgby = read_rgby(dataset / "train", image_id)
    assert rgby.shape == (4, 128, 128)


def test_non_square_test_image_sizes_match_png(dataset: Path) -> None:
    sub = pd.read_csv(dataset / "sample_submission.csv", dtype={"ID": str})
    shapes = set()
    for row in sub.itertuples():
        for channel in CHANNELS:
            plane = cv2.imread(str(dataset / "test" / f"{row.ID}_{channel}.png"), cv2.IMREAD_UNCHANGED)
            assert plane.shape == (row.ImageHeight, row.ImageWidth)
        assert _mask(dataset, "test", row.ID).shape == (row.ImageHeight, row.ImageWidth)
        shapes.add((row.ImageHeight, row.ImageWidth))
    assert (128, 171) in shapes  # the 4:3 one (last test image)
    assert (128, 128) in shapes


# ------------------------------------------------------------------------------------------------------------------
# Masks and labels
# ------------------------------------------------------------------------------------------------------------------


def test_masks_consistent_with_images_and_cells_csv(dataset: Path) -> None:
    cells = _cells(dataset)
    listed = {(r.split, r.ID): set() for r in cells.itertuples()}
    for r in cells.itertuples():
        listed[(r.split, r.ID)].add(int(r.instance))
    tables = {
        "train": pd.read_csv(dataset / "train.csv", dtype=str)["ID"],
        "test": pd.read_csv(dataset / "sample_submission.csv", dtype=str)["ID"],
    }
    for split, ids in tables.items():
        for image_id in ids:
            mask = _mask(dataset, split, image_id)
            present = set(np.unique(mask).tolist()) - {0}
            assert present == listed.get((split, image_id), set())
            if present:
                assert present == set(range(1, max(present) + 1))  # ids 1..N without gaps
            blue = read_rgby(dataset / split, image_id)[2]
            # Nuclei (bright blue) lie inside cells, and every cell has a nucleus.
            bright = blue > 40
            assert bright.any() == bool(present)
            if present:
                assert (mask[bright] > 0).mean() > 0.98
            for k in present:
                assert blue[mask == k].max() > 40, (split, image_id, k)


def test_nuclei_inside_their_own_cells() -> None:
    field = synth.render_field(np.random.default_rng(3), 256, 256, 12, [0])
    nuc = field.nucleus_mask
    assert np.array_equal(field.cell_mask[nuc > 0], nuc[nuc > 0])
    assert set(np.unique(nuc).tolist()) == set(np.unique(field.cell_mask).tolist())
    for k in range(1, 13):
        # A nucleus is a fraction of its cell, not all of it.
        assert 0.05 < (nuc == k).sum() / (field.cell_mask == k).sum() < 0.7


def test_weak_labels(dataset: Path) -> None:
    train = pd.read_csv(dataset / "train.csv", dtype=str)
    image_labels = {("train", r.ID): parse_labels(r.Label) for r in train.itertuples()}
    cells = _cells(dataset)
    differs = 0
    shown: dict[tuple[str, str], set[int]] = {}
    for r in cells[cells["split"] == "train"].itertuples():
        labels = parse_labels(r.Label)
        image = image_labels[("train", r.ID)]
        assert set(labels) <= set(image) | {NEGATIVE}
        assert labels == [NEGATIVE] or NEGATIVE not in labels
        differs += set(labels) != set(image)
        shown.setdefault(("train", r.ID), set()).update(labels)
    assert differs > 0
    for key, image in image_labels.items():
        assert 1 <= len(image) <= 3
        assert image == [NEGATIVE] or NEGATIVE not in image
        assert set(image) <= shown[key]  # every image class is shown by some cell


def test_class_coverage(dataset: Path) -> None:
    train = read_train_table(dataset / "train.csv")
    assert set().union(*map(set, train["labels"])) == set(range(N_CLASSES))
    # Any 19 consecutive images cover every class (cycling, not luck), whatever the seed.
    for seed in (1, 2):
        specs = synth.plan_dataset(n_train=19, n_test=0, seed=seed)
        assert {s.classes[0] for s in specs} == set(range(N_CLASSES))


def test_mitotic_spindle_only_in_mitotic_cells() -> None:
    field = synth.render_field(np.random.default_rng(11), 256, 256, 12, [11])
    assert field.mitotic
    for k, labels in field.cell_labels.items():
        assert labels == ([11] if k in field.mitotic else [NEGATIVE])
    assert field.image_labels == [11]


def test_negative_image_has_negative_cells_and_dim_green() -> None:
    field = synth.render_field(np.random.default_rng(4), 256, 256, 10, [NEGATIVE])
    assert all(labels == [NEGATIVE] for labels in field.cell_labels.values())
    assert field.channels[1][field.cell_mask > 0].mean() < 10


def test_green_patterns_are_distinct() -> None:
    """Nuclear classes put their green inside nuclei, cytoplasmic ones outside; the plasma membrane at the edge."""

    def stats(cls: int) -> dict[str, float]:
        field = synth.render_field(np.random.default_rng(100 + cls), 256, 256, 10, [cls])
        green = field.channels[1].astype(np.float64)
        own = [k for k, labels in field.cell_labels.items() if labels == [cls]]
        assert own, cls
        cell = np.isin(field.cell_mask, own)
        # Keep 3 px away from the nuclear outline, where the optical blur mixes the two compartments.
        kernel = np.ones((7, 7), np.uint8)
        nuc_mask = (field.nucleus_mask > 0).astype(np.uint8)
        nuc = cell & cv2.erode(nuc_mask, kernel).astype(bool)
        cyto = cell & ~cv2.dilate(nuc_mask, kernel).astype(bool)
        ring = cyto & ~cv2.erode(cell.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        total = green[cell].mean()
        return {
            "nuc": green[nuc].mean() if nuc.any() else float("nan"),
            "cyto": green[cyto].mean(),
            "ring": green[ring].mean(),
            "inner": green[cyto & ~ring].mean(),
            # Brightest 3x3 neighbourhood / mean: high for dots and blobs, low for diffuse patterns.
            "peak": cv2.blur(green, (3, 3))[cell].max() / max(1.0, total),
        }

    for cls in (0, 1, 2, 4, 5):
        s = stats(cls)
        assert s["nuc"] > 2 * s["cyto"], (cls, s)
    for cls in (6, 8, 14, 16, 17):
        s = stats(cls)
        assert s["cyto"] > 2 * s["nuc"], (cls, s)
    membrane = stats(13)
    assert membrane["ring"] > 2 * membrane["inner"]
    # Point-like patterns are concentrated (high peak / mean); diffuse ones are not.
    assert stats(12)["peak"] > 3 * stats(16)["peak"]
    assert stats(15)["peak"] > 3 * stats(16)["peak"]
    # Signature vectors of all 18 patterns differ.
    signatures = {}
    for cls in range(NEGATIVE):
        s = stats(cls)
        nuc = 0.0 if np.isnan(s["nuc"]) else s["nuc"]  # a mitotic cell's chromosomes vanish in the erosion
        signatures[cls] = (round(nuc / (nuc + s["cyto"]), 3), round(s["ring"] / s["inner"], 2), round(s["peak"], 1))
    assert len(set(signatures.values())) == NEGATIVE


# ------------------------------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------------------------------


def test_empty_test_image_has_no_cells(dataset: Path) -> None:
    sub = pd.read_csv(dataset / "sample_submission.csv", dtype=str)
    empty_id = sub["ID"][0]
    assert not _mask(dataset, "test", empty_id).any()
    assert empty_id not in set(_cells(dataset)["ID"])
    channels = read_rgby(dataset / "test", empty_id)
    assert channels.mean() < 3  # background only

    field = synth.render_field(np.random.default_rng(0), 100, 80, 0, [0])
    assert not field.cell_mask.any() and field.cell_labels == {} and field.image_labels == [NEGATIVE]


def test_more_than_255_cells(tmp_path: Path) -> None:
    field = synth.render_field(np.random.default_rng(0), 256, 256, 300, [0, 16])
    assert field.cell_mask.dtype == np.uint16
    assert set(np.unique(field.cell_mask).tolist()) == set(range(301))
    assert len(field.cell_labels) == 300
    # The uint16 mask survives the PNG round trip.
    synth.write_demo_dataset(
        tmp_path / "many", n_train=1, n_test=0, image_size=256, cells_per_image=(300, 300), progress=False
    )
    image_id = pd.read_csv(tmp_path / "many" / "train.csv", dtype=str)["ID"][0]
    mask = _mask(tmp_path / "many", "train", image_id)
    assert mask.dtype == np.uint16 and mask.max() == 300
    assert len(_cells(tmp_path / "many")) == 300


def test_non_square_render_field() -> None:
    field = synth.render_field(np.random.default_rng(0), 90, 160, 5, [7])
    assert field.channels.shape == (4, 90, 160) and field.cell_mask.shape == (90, 160)


def test_invalid_classes_are_rejected() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="Negative"):
        synth.render_field(rng, 64, 64, 3, [NEGATIVE, 0])
    with pytest.raises(ValueError):
        synth.render_field(rng, 64, 64, 3, [19])
    with pytest.raises(ValueError):
        synth.render_field(rng, 64, 64, 3, [])


# ------------------------------------------------------------------------------------------------------------------
# Writing safely
# ------------------------------------------------------------------------------------------------------------------


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    with pytest.raises(InputDataError, match=re.escape(f"{out} exists already; remove it, or pass --overwrite")):
        synth.write_demo_dataset(out, n_train=1, n_test=0, image_size=64, progress=False)
    (out / "old.txt").write_text("old")
    synth.write_demo_dataset(out, n_train=1, n_test=1, image_size=64, overwrite=True, progress=False)
    assert not (out / "old.txt").exists()
    assert (out / "train.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no leftovers of the swap


def test_marks_its_datasets_and_replaces_only_those(tmp_path: Path) -> None:
    out = tmp_path / "data"
    synth.write_demo_dataset(out, n_train=1, n_test=1, image_size=64, progress=False)
    assert is_synthetic(out) and holds_images(out) and not holds_real_images(out)
    synth.write_demo_dataset(out, n_train=2, n_test=1, image_size=64, seed=1, overwrite=True, progress=False)
    assert len(pd.read_csv(out / "train.csv")) == 2


def test_never_writes_into_a_folder_of_real_images(tmp_path: Path) -> None:
    out = tmp_path / "data"
    synth.write_demo_dataset(out, n_train=1, n_test=1, image_size=64, progress=False)
    (out / SYNTHETIC_MARKER).unlink()  # from now on these images are someone's own data
    before = _files(out)
    with pytest.raises(
        InputDataError, match=re.escape(f"refusing to write synthetic data into {out}: it holds images")
    ):
        synth.write_demo_dataset(out, n_train=1, n_test=1, image_size=64, overwrite=True, progress=False)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_no_partial_output_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synth.render_field
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_field", failing)
    out = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        synth.write_demo_dataset(out, n_train=4, n_test=1, image_size=64, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_failed_overwrite_keeps_the_old_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    synth.write_demo_dataset(out, n_train=1, n_test=0, image_size=64, progress=False)
    before = _files(out)

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(synth, "render_field", broken)
    with pytest.raises(RuntimeError):
        synth.write_demo_dataset(out, n_train=2, n_test=0, image_size=64, overwrite=True, progress=False)
    assert _files(out) == before


# ------------------------------------------------------------------------------------------------------------------
# Full-size fields
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_field_is_realistic_and_fast() -> None:
    start = time.perf_counter()
    field = synth.render_field(np.random.default_rng(0), 2048, 2048, 25, [14, 12, 4])
    elapsed = time.perf_counter() - start
    assert elapsed < 10  # ~1.2 s on a 2-core laptop-class machine; generous for loaded CI hosts
    areas = np.bincount(field.cell_mask.ravel())[1:]
    nuclei = np.bincount(field.nucleus_mask.ravel())[1:]
    # HPA 2048^2 fields: cells ~1e5 px (median), nuclei ~2e4 px, cells covering much of the field.
    assert 4e4 < np.median(areas) < 2.5e5
    assert 8e3 < np.median(nuclei) < 4e4
    assert 0.4 < (field.cell_mask > 0).mean() < 0.95
