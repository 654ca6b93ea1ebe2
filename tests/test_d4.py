import pytest
import torch

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.nets.d4 import D4_VIEWS, d4_inverse, d4_transform, tta_views


def test_the_eight_d4_views_are_distinct_and_invertible():
    x = torch.arange(2 * 5 * 5).reshape(2, 5, 5)
    outputs = [d4_transform(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outputs}) == 8
    assert D4_VIEWS[0] == (False, False, False)
    for k in range(8):
        assert torch.equal(d4_inverse(d4_transform(x, k), k), x)
    assert tta_views(2) == D4_VIEWS[:2]
    with pytest.raises(ConfigError, match="n_tta"):
        tta_views(9)
