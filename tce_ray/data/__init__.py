"""Data sets for segmentation: ``build_dataset(name, split, root=None, **options)``.

Every data set yields ``(image float32 [3,H,W] ImageNet-normalised, mask int64 [H,W])``
with 255 = ignore and exposes ``class_names``, ``num_classes``, ``load_mask(i)``,
``fingerprint()``, ``name`` and ``split`` (see ``SegmentationDataset``).

The data sets a run can name are the entries of ``tce_ray.core.registry`` (registered here; add
your own with ``tce_ray.register_dataset``). Importing this package is light: the builders
and the names re-exported below (torchvision, PIL) are imported on first use, so that a
study file is validated without them.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import TYPE_CHECKING, Any

from tce_ray.core.registry import get_dataset, register_dataset
from tce_ray.core.registry import list_datasets as _registered

if TYPE_CHECKING:  # pragma: no cover
    from tce_ray.data.base import SegmentationDataset


def _build_synthetic(split: str, root: str | os.PathLike | None = None, **options: Any) -> SegmentationDataset:
    from tce_ray.data.synthetic import SyntheticStreets

    if root is not None:
        raise ValueError(f"the synthetic data set is generated, it takes no root (got root={root!r})")
    return SyntheticStreets(split, **options)


register_dataset(
    "synthetic", _build_synthetic, takes_root=False, options_of="tce_ray.data.synthetic:SyntheticStreets",
    doc="street-like scenes the package generates (12 classes)",
)
register_dataset(
    "cityscapes", "tce_ray.data.cityscapes:build_cityscapes", env_var="CITYSCAPES_DATASET",
    root_holds="leftImg8bit/ and gtFine/ (from cityscapes-dataset.com)", doc="19 trainIds",
)
register_dataset(
    "ade20k", "tce_ray.data.ade20k:build_ade20k", env_var="ADE20K_ROOT",
    root_holds="ADEChallengeData2016/ (images/ and annotations/)", doc="150 classes",
)
register_dataset(
    "camvid", "tce_ray.data.folder:build_camvid", env_var="TCE_CAMVID_ROOT",
    root_holds="train/, trainannot/, val/, valannot/ (the 11-class SegNet version)", doc="SegNet's 11 classes",
)
register_dataset(
    "folder", "tce_ray.data.folder:build_folder",
    root_holds="images/<split>/ and labels/<split>/ (or the folders data.options.image_dir / label_dir name; "
               "an image and its label map share a file stem)", doc="image/label folders paired by file stem",
)


def list_datasets() -> list[str]:
    """Names accepted by ``build_dataset``."""
    return _registered()


def _accepted_options(name: str) -> list[str]:
    params = inspect.signature(get_dataset(name).resolve_options_of()).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_dataset(name: str, split: str, root: str | os.PathLike | None = None, **options: Any) -> SegmentationDataset:
    """Build data set ``name`` for ``split``; unknown names -> ValueError, unknown options -> TypeError.

    Common options: ``crop_size``, ``scale_range=(0.5, 2.0)``, ``augment`` (default: split == "train").
    """
    if name not in list_datasets():
        raise ValueError(f"unknown dataset {name!r}; choose one of {list_datasets()}")
    accepted = _accepted_options(name)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for dataset {name!r}; accepted: {accepted}")
    return get_dataset(name).resolve_builder()(split, root, **options)


_LAZY: dict[str, str] = {
    "ADE20K_CLASSES": "ade20k",
    "CAMVID_CLASSES": "folder",
    "CITYSCAPES_CLASSES": "cityscapes",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "IMAGE_EXTENSIONS": "files",
    "SYNTHETIC_CLASSES": "synthetic",
    "SYNTHETIC_FREQUENCIES": "synthetic",
    "FileSegmentationDataset": "files",
    "SegmentationDataset": "base",
    "SegmentationTransform": "transforms",
    "SyntheticStreets": "synthetic",
    "build_lut": "files",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tce_ray.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [*sorted(_LAZY), "build_dataset", "build_splits", "list_datasets"]


def build_splits(data: Any) -> tuple[Any, Any]:
    """The training set (crop, scale, augmentation) and the validation set (no augmentation)
    of a run's ``data`` section (a ``tce_ray.train.runspec.DataSpec``), as every worker and the
    preflight build them."""
    train = build_dataset(data.name, data.train_split, root=data.root, crop_size=data.crop_size,
                          scale_range=tuple(data.scale_range), augment=True, **data.options)
    val = build_dataset(data.name, data.val_split, root=data.root, augment=False, **data.options)
    return train, val
