"""DeepLabv3+ and its backbones: shapes at odd sizes, dilation, ASPP rates, weight files, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from tce_ray.models import ASPP, deeplabv3plus, list_backbones
from tce_ray.models.backbones import TinyBackbone

torch.set_num_threads(1)


def _aspp_dilations(model: nn.Module) -> list[int]:
    aspp = next(m for m in model.modules() if isinstance(m, ASPP))
    return sorted({m.dilation[0] for m in aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)})


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_list_backbones():
    assert set(list_backbones()) == {"resnet101", "resnet50", "mobilenet_v3_large", "tiny"}


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("hw", [(33, 47), (64, 64), (65, 67), (17, 96)])
def test_tiny_output_shape_any_size(output_stride, hw):
    model = deeplabv3plus(7, backbone="tiny", output_stride=output_stride).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = model(x)
    assert type(out) is torch.Tensor
    assert out.shape == (2, 7, *hw) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("output_stride", [8, 16])
def test_tiny_feature_strides_and_rates(output_stride):
    model = deeplabv3plus(5, backbone="tiny", output_stride=output_stride).eval()
    h, w = 65, 67
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, h, w))
    # every stride-2 conv with padding 1 and kernel 3 maps n -> ceil(n / 2)
    assert feats["low"].shape[-2:] == (math.ceil(h / 4), math.ceil(w / 4))
    assert feats["high"].shape[-2:] == (math.ceil(h / output_stride), math.ceil(w / output_stride))
    assert _aspp_dilations(model) == ([6, 12, 18] if output_stride == 16 else [12, 24, 36])


def test_tiny_size_and_training_step_batch_one():
    model = deeplabv3plus(12, backbone="tiny")
    assert 100_000 <= _params(model) <= 500_000
    # batch size 1 in train mode (the image-pooling branch has no BatchNorm)
    model.train()
    x, y = torch.randn(1, 3, 48, 64), torch.randint(0, 12, (1, 48, 64))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_decoder_matches_the_paper_widths():
    """resnet heads: 48-channel low-level projection, two 3x3 256-channel convs, 1x1 classifier."""
    model = deeplabv3plus(19, backbone="resnet50")
    assert model.low_proj[0].in_channels == 256 and model.low_proj[0].out_channels == 48
    convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(304, 256, (3, 3)), (256, 256, (3, 3))]
    assert model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == 19
    assert model.aspp.branches[1][0].in_channels == 2048


def test_resnet50_forward_odd_size():
    model = deeplabv3plus(4, backbone="resnet50", output_stride=16).eval()
    x = torch.randn(1, 3, 65, 67)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    assert out.shape == (1, 4, 65, 67)
    assert feats["low"].shape[1:] == (256, 17, 17)
    assert feats["high"].shape[1:] == (2048, 5, 5)


@pytest.mark.parametrize("output_stride,dilations", [(16, [1, 1, 2]), (8, [1, 2, 4])])
def test_resnet101_constructs_dilated(output_stride, dilations):
    model = deeplabv3plus(19, backbone="resnet101", output_stride=output_stride)
    body = model.backbone
    # the last block's 3x3 conv of layer2..4 carries the dilation
    assert [body[f"layer{i}"][-1].conv2.dilation[0] for i in (2, 3, 4)] == dilations
    assert len(body["layer3"]) == 23  # ResNet-101, not 50
    assert _aspp_dilations(model) == ([6, 12, 18] if output_stride == 16 else [12, 24, 36])


@pytest.mark.parametrize("output_stride", [8, 16])
def test_mobilenet_strides(output_stride):
    model = deeplabv3plus(3, backbone="mobilenet_v3_large", output_stride=output_stride).eval()
    x = torch.randn(1, 3, 65, 67)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    assert out.shape == (1, 3, 65, 67)
    assert feats["low"].shape[1:] == (24, 17, 17)
    assert feats["high"].shape[1:] == (960, math.ceil(65 / output_stride), math.ceil(67 / output_stride))


def test_mobilenet_weights_file_round_trip(tmp_path):
    ref = torchvision.models.mobilenet_v3_large(weights=None)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-1, 1)
    path = tmp_path / "mnv3.pth"
    torch.save(ref.state_dict(), path)
    model = deeplabv3plus(5, backbone="mobilenet_v3_large", backbone_weights=str(path))
    ours = model.backbone.state_dict()
    theirs = {k.removeprefix("features."): v for k, v in ref.state_dict().items() if k.startswith("features.")}
    keys = [k for k in ours]
    assert keys and set(keys) <= set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in keys)


def test_tiny_weights_round_trip_and_head_keys_ignored(tmp_path):
    src = TinyBackbone()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(10, 96)  # an ImageNet classifier that must be skipped
    torch.save(state, tmp_path / "tiny.pt")
    model = deeplabv3plus(3, backbone="tiny", backbone_weights=tmp_path / "tiny.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


def test_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        deeplabv3plus(3, backbone="tiny", backbone_weights=str(tmp_path / "nope.pth"))
    state = TinyBackbone().state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("stage4")}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing keys.*stage4"):
        deeplabv3plus(3, backbone="tiny", backbone_weights=tmp_path / "partial.pt")
    torch.save(TinyBackbone().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="does not match"):
        deeplabv3plus(3, backbone="mobilenet_v3_large", backbone_weights=tmp_path / "tiny.pt")
    bad = dict(state)
    bad["stem.0.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="stem.0.weight"):
        deeplabv3plus(3, backbone="tiny", backbone_weights=tmp_path / "shape.pt")


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "vgg16", ""])
def test_unknown_backbone_lists_choices(name):
    with pytest.raises(ValueError, match="resnet101.*tiny") as exc:
        deeplabv3plus(3, backbone=name)
    assert repr(name) in str(exc.value)


@pytest.mark.parametrize("kwargs", [{"output_stride": 32}, {"output_stride": 4}, {"num_classes": 0}, {"num_classes": 2.5}])
def test_bad_arguments(kwargs):
    args = {"num_classes": 3, "backbone": "tiny", **kwargs}
    with pytest.raises(ValueError):
        deeplabv3plus(**args)
