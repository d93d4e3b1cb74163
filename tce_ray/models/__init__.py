"""Segmentation models: DeepLabv3+ on dilated torchvision backbones (ImageNet weights by name or file)."""

from tce_ray.models.backbones import TinyBackbone, build_encoder, list_backbones, load_backbone_weights
from tce_ray.models.deeplabv3plus import ASPP, ASPP_RATES, DeepLabV3Plus, deeplabv3plus

__all__ = [
    "ASPP",
    "ASPP_RATES",
    "DeepLabV3Plus",
    "TinyBackbone",
    "build_encoder",
    "deeplabv3plus",
    "list_backbones",
    "load_backbone_weights",
]
