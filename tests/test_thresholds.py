import numpy as np
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.submit.thresholds import (
    best_f1_threshold,
    fit_thresholds,
    label_ratio_threshold,
)


def test_f1_threshold_matches_hand_computed_best_cut():
    truth = np.array([1, 0, 1, 0, 1], dtype=bool)
    scores = np.array([0.9, 0.8, 0.6, 0.3, 0.2])
    # cuts: top1 F1 2/4 = .5; top2 2/5 = .4; top3 4/6 = .667; top4 4/7; top5 6/8 = .75 -> all: half the lowest
    assert best_f1_threshold(truth, scores) == pytest.approx(0.1)
    scores = np.array([0.9, 0.1, 0.6, 0.3, 0.5])
    # sorted .9(1) .6(1) .5(1) .3(0) .1(0): top3 F1 = 1, threshold halfway between .5 and .3
    assert best_f1_threshold(truth, scores) == pytest.approx(0.4)


def test_f1_threshold_never_splits_ties_and_falls_back_without_positives():
    truth = np.array([1, 0, 0], dtype=bool)
    scores = np.array([0.7, 0.7, 0.1])
    assert best_f1_threshold(truth, scores) == pytest.approx(0.4)  # both 0.7 positive: F1 2/3
    assert best_f1_threshold(np.zeros(3, bool), scores) == 0.5


def test_label_ratio_threshold_predicts_the_training_share():
    scores = np.array([0.1, 0.9, 0.4, 0.8, 0.2])
    assert label_ratio_threshold(scores, 0.4) == pytest.approx(0.6)  # 2 of 5: 0.9 and 0.8
    assert label_ratio_threshold(scores, 0.0) == 0.5


def test_fit_thresholds_by_method():
    truth = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    scores = np.array([[0.9, 0.2], [0.3, 0.7], [0.8, 0.6]])
    assert fit_thresholds(truth, scores, "fixed", 0.3).tolist() == [0.3, 0.3]
    fitted = fit_thresholds(truth, scores, "f1")
    assert fitted.tolist() == pytest.approx([0.55, 0.4])
    with pytest.raises(InputDataError, match="unknown threshold method 'best'"):
        fit_thresholds(truth, scores, "best")
