"""The dataset interface every data set implements (see CONTRACT.md, tce_ray.data)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tce_ray.data.transforms import IGNORE_INDEX, SegmentationTransform

SPLITS_DEFAULT_AUGMENT = ("train",)


def make_transform(
    split: str,
    augment: bool | None = None,
    crop_size: int | tuple[int, int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> SegmentationTransform:
    """The joint transform for ``split``: augmentation defaults to on for "train" only."""
    if augment is None:
        augment = split in SPLITS_DEFAULT_AUGMENT
    return SegmentationTransform(augment=augment, crop_size=crop_size, scale_range=scale_range)


class SegmentationDataset(Dataset, ABC):
    """Yields ``(image float32 [3,H,W] normalised, mask int64 [H,W])`` with 255 = ignore.

    Subclasses implement ``__len__``, ``load_image`` (uint8 [H,W,3]), ``load_mask``
    (remapped uint8 [H,W], no transforms) and ``fingerprint``.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, name: str, split: str, class_names: tuple[str, ...], transform: SegmentationTransform) -> None:
        self.name = name
        self.split = split
        self.class_names = tuple(class_names)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Number of classes (labels 0..K-1; 255 is ignore)."""
        return len(self.class_names)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 RGB [H,W,3], untransformed."""

    @abstractmethod
    def load_mask(self, i: int) -> np.ndarray:
        """Label map ``i`` after remapping (uint8 [H,W], 255 = ignore), untransformed."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A stable hash of what defines the data (keys the class-index cache)."""

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name}/{self.split} with {n} images")
        return i % n

    def _parse_item(self, item: Any) -> tuple[int, int | None]:
        """An item is an image index, or an ``(index, focus_class)`` pair from a class-drawn
        batch (``tce_ray.data.sampling.TiltedBatchSampler(class_crop=True)``)."""
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise TypeError(f"an item is an index or an (index, focus_class) pair, got {item!r}")
            i, focus = item
            ok = isinstance(focus, (int, np.integer)) and not isinstance(focus, bool)
            if not ok or not 0 <= focus < self.num_classes:
                raise ValueError(
                    f"focus_class {focus!r} of item {item!r} is not a class id in [0, {self.num_classes})"
                )
            return self._check_index(int(i)), int(focus)
        return self._check_index(int(item)), None

    def _transform(self, image: np.ndarray, mask: np.ndarray, focus: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if focus is None:  # exactly the call (and random stream) of a plain index
            return self.transform(image, mask)
        return self.transform(image, mask, focus_class=focus)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed pair of image ``item``, or of ``item = (index, focus_class)`` with the
        training crop placed on pixels of ``focus_class`` (see ``tce_ray.data.transforms``)."""
        i, focus = self._parse_item(item)
        return self._transform(self.load_image(i), self.load_mask(i), focus)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, K={self.num_classes})"

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for logs and reports)."""
        return {"name": self.name, "split": self.split, "num_images": len(self), "class_names": list(self.class_names)}
