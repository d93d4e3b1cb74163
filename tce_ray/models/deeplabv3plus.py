"""DeepLabv3+ (Chen et al., ECCV 2018): dilated encoder, ASPP, stride-4 decoder.

ASPP: a 1x1 branch, three 3x3 atrous branches (rates (6, 12, 18) at output stride 16,
(12, 24, 36) at 8) and image pooling, concatenated and projected to ``width`` channels.
Decoder: stride-4 features projected to ``low_proj`` (48) channels by 1x1 conv-bn-relu,
concatenated with the ASPP output upsampled to stride 4, two 3x3 conv-bn-relu of
``width`` (256) channels, a 1x1 classifier, and bilinear upsampling to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tce_ray.models.backbones import Encoder, build_encoder

ASPP_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    """Image-level pooling branch. No BatchNorm (a 1x1 map would break BN at batch size 1)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return y.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with the given atrous ``rates``."""

    def __init__(self, cin: int, width: int, rates: Sequence[int], dropout: float = 0.1) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        branches: list[nn.Module] = [_conv_bn_relu(cin, width, 1)]
        branches += [_conv_bn_relu(cin, width, 3, dilation=r) for r in self.rates]
        branches.append(ASPPPooling(cin, width))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(width * len(branches), width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3Plus(nn.Module):
    """Encoder -> ASPP -> decoder; ``forward(x [B,3,H,W]) -> logits [B,K,H,W]`` for any H, W."""

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        rates: Sequence[int],
        width: int = 256,
        low_proj: int = 48,
    ) -> None:
        super().__init__()
        self.backbone = encoder.module
        self.aspp = ASPP(encoder.high_channels, width, rates)
        self.low_proj = _conv_bn_relu(encoder.low_channels, low_proj, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(width + low_proj, width, 3),
            _conv_bn_relu(width, width, 3),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        low = self.low_proj(feats["low"])
        high = self.aspp(feats["high"])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# Decoder/ASPP width and low-level projection per backbone (the paper's 256/48; smaller for tiny).
_HEAD_SIZES: dict[str, tuple[int, int]] = {"tiny": (48, 24)}


def deeplabv3plus(
    num_classes: int,
    backbone: str = "resnet101",
    output_stride: int = 16,
    backbone_weights: str | Path | None = None,
) -> DeepLabV3Plus:
    """DeepLabv3+ with a dilated torchvision (or "tiny") backbone.

    ``backbone_weights``: a local torchvision state-dict file for the backbone (its
    classifier keys are ignored; a missing file raises FileNotFoundError), or a torchvision
    weights name, ``imagenet`` / ``IMAGENET1K_V2`` / ``ResNet101_Weights.IMAGENET1K_V2``, read
    from the torch hub cache (downloaded into it when online; see :mod:`tce_ray.models.pretrained`).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    encoder = build_encoder(backbone, output_stride, backbone_weights)
    width, low_proj = _HEAD_SIZES.get(backbone, (256, 48))
    return DeepLabV3Plus(encoder, num_classes, ASPP_RATES[output_stride], width=width, low_proj=low_proj)
