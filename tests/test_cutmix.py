import pytest
import torch
import torch.nn.functional as F

from hpa_pipeline.train.cutmix import (
    apply_cutmix,
    invert_cutmix,
    mixed_fraction,
    sample_cutmix,
)


def _params(seed: int = 0, batch: int = 6, height: int = 64, width: int = 48):
    # Retry a few seeds so that the box is non-empty and the permutation moves something.
    generator = torch.Generator().manual_seed(seed)
    while True:
        params = sample_cutmix(batch, height, width, generator)
        if mixed_fraction(params) > 0.05 and not torch.equal(params.perm, torch.arange(batch)):
            return params


def test_same_generator_seed_gives_same_draw():
    a = sample_cutmix(8, 32, 32, torch.Generator().manual_seed(7))
    b = sample_cutmix(8, 32, 32, torch.Generator().manual_seed(7))
    assert torch.equal(a.perm, b.perm)
    assert (a.top, a.bottom, a.left, a.right, a.lam) == (b.top, b.bottom, b.left, b.right, b.lam)


def test_box_stays_inside_the_image():
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        p = sample_cutmix(4, 40, 30, generator)
        assert 0 <= p.top <= p.bottom <= 40 and 0 <= p.left <= p.right <= 30
        assert sorted(p.perm.tolist()) == [0, 1, 2, 3]


def test_apply_cutmix_pastes_the_box_of_the_partner():
    params = _params()
    x = torch.randn(6, 4, 64, 48)
    mixed = apply_cutmix(x, params)
    box = (slice(None), slice(params.top, params.bottom), slice(params.left, params.right))
    for i in range(6):
        assert torch.equal(mixed[i][box], x[params.perm[i]][box])
        outside = torch.ones(64, 48, dtype=torch.bool)
        outside[box[1:]] = False
        assert torch.equal(mixed[i][:, outside], x[i][:, outside])


def test_inverse_cutmix_restores_each_image_exactly():
    params = _params(seed=3)
    x = torch.randn(6, 4, 64, 48)
    assert torch.equal(invert_cutmix(apply_cutmix(x, params), params), x)


def test_inverse_cutmix_restores_each_images_cam():
    # A CAM-sized tensor at the crop size (the CAM is upsampled first) and a 3-D mask.
    params = _params(seed=5)
    cam = torch.randn(6, 19, 64, 48)
    assert torch.equal(invert_cutmix(apply_cutmix(cam, params), params), cam)
    mask = torch.randint(0, 300, (6, 64, 48))
    assert torch.equal(invert_cutmix(apply_cutmix(mask, params), params), mask)


def test_inverse_cutmix_at_another_size_scales_the_box():
    params = _params(seed=9, height=64, width=64)
    small = torch.randn(6, 19, 32, 32)
    assert torch.equal(invert_cutmix(apply_cutmix(small, params), params), small)


def test_inverse_cutmix_of_a_pixelwise_function_equals_the_clean_output():
    # A pixel-wise "model" commutes with CutMix: undoing it on the output gives the clean output.
    params = _params(seed=11)
    x = torch.randn(6, 4, 64, 48)
    weight = torch.randn(19, 4, 1, 1)
    clean = F.conv2d(x, weight)
    restored = invert_cutmix(F.conv2d(apply_cutmix(x, params), weight), params)
    torch.testing.assert_close(restored, clean)


def test_mixed_fraction_is_box_area_over_image_area():
    params = _params(seed=2, height=50, width=40)
    area = (params.bottom - params.top) * (params.right - params.left)
    assert mixed_fraction(params) == area / 2000
    x = torch.zeros(6, 1, 50, 40)
    x[:, :, params.top : params.bottom, params.left : params.right] = 1
    assert x[0].mean().item() == pytest.approx(mixed_fraction(params))


def test_cutmix_keeps_gradients():
    params = _params(seed=4)
    x = torch.randn(6, 3, 64, 48, requires_grad=True)
    invert_cutmix(apply_cutmix(x, params), params).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
