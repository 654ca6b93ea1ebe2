import pytest
import torch
from torch import nn

from hpa_pipeline.train.swa import WeightAverage, is_swa_epoch, recompute_batchnorm


def test_swa_epochs_start_and_step():
    swa = {"start_epoch": 3, "every": 2}
    assert [epoch for epoch in range(1, 10) if is_swa_epoch(epoch, swa)] == [3, 5, 7, 9]
    assert [epoch for epoch in range(1, 5) if is_swa_epoch(epoch, {"start_epoch": 2})] == [2, 3, 4]
    assert not is_swa_epoch(5, None)


def test_weight_average_is_the_mean_of_the_added_weights():
    model = nn.Linear(2, 1)
    average = WeightAverage()
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            model.weight.fill_(value)
            model.bias.fill_(-value)
        average.update(model)
    average.apply_to(model)
    assert model.weight.tolist() == [[3.0, 3.0]] and model.bias.tolist() == [-3.0]
    again = WeightAverage()
    again.load_state_dict(average.state_dict())
    assert again.count == 3 and torch.equal(again.average["weight"], average.average["weight"])


def test_batchnorm_statistics_are_recomputed_as_the_plain_average():
    model = nn.Sequential(nn.BatchNorm1d(1))
    model[0].running_mean.fill_(100.0)  # stale statistics of some epoch
    batches = [torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0], [7.0]])]
    assert recompute_batchnorm(model, batches) == 2
    # cumulative average of the batch means (2 and 6) and of the unbiased batch variances (2 and 2)
    assert model[0].running_mean.item() == pytest.approx(4.0)
    assert model[0].running_var.item() == pytest.approx(2.0)
    assert model[0].momentum == 0.1  # the layer's own momentum is back


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Linear(1, 1)
    assert recompute_batchnorm(model, [torch.ones(2, 1)]) == 0
