import numpy as np
import pytest

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.train.folds import make_folds


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
