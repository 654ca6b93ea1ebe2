import math

import pytest
import torch

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.train.schedule import lr_at_epoch, set_lr


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        # 0.5 * lr * (1 + cos(pi * e / 50)) * warm-up factor (0.1 * (1 - e/5) + e/5 for e < 5)
        (0, 0.5 * 1e-3 * 2.0 * 0.1),
        (4, 0.5 * 1e-3 * (1 + math.cos(math.pi * 4 / 50)) * (0.1 * 0.2 + 0.8)),
        (5, 0.5 * 1e-3 * (1 + math.cos(math.pi * 5 / 50))),
        (49, 0.5 * 1e-3 * (1 + math.cos(math.pi * 49 / 50))),
    ],
)
def test_lr_matches_hand_computed_values(epoch, expected):
    assert lr_at_epoch(epoch, 1e-3, 50) == pytest.approx(expected, rel=1e-12)


def test_lr_values_written_out():
    assert lr_at_epoch(0, 1e-3, 50) == pytest.approx(1.0e-4)
    assert lr_at_epoch(4, 1e-3, 50) == pytest.approx(8.0712e-4, rel=1e-4)
    assert lr_at_epoch(5, 1e-3, 50) == pytest.approx(9.7553e-4, rel=1e-4)
    assert lr_at_epoch(49, 1e-3, 50) == pytest.approx(9.8664e-7, rel=1e-4)


def test_no_warmup_is_plain_cosine():
    assert lr_at_epoch(0, 2e-3, 10, warmup_epochs=0) == pytest.approx(2e-3)


def test_bad_epochs_are_config_errors():
    with pytest.raises(ConfigError, match="epochs"):
        lr_at_epoch(0, 1e-3, 0)


def test_set_lr_sets_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=1.0)
    set_lr(optimizer, 0.25)
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.25]


def test_step_schedule_holds_each_lr_from_its_epoch_on():
    from hpa_pipeline.train.schedule import step_lr

    steps = [[0, 3e-4], [25, 1e-4], [30, 3e-5]]  # bestfitting's densenet121 schedule
    assert [step_lr(epoch, steps) for epoch in (0, 24, 25, 29, 30, 40)] == [3e-4, 3e-4, 1e-4, 1e-4, 3e-5, 3e-5]
    assert step_lr(0, [[5, 0.1], [2, 0.2]]) == 0.2  # before the first step: the first step's lr
