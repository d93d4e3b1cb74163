"""Data sets for segmentation: ``build_dataset(name, split, root=None, **options)``.

Every data set yields ``(image float32 [3,H,W] ImageNet-normalised, mask int64 [H,W])``
with 255 = ignore and exposes ``class_names``, ``num_classes``, ``load_mask(i)``,
``fingerprint()``, ``name`` and ``split`` (see ``SegmentationDataset``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from .ade20k import ADE20K_CLASSES, build_ade20k
from .base import SegmentationDataset
from .cityscapes import CITYSCAPES_CLASSES, build_cityscapes
from .files import IMAGE_EXTENSIONS, FileSegmentationDataset, build_lut
from .folder import CAMVID_CLASSES, build_camvid, build_folder
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_FREQUENCIES, SyntheticStreets
from .transforms import IMAGENET_MEAN, IMAGENET_STD, SegmentationTransform


def _build_synthetic(split: str, root: str | os.PathLike | None = None, **options: Any) -> SyntheticStreets:
    if root is not None:
        raise ValueError(f"the synthetic data set is generated, it takes no root (got root={root!r})")
    return SyntheticStreets(split, **options)


_BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "synthetic": _build_synthetic,
    "cityscapes": build_cityscapes,
    "ade20k": build_ade20k,
    "camvid": build_camvid,
    "folder": build_folder,
}
_OPTIONS_OF = {"synthetic": SyntheticStreets.__init__}


def list_datasets() -> list[str]:
    """Names accepted by ``build_dataset``."""
    return list(_BUILDERS)


def _accepted_options(name: str) -> list[str]:
    fn = _OPTIONS_OF.get(name, _BUILDERS[name])
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_dataset(name: str, split: str, root: str | os.PathLike | None = None, **options: Any) -> SegmentationDataset:
    """Build data set ``name`` for ``split``; unknown names -> ValueError, unknown options -> TypeError.

    Common options: ``crop_size``, ``scale_range=(0.5, 2.0)``, ``augment`` (default: split == "train").
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list_datasets()}")
    accepted = _accepted_options(name)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for dataset {name!r}; accepted: {accepted}")
    return _BUILDERS[name](split, root, **options)


__all__ = [
    "ADE20K_CLASSES",
    "CAMVID_CLASSES",
    "CITYSCAPES_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_FREQUENCIES",
    "FileSegmentationDataset",
    "SegmentationDataset",
    "SegmentationTransform",
    "SyntheticStreets",
    "build_dataset",
    "build_lut",
    "list_datasets",
]
