"""A toy loss and a toy data set registered from OUTSIDE the package (tests/test_registry.py).

What a user's own module looks like: a loss class with one new, searchable setting and a
data set, each one registry entry. Importing the module registers them (a study file names
it under ``plugins:``); :func:`register` does it again (the tests restore the registry
after each test). The study ships the entries to Ray's processes itself, by value: this
module need not be importable there.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from tce_ray import register_dataset, register_loss
from tce_ray.data.base import SegmentationDataset, make_transform
from tce_ray.core.losses import MCCE
from tce_ray.core.registry import Setting

TOY_CLASSES = ("ground", "box", "bar")
SCALE = Setting("toy_scale", float, 1.0, "Multiplies the cross-entropy.", gt=0.0, le=10.0, finite=True,
                search="range", label="×")


class ScaledCE(nn.Module):
    """MCCE times a constant: the loss value tells which ``toy_scale`` reached it."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)
        self.ce = MCCE()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.scale * self.ce(logits, target)


class ToyBoxes(SegmentationDataset):
    """Tiny generated scenes: a box and a bar on the ground, at random places (3 classes)."""

    def __init__(self, split: str = "train", *, num_images: int = 8, size: int = 32, crop_size=None,
                 scale_range=(0.5, 2.0), augment=None) -> None:
        super().__init__("toy_boxes", split, TOY_CLASSES, make_transform(split, augment, crop_size, scale_range))
        self.num_images, self.size = int(num_images), int(size)

    def __len__(self) -> int:
        return self.num_images

    def load_mask(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self._check_index(i), len(self.split)])
        s = self.size
        mask = np.zeros((s, s), np.uint8)
        y, x = rng.integers(0, s // 2, 2)
        mask[y : y + s // 3, x : x + s // 3] = 1
        mask[:, rng.integers(0, s - 2) :][:, :2] = 2
        return mask

    def load_image(self, i: int) -> np.ndarray:
        palette = np.array([[90, 120, 60], [200, 40, 40], [40, 40, 200]], np.uint8)
        return palette[self.load_mask(i)]

    def fingerprint(self) -> str:
        return hashlib.sha256(f"toy_boxes/{self.split}/{self.num_images}/{self.size}".encode()).hexdigest()


def build_toy_boxes(split: str, root=None, **options) -> ToyBoxes:
    if root is not None:
        raise ValueError("toy_boxes is generated; it takes no root")
    return ToyBoxes(split, **options)


def register() -> None:
    """The two entries (idempotent: the same definitions register again silently)."""
    register_loss("toy_scaled_ce", settings=[SCALE], params={"toy_scale": "scale"})(ScaledCE)
    register_dataset("toy_boxes", build_toy_boxes, takes_root=False, options_of=ToyBoxes, doc="tiny generated boxes")


register()
