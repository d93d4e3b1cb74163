"""Dilated encoders for DeepLabv3+: each returns {"low": stride-4 features, "high": stride-OS features}.

All torchvision backbones are built with ``weights=None``; ``weights`` is a local state-dict
file (``load_backbone_weights``) or a torchvision weights name such as ``imagenet``
(:mod:`tce_ray.models.pretrained`: the torch hub cache, downloaded into it when online).
ResNet-18/34 use BasicBlocks, which torchvision cannot dilate, so they are not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

from tce_ray.models.pretrained import is_weights_name, pretrained_state_dict


@dataclass(frozen=True)
class Encoder:
    """A backbone module (forward -> {"low", "high"}) and its channel counts."""

    module: nn.Module
    low_channels: int
    high_channels: int


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")


def _unwrap_state(state: Any, where: str) -> dict[str, Any]:
    """The state dict inside what a weights file holds: the dict itself, or under
    ``"state_dict"`` / ``"model"`` (a training checkpoint), keys without DDP's ``module.``."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"backbone_weights {where} holds a {type(state).__name__}, not a state dict")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"backbone_weights {where}: entries {not_tensors[:5]} are not tensors; save "
                         "model.state_dict() (or a dict with it under 'state_dict' or 'model')")
    return state


def load_backbone_weights(model: nn.Module, path: str | Path | dict[str, Any], where: str | None = None) -> None:
    """Load a state dict (a local torchvision state-dict file, or the dict itself) into ``model``;
    the classifier ('fc.*', 'classifier.*') may differ. A file may hold the dict under
    ``"state_dict"`` or ``"model"``, with DDP's ``module.`` prefix.

    Raises FileNotFoundError for a missing file and ValueError naming the missing/unexpected
    keys or shape mismatches (a file for another backbone).
    """
    if isinstance(path, dict):
        state, where = path, where or "state dict"
    else:
        path = Path(path)
        where = where or f"file {str(path)!r}"
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone_weights file {str(path)!r} does not exist; pass a local torchvision state-dict file, "
                "a weights name (imagenet, IMAGENET1K_V2, ResNet101_Weights.IMAGENET1K_V2) or backbone_weights=None"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = _unwrap_state(state, where)

    def is_head(key: str) -> bool:
        return key.startswith(("fc.", "classifier."))

    own = model.state_dict()
    state = {k: v for k, v in state.items() if not is_head(k) or k in own}
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"backbone_weights {where} does not match the {type(model).__name__} backbone: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    bad_shapes = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad_shapes:
        k = bad_shapes[0]
        raise ValueError(
            f"backbone_weights {where}: shape of {k!r} is {tuple(state[k].shape)}, "
            f"the backbone needs {tuple(own[k].shape)} ({len(bad_shapes)} mismatched tensors)"
        )
    model.load_state_dict(state, strict=False)


def _apply_weights(net: nn.Module, backbone: str, weights: str | None) -> None:
    """Load ``weights`` (None, a weights name such as ``imagenet``, or a local file) into ``net``."""
    if weights is None:
        return
    if is_weights_name(weights):
        state, label = pretrained_state_dict(backbone, weights)
        load_backbone_weights(net, state, where=label)
    else:
        load_backbone_weights(net, weights)


def _resnet(builder: Callable[..., nn.Module], output_stride: int, weights: str | None) -> Encoder:
    dilation = [False, False, True] if output_stride == 16 else [False, True, True]
    net = builder(weights=None, replace_stride_with_dilation=dilation)
    _apply_weights(net, builder.__name__, weights)
    body = IntermediateLayerGetter(net, return_layers={"layer1": "low", "layer4": "high"})
    return Encoder(body, low_channels=256, high_channels=2048)


def _mobilenet(output_stride: int, weights: str | None) -> Encoder:
    """MobileNetV3-Large dilated as torchvision's deeplabv3_mobilenet_v3_large (C4 at OS16; C3 too at OS8)."""
    if output_stride == 16:
        net = mobilenet_v3_large(weights=None, dilated=True)
    else:
        setting, last_channel = _mobilenet_v3_conf("mobilenet_v3_large", dilated=True)
        # Blocks from C3 (the 3rd stride-2 block) on keep stride 1 by dilation (x2), C4 by x4.
        strided = [i for i, c in enumerate(setting) if c.stride > 1]
        for i, cnf in enumerate(setting):
            if i >= strided[3]:
                cnf.dilation = 4
            elif i >= strided[2]:
                cnf.dilation = 2
        net = MobileNetV3(setting, last_channel)
    _apply_weights(net, "mobilenet_v3_large", weights)
    features = net.features
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    low_pos = stage_indices[-4] - 1  # last block before C2: output stride 4 (24 channels)
    high_pos = stage_indices[-1]  # C5 (960 channels)
    body = IntermediateLayerGetter(features, return_layers={str(low_pos): "low", str(high_pos): "high"})
    low_ch = features[low_pos].out_channels
    high_ch = features[high_pos].out_channels
    return Encoder(body, low_channels=low_ch, high_channels=high_ch)


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """A ~140k-parameter conv-bn-relu encoder for CPU experiments and tests.

    Strides 2, 4 (low, 24 ch), 8, then 16 (or 8 by dilation), plus a dilated stage (high, 96 ch).
    """

    low_channels = 24
    high_channels = 96

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        d = 1 if output_stride == 16 else 2  # the stride-16 stage becomes dilated at OS8
        self.stem = _cbr(3, 16, stride=2)
        self.stage1 = nn.Sequential(_cbr(16, 24, stride=2), _cbr(24, 24))
        self.stage2 = nn.Sequential(_cbr(24, 32, stride=2), _cbr(32, 32))
        self.stage3 = _cbr(32, 64, stride=2 if d == 1 else 1, dilation=d)
        self.stage4 = nn.Sequential(_cbr(64, 64, dilation=2 * d), _cbr(64, 96, dilation=2 * d))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.stage1(self.stem(x))
        high = self.stage4(self.stage3(self.stage2(low)))
        return {"low": low, "high": high}


def _tiny(output_stride: int, weights: str | None) -> Encoder:
    net = TinyBackbone(output_stride)
    _apply_weights(net, "tiny", weights)
    return Encoder(net, TinyBackbone.low_channels, TinyBackbone.high_channels)


_BUILDERS: dict[str, Callable[[int, str | None], Encoder]] = {
    "resnet101": lambda os_, w: _resnet(resnet101, os_, w),
    "resnet50": lambda os_, w: _resnet(resnet50, os_, w),
    "mobilenet_v3_large": _mobilenet,
    "tiny": _tiny,
}


def list_backbones() -> list[str]:
    """Names accepted by ``build_encoder`` / ``deeplabv3plus``."""
    return list(_BUILDERS)


def build_encoder(name: str, output_stride: int = 16, weights: str | Path | None = None) -> Encoder:
    """Build a dilated encoder by name; ``weights``: None, a local state-dict file or a weights
    name (``imagenet``, ``IMAGENET1K_V2``, ``ResNet101_Weights.IMAGENET1K_V2``)."""
    if name not in _BUILDERS:
        hint = " (ResNet-18/34 use BasicBlocks, which cannot be dilated)" if name in ("resnet18", "resnet34") else ""
        raise ValueError(f"unknown backbone {name!r}{hint}; choose one of {list_backbones()}")
    _check_output_stride(output_stride)
    return _BUILDERS[name](output_stride, None if weights is None else str(weights))
