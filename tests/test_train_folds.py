import numpy as np
import pandas as pd
import pytest

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.train.folds import fold_table, make_folds


def _hpa_like_labels(n: int, seed: int) -> np.ndarray:
    """One main label per image and a second one for 30 % of them (roughly HPA's density)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 19), dtype=np.float32)
    labels[np.arange(n), rng.integers(0, 19, n)] = 1
    extra = np.flatnonzero(rng.random(n) < 0.3)
    labels[extra, rng.integers(0, 19, len(extra))] = 1
    return labels


def test_folds_are_stratified_per_label():
    labels = _hpa_like_labels(400, seed=0)
    folds = make_folds(labels, 5, seed=0)
    assert folds.dtype == np.int64 and set(folds.tolist()) == set(range(5))
    per_fold = np.stack([labels[folds == f].sum(axis=0) for f in range(5)])
    even = labels.sum(axis=0) / 5
    assert np.abs(per_fold - even).max() <= 1.0
    assert np.abs(np.bincount(folds) - 80).max() <= 2


def test_folds_are_deterministic_and_depend_on_the_seed():
    labels = _hpa_like_labels(200, seed=1)
    first = make_folds(labels, 5, seed=0)
    assert np.array_equal(first, make_folds(labels, 5, seed=0))
    assert not np.array_equal(first, make_folds(labels, 5, seed=1))


def test_fewer_images_than_folds_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"n_folds = 5 but only 3 images"):
        make_folds(_hpa_like_labels(3, seed=0), 5, seed=0)
    with pytest.raises(ConfigError, match="at least 2"):
        make_folds(_hpa_like_labels(10, seed=0), 1, seed=0)


def test_without_groups_the_folds_are_the_plain_splitters():
    labels = _hpa_like_labels(120, seed=2)
    plain = make_folds(labels, 5, seed=0)
    assert np.array_equal(make_folds(labels, 5, seed=0, groups=np.full(120, -1)), plain)


def test_a_group_shares_one_fold_and_a_fixed_row_keeps_its_fold():
    labels = _hpa_like_labels(200, seed=3)
    groups = np.full(200, -1)
    groups[[3, 50, 199]] = 0
    groups[[7, 8]] = 1
    fixed = np.full(200, -1)
    fixed[[7, 8]] = 4
    fixed[100] = 2
    folds = make_folds(labels, 5, seed=0, groups=groups, fixed=fixed)
    assert len(set(folds[[3, 50, 199]].tolist())) == 1
    assert folds[7] == folds[8] == 4 and folds[100] == 2
    assert set(folds.tolist()) == set(range(5))


def test_a_groups_labels_are_the_union_of_its_images():
    # two images of a rare class in one group: the group carries the class into a single fold
    labels = _hpa_like_labels(100, seed=4)
    labels[:, 5] = 0
    labels[[10, 20], 5] = 1
    groups = np.full(100, -1)
    groups[[10, 20]] = 0
    folds = make_folds(labels, 4, seed=0, groups=groups)
    assert folds[10] == folds[20]


def _index(ids, labels, dataset):
    return pd.DataFrame({"ID": ids, "shard": 0, "Label": labels, "dataset": dataset})


def test_fold_table_keeps_cross_dataset_groups_in_the_earlier_fold_and_drops_test_duplicates():
    rng = np.random.default_rng(0)
    train = _index([f"t{i}" for i in range(40)], [str(rng.integers(0, 19)) for _ in range(40)], "train")
    extra = _index([f"e{i}" for i in range(30)], [str(rng.integers(0, 19)) for _ in range(30)], "pubhpa")
    groups = pd.DataFrame(
        {
            "group": [0, 0, 0, 1, 1, 2, 2],
            "dataset": ["train", "pubhpa", "pubhpa", "train", "test", "pubhpa", "pubhpa"],
            "ID": ["t5", "e1", "e2", "t9", "x0", "e7", "e8"],
        }
    )
    train_folds = fold_table(train, 3, 0, groups, {}, drop_test_duplicates=True)
    assert train_folds["trainable"].tolist() == [image_id != "t9" for image_id in train["ID"]]
    extra_folds = fold_table(extra, 3, 0, groups, {"train": train_folds}, drop_test_duplicates=True)
    fold = dict(zip(extra_folds["ID"], extra_folds["fold"]))
    t5 = int(train_folds.loc[train_folds["ID"] == "t5", "fold"].iloc[0])
    assert fold["e1"] == fold["e2"] == t5 and fold["e7"] == fold["e8"]
    assert extra_folds["trainable"].all()


def test_duplicates_of_images_outside_the_index_are_a_clear_error():
    index = _index(["a", "b", "c"], ["0", "1", "2"], "train")
    groups = pd.DataFrame({"group": [0, 0], "dataset": ["train", "train"], "ID": ["a", "zz"]})
    with pytest.raises(InputDataError, match="train/zz, which the index of train lacks"):
        fold_table(index, 2, 0, groups)
