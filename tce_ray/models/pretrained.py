"""ImageNet backbone weights by name, through torchvision's weights API and the torch hub cache.

``backbone_weights`` is a local state-dict file or a weights name: ``imagenet`` (the
backbone's ``DEFAULT`` torchvision weights, IMAGENET1K_V2 for the ResNets and
MobileNetV3), a member of the backbone's weights enum (``IMAGENET1K_V1``, ``DEFAULT``) or
its full name (``ResNet101_Weights.IMAGENET1K_V2``, :func:`torchvision.models.get_weight`).
A name is loaded with ``weights.get_state_dict`` (``torch.hub.load_state_dict_from_url``):
from ``$TORCH_HOME/hub/checkpoints/<file of the URL>`` when it is there, else downloaded
into it (SHA-256 prefix checked). Offline, :class:`WeightsUnavailable` names the file to place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["IMAGENET_BACKBONES", "WeightsUnavailable", "is_weights_name", "resolve_weights", "hub_cache_file",
           "pretrained_state_dict"]

IMAGENET_BACKBONES: dict[str, str] = {"resnet50": "resnet50", "resnet101": "resnet101",
                                      "mobilenet_v3_large": "mobilenet_v3_large"}
"""Backbone name -> the torchvision model whose weights enum it uses."""

_NAME = re.compile(r"(?:[A-Za-z][A-Za-z0-9_]*_Weights\.)?[A-Z][A-Z0-9_]*")


class WeightsUnavailable(FileNotFoundError):
    """Named weights neither in the torch hub cache nor downloadable; ``cache_file`` is where to put them."""

    def __init__(self, message: str, cache_file: str) -> None:
        super().__init__(message)
        self.cache_file = cache_file


def is_weights_name(value: str | os.PathLike[str]) -> bool:
    """Whether ``backbone_weights`` names torchvision weights (``imagenet``, ``IMAGENET1K_V2``,
    ``ResNet50_Weights.DEFAULT``) rather than a file (anything else)."""
    text = os.fspath(value)
    return text.lower() == "imagenet" or bool(_NAME.fullmatch(text))


def resolve_weights(backbone: str, name: str) -> Any:
    """The torchvision ``WeightsEnum`` member ``name`` gives for ``backbone``; ValueError
    naming the choices when the backbone has no such weights."""
    from torchvision.models import get_model_weights, get_weight

    if backbone not in IMAGENET_BACKBONES:
        raise ValueError(f"backbone_weights {name!r}: the {backbone!r} backbone has no torchvision weights; "
                         f"ImageNet weights exist for {sorted(IMAGENET_BACKBONES)}, or give a local state-dict file")
    enum = get_model_weights(IMAGENET_BACKBONES[backbone])
    choices = ["imagenet", "DEFAULT", *(m.name for m in enum)]
    if name.lower() == "imagenet":
        return enum.DEFAULT
    if "." in name:
        try:
            weights = get_weight(name)
        except (ValueError, KeyError):
            weights = None
        if weights is None or type(weights) is not enum:
            raise ValueError(f"backbone_weights {name!r} are not weights of {backbone}: use {enum.__name__}.<member> "
                             f"or one of {choices}")
        return weights
    if name not in enum.__members__:
        raise ValueError(f"backbone_weights {name!r}: {enum.__name__} has no such member; choose one of {choices} "
                         "or give a local state-dict file")
    return enum[name]


def hub_cache_file(weights: Any) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``weights``:
    ``<torch.hub.get_dir()>/checkpoints/<file name of weights.url>``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def pretrained_state_dict(backbone: str, name: str) -> tuple[dict[str, Any], str]:
    """The state dict of the weights ``name`` for ``backbone`` (from the hub cache, else
    downloaded into it) and a description ("ResNet101_Weights.IMAGENET1K_V2"). Raises
    ValueError for an unknown name, :class:`WeightsUnavailable` (one line: the file to place)
    when it is not cached and cannot be downloaded."""
    weights = resolve_weights(backbone, name)
    label = f"{type(weights).__name__}.{weights.name}"
    cache = hub_cache_file(weights)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError / HTTPError (offline), RuntimeError (hash), OSError (disk)
        if cache.is_file():
            raise ValueError(f"backbone_weights {name!r}: the cached file {cache} cannot be read "
                             f"({type(exc).__name__}: {exc}); delete it to download it again") from None
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:120]
        raise WeightsUnavailable(
            f"{label} not in the torch hub cache and its download failed ({reason}); offline, place the file "
            f"at {cache} (from {weights.url}), or set TORCH_HOME to a folder whose hub/checkpoints/ holds it",
            str(cache)) from None
    return state, label
