import numpy as np
import pytest
import torch
from conftest import store_paths
from torch.utils.data import DataLoader

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.folds import read_labelled_images
from hpa_pipeline.io.stores import ShardedArray
from hpa_pipeline.labels import NEGATIVE
from hpa_pipeline.train.datasets import (
    CamTrainingSet,
    CellCropSet,
    EpochSampler,
    collate_cam,
    refine_pseudo_labels,
)


def make_cam_set(demo_stores, pseudo: bool) -> CamTrainingSet:
    root = demo_stores["root"]
    images = read_labelled_images([root / "train/index.csv"], [root / "folds/train.csv"])
    cells = read_cell_table(store_paths(demo_stores, "train", "cells"))
    targets = np.random.default_rng(0).random((cells.n_cells, 19)).astype(np.float32) if pseudo else None
    return CamTrainingSet(
        ShardedArray(store_paths(demo_stores, "train", "images_96"), "images", "images"),
        ShardedArray(store_paths(demo_stores, "train", "masks_96"), "masks_resized", "masks"),
        np.arange(10),
        images.labels,
        cells,
        targets,
        crop_size=64,
        hflip=True,
        seed=5,
    )


def test_cam_samples_depend_only_on_seed_epoch_and_image(demo_stores):
    dataset = make_cam_set(demo_stores, pseudo=False)
    first, again, other_epoch = dataset[(3, 0)], dataset[(3, 0)], dataset[(3, 1)]
    assert first["image"].shape == (4, 64, 64) and first["mask"].shape == (64, 64)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert not torch.equal(first["image"], other_epoch["image"])


def test_loader_batches_do_not_depend_on_workers(demo_stores):
    dataset = make_cam_set(demo_stores, pseudo=True)
    batches = []
    for workers in (0, 1):
        sampler = EpochSampler(len(dataset), seed=1)
        sampler.set_epoch(2)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers, collate_fn=collate_cam)
        batches.append(list(loader))
    for left, right in zip(*batches):
        for key in ("image", "mask", "labels"):
            assert torch.equal(left[key], right[key])
        assert torch.equal(torch.nan_to_num(left["pseudo"], -1), torch.nan_to_num(right["pseudo"], -1))


def test_pseudo_tables_are_padded_with_nan_rows(demo_stores):
    dataset = make_cam_set(demo_stores, pseudo=True)
    batch = collate_cam([dataset[(0, 0)], dataset[(1, 0)]])
    table = batch["pseudo"]
    assert table.shape[0] == 2 and table.shape[2] == 19
    instances = dataset.cells.instances_of(0)
    rows = dataset.cells.offsets[0] + np.arange(len(instances))
    assert torch.allclose(
        table[0, torch.from_numpy(instances.astype(np.int64))], torch.from_numpy(dataset.cell_targets[rows])
    )
    assert torch.isnan(table[0, 0]).all()  # background row


def test_cell_crop_set_pairs_crops_with_targets(demo_stores):
    crops = ShardedArray(store_paths(demo_stores, "train", "crops_96"), "crops", "crops")
    rows = np.array([0, 5, 2])
    targets = np.eye(19, dtype=np.float32)[:3]
    dataset = CellCropSet(crops, rows, targets)
    sample = dataset[(1, 0)]
    assert sample["crop"].shape == (8, 24, 24) and sample["crop"].dtype == torch.float32
    assert torch.equal(sample["crop"], torch.from_numpy(crops[5]).float())
    assert torch.equal(sample["target"], torch.from_numpy(targets[1]))
    with pytest.raises(InputDataError):
        CellCropSet(crops, rows, targets[:2])


def test_pseudo_labels_are_kept_sharpened_held_to_or_mixed_with_the_image_labels():
    targets = np.zeros((2, 19), np.float32)
    targets[:, [0, 1, 2, NEGATIVE]] = [[0.75, 0.5, 0.2, 0.6], [np.nan, 0.9, 0.0, 0.3]]
    assert refine_pseudo_labels(targets).tobytes() == targets.tobytes()
    sharpened = refine_pseudo_labels(targets, sharpening=2.0)
    # 0.75^2 / (0.75^2 + 0.25^2) = 0.9; 0.2 -> 0.04 / 0.68; 0.5, 0 and NaN stay
    np.testing.assert_allclose(sharpened[:, :3], [[0.9, 0.5, 0.04 / 0.68], [np.nan, 0.81 / 0.82, 0.0]], rtol=1e-6)
    image_labels = np.zeros((2, 19), np.float32)
    image_labels[0, 0] = image_labels[1, 2] = 1
    within = refine_pseudo_labels(targets, image_labels_of_cells=image_labels, within_image_labels=True)
    # a class the image lacks is 0, but Negative stays (a labelled image leaves it out though some of its
    # cells show nothing); a cell without a pseudo label (NaN) stays without one
    expected = np.zeros((2, 19), np.float32)
    expected[:, [0, NEGATIVE]] = [[0.75, 0.6], [np.nan, 0.3]]
    np.testing.assert_array_equal(within, expected)
    # a weight w mixes in the image labels: w * pseudo + (1 - w) * image label
    blended = refine_pseudo_labels(targets, image_labels_of_cells=image_labels, weight=0.25)
    np.testing.assert_allclose(
        blended[:, [0, 1, 2, NEGATIVE]], [[0.9375, 0.125, 0.05, 0.15], [np.nan, 0.225, 0.75, 0.075]], rtol=1e-6
    )
    assert refine_pseudo_labels(targets, image_labels_of_cells=image_labels, weight=0.0)[0].tolist() == (
        image_labels[0].tolist()
    )
    with pytest.raises(ValueError, match="image_labels_of_cells"):
        refine_pseudo_labels(targets, weight=0.5)
