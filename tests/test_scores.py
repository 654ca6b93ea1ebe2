import numpy as np
import pytest


def test_validation_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score

    from hpa_pipeline.kaggle.images2018 import macro_f1
    from hpa_pipeline.scores import mean_average_precision

    rng = np.random.default_rng(0)
    targets = (rng.random((60, 19)) < 0.2).astype(np.float32)
    targets[:, 7] = 0  # a class without positives is left out
    scores = np.round(rng.random((60, 19)), 1)  # many ties
    present = [c for c in range(19) if targets[:, c].any()]
    expected_map = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in present])
    expected_f1 = f1_score(targets[:, present], scores[:, present] >= 0.5, average="macro", zero_division=0)
    assert mean_average_precision(targets, scores) == pytest.approx(expected_map)
    assert macro_f1(targets > 0.5, scores >= 0.5) == pytest.approx(expected_f1)
