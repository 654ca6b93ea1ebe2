import numpy as np
import pytest
import torch

from hpa_pipeline.errors import PipelineError
from hpa_pipeline.nets.pooling import cell_mean_pool, present_cells


def _loop_pool(values, labels, instances=None):
    """Reference: a plain Python loop over images and cells."""
    rows, index = [], []
    for b in range(values.shape[0]):
        wanted = instances[b] if instances is not None else sorted(set(labels[b].unique().tolist()) - {0})
        for k in wanted:
            inside = labels[b] == k
            if inside.any():
                rows.append(values[b][:, inside].mean(dim=1))
            else:
                rows.append(torch.full((values.shape[1],), float("nan")))
            index.append((b, int(k)))
    return torch.stack(rows), torch.tensor(index)


def test_cell_mean_pool_equals_a_loop_over_cells_beyond_255_cells():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 400, (3, 40, 40), generator=generator)
    labels[1] = torch.randint(0, 30, (40, 40), generator=generator)  # images of different cell counts
    labels[2][labels[2] == 17] = 0  # a gap in the numbering
    values = torch.randn(3, 5, 40, 40, generator=generator)
    pooled, index = cell_mean_pool(values, labels)
    expected, expected_index = _loop_pool(values, labels)
    assert int(labels[0].max()) > 255
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(pooled, expected)


def test_cell_mean_pool_returns_listed_instances_in_order_with_nan_for_missing():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 300, (2, 32, 32), generator=generator)
    labels[0][labels[0] == 5] = 0
    values = torch.randn(2, 3, 32, 32, generator=generator)
    instances = [torch.tensor([7, 5, 1, 299, 1000]), [3, 2]]  # 5 vanished, 1000 beyond the max
    pooled, index = cell_mean_pool(values, labels, instances)
    expected, expected_index = _loop_pool(values, labels, [[7, 5, 1, 299, 1000], [3, 2]])
    assert index.tolist() == expected_index.tolist()
    torch.testing.assert_close(pooled, expected, equal_nan=True)
    assert torch.isnan(pooled[1]).all() and torch.isnan(pooled[4]).all()
    assert torch.isfinite(pooled[[0, 2, 3, 5, 6]]).all()


def test_cell_mean_pool_skips_background_and_handles_empty_masks():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[1, :2, :2] = 3
    values = torch.randn(2, 4, 8, 8)
    pooled, index = cell_mean_pool(values, labels)
    assert index.tolist() == [[1, 3]]
    torch.testing.assert_close(pooled[0], values[1, :, :2, :2].mean(dim=(1, 2)))


def test_cell_mean_pool_is_differentiable():
    values = torch.randn(1, 2, 6, 6, requires_grad=True)
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :3] = 1
    pooled, _ = cell_mean_pool(values, labels)
    pooled.sum().backward()
    assert torch.allclose(values.grad[0, :, :3], torch.full((2, 3, 6), 1 / 18))
    assert (values.grad[0, :, 3:] == 0).all()


def test_host_side_cells_give_exactly_the_device_path():
    torch.manual_seed(0)
    labels = torch.randint(0, 9, (3, 20, 24))
    labels[1] = 0  # an image without cells
    labels[2][labels[2] == 4] = 0  # a label missing in between
    values = torch.randn(3, 5, 20, 24, requires_grad=True)
    pooled, index = cell_mean_pool(values, labels)
    (pooled * torch.arange(5.0)).sum().backward()
    grad = values.grad.clone()
    values.grad = None
    cells = present_cells(labels.numpy())
    assert cells.width == int(labels.max()) + 1
    host_pooled, host_index = cell_mean_pool(values, labels, cells=cells)
    (host_pooled * torch.arange(5.0)).sum().backward()
    assert torch.equal(host_index, index) and torch.equal(host_pooled, pooled)
    assert torch.equal(values.grad, grad)


def test_host_side_cells_check_their_input():
    with pytest.raises(PipelineError, match="negative"):
        present_cells(-np.ones((1, 2, 2), np.int64))
    with pytest.raises(PipelineError, match="not \\(B, H, W\\)"):
        present_cells(np.zeros((2, 2), np.int64))
    labels = torch.ones(1, 2, 2, dtype=torch.long)
    with pytest.raises(PipelineError, match="not both"):
        cell_mean_pool(torch.zeros(1, 1, 2, 2), labels, [[1]], cells=present_cells(labels.numpy()))
    assert present_cells(np.zeros((2, 3, 3), np.uint16)).index.shape == (0, 2)
