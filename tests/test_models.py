import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from hpa_pipeline.errors import ConfigError
from hpa_pipeline.nets.models import (
    CAMClassifier,
    CellClassifier,
    CosineConv1x1,
    CosineLinear,
    create_model,
    create_optimizer,
)


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    # No network here: make the Hugging Face Hub fail at once instead of retrying for a minute.
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet"])
def test_cam_model_gives_a_19_channel_cam_at_the_backbone_stride(backbone):
    model = create_model("image", backbone)
    assert isinstance(model, CAMClassifier)
    cam = model(torch.randn(2, 4, 64, 64))
    assert cam.shape == (2, 19, 2, 2)
    assert isinstance(model.head, nn.Conv2d) and model.head.bias is None
    assert isinstance(model.input_norm, nn.InstanceNorm2d) and not model.input_norm.affine


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet"])
def test_cell_model_classifies_8_channel_crops(backbone):
    model = create_model("cell", backbone)
    assert isinstance(model, CellClassifier)
    logits = model(torch.randint(0, 256, (3, 8, 64, 64), dtype=torch.uint8))
    assert logits.shape == (3, 19)
    assert isinstance(model.input_norm, nn.InstanceNorm2d)


def test_instance_norm_makes_the_cam_model_ignore_channel_brightness():
    model = create_model("image", "test_resnet").eval()
    x = torch.rand(1, 4, 64, 64)
    scaled = x * torch.tensor([3.0, 0.5, 10.0, 2.0])[None, :, None, None] + 7.0
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(scaled), atol=1e-3, rtol=1e-3)
    plain = create_model("image", "test_resnet", instance_norm_input=False)
    assert isinstance(plain.input_norm, nn.Identity)


def test_cosine_cam_head_is_scale_times_cosine_similarity():
    model = create_model("image", "test_efficientnet", cosine_head=True).eval()
    head = model.head
    assert isinstance(head, CosineConv1x1)
    assert head.scale.item() == 20.0 and head.scale.requires_grad
    features = torch.randn(2, model.backbone.num_features, 3, 3)
    cam = head(features)
    cosine = F.cosine_similarity(features[:, None], head.weight[None, :, :, None, None], dim=2)
    torch.testing.assert_close(cam, 20.0 * cosine, rtol=1e-4, atol=1e-4)
    assert cam.abs().max() <= 20.0 + 1e-4
    # Invariant to the feature norm and to the class weights' norm.
    torch.testing.assert_close(head(features * 5.0), cam, rtol=1e-4, atol=1e-4)


def test_cosine_cell_head_is_normalised_and_bias_free():
    model = create_model("cell", "test_resnet", cosine_head=True)
    head = model.head
    assert isinstance(head, CosineLinear)
    assert not any(name.endswith("bias") for name, _ in head.named_parameters())
    features = torch.randn(4, model.backbone.num_features)
    expected = 20.0 * F.normalize(features, dim=1) @ F.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(features), expected)


def test_init_checkpoint_round_trip(tmp_path):
    source = create_model("image", "test_efficientnet", cosine_head=True)
    with torch.no_grad():
        source.head.scale.fill_(13.0)
    raw = tmp_path / "raw.pt"
    wrapped = tmp_path / "final.pt"
    torch.save(source.state_dict(), raw)
    torch.save({"model": source.state_dict(), "epoch": 49}, wrapped)
    for path in (raw, wrapped):
        loaded = create_model("image", "test_efficientnet", cosine_head=True, init_checkpoint=path)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_init_checkpoint_of_another_architecture_names_the_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(create_model("image", "test_resnet").state_dict(), path)
    with pytest.raises(ConfigError, match="other.pt"):
        create_model("image", "test_efficientnet", init_checkpoint=path)


def test_init_checkpoint_with_another_head_reports_the_shape_mismatch(tmp_path):
    path = tmp_path / "five.pt"
    torch.save(create_model("cell", "test_resnet", num_classes=5).state_dict(), path)
    with pytest.raises(ConfigError, match=r"five\.pt.*shape mismatch.*head\.weight"):
        create_model("cell", "test_resnet", init_checkpoint=path)


def test_missing_init_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.pt"):
        create_model("cell", "test_resnet", init_checkpoint=tmp_path / "nope.pt")


def test_unknown_backbone_names_it_and_suggests_close_names():
    with pytest.raises(ConfigError, match=r"efficientnet_b22.*efficientnet_b2"):
        create_model("image", "efficientnet_b22")


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="kind"):
        create_model("tile", "test_resnet")  # type: ignore[arg-type]


def test_pretrained_weights_without_network_give_a_clear_error():
    with pytest.raises(ConfigError, match=r"(?s)test_efficientnet.*pretrained.*local file"):
        create_model("image", "test_efficientnet", pretrained=True)


def test_pretrained_tag_that_does_not_exist_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"test_efficientnet\.r160_in1k"):
        create_model("image", "test_efficientnet.nope", pretrained=True)


def test_pretrained_weights_from_a_local_file_adapt_the_first_conv(tmp_path):
    imagenet = timm.create_model("test_efficientnet")  # 3 channels, 1000 classes: timm's layout
    path = tmp_path / "weights.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("image", "test_efficientnet", pretrained_file=path)
    stem = model.backbone.conv_stem.weight
    assert stem.shape[1] == 4
    # timm tiles the RGB kernel over 4 channels and rescales it by 3/4.
    torch.testing.assert_close(stem[:, :3] * 4 / 3, imagenet.conv_stem.weight)
    assert torch.equal(model.backbone.bn1.weight, imagenet.bn1.weight)


def test_create_optimizer_by_name():
    params = [nn.Parameter(torch.zeros(3))]
    optimizer = create_optimizer("adam", params, lr=1e-3, weight_decay=0.0)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-3
    assert isinstance(create_optimizer("SGD", params, lr=0.1, momentum=0.9), torch.optim.SGD)
    with pytest.raises(ConfigError, match="Adamm"):
        create_optimizer("Adamm", params, lr=1e-3)
    with pytest.raises(ConfigError, match="Adam"):
        create_optimizer("Adam", params, lr=1e-3, no_such_argument=1)


def test_gap_gmp_head_gives_image_logits_of_the_task():
    from hpa_pipeline.nets.models import GapGmpClassifier, image_logits

    model = create_model("image", "test_resnet", head="gap_gmp", num_classes=28).eval()
    assert isinstance(model, GapGmpClassifier)
    x = torch.randn(2, 4, 64, 64)
    assert model(x).shape == (2, 28) and torch.equal(image_logits(model, x), model(x))
    cam = create_model("image", "test_resnet", num_classes=28).eval()
    assert image_logits(cam, x).shape == (2, 28)
    assert torch.allclose(image_logits(cam, x), cam(x).mean(dim=(2, 3)))
    # the head sees the concatenated average and max pooling: twice the backbone's features
    assert model.head[2].in_features == 2 * model.backbone.num_features
    with pytest.raises(ConfigError, match="unknown head 'gem'"):
        create_model("image", "test_resnet", head="gem")
