"""Joint image/mask transforms (torchvision.transforms.v2 functional ops on tv_tensors).

Training: random scale (bilinear for the image, NEAREST for the mask), pad to the crop size
(image 0, mask 255 = ignore), random crop, horizontal flip, colour jitter (image only).
Evaluation: only conversion to float and ImageNet normalisation.
Random draws use torch's global generator, which the DataLoader seeds differently per
worker process (NumPy's would repeat across workers).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def _pair(size: int | tuple[int, int] | list[int] | None, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size)):
        raise TypeError(f"{what} must be an int or a pair (H, W) of ints, got {size!r}")
    if min(size) < 1:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return int(size[0]), int(size[1])


class SegmentationTransform:
    """``(image uint8 [H,W,3] ndarray, mask uint8 [H,W] ndarray) -> (float32 [3,h,w], int64 [h,w])``.

    ``crop_size=None`` with ``augment=True`` crops back to each image's own size after scaling,
    so whole-image batches keep one shape.
    """

    def __init__(
        self,
        augment: bool,
        crop_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        jitter: float = 0.3,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        lo, hi = (float(s) for s in scale_range)
        if not (0 < lo <= hi):
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.augment = bool(augment)
        self.crop_size = _pair(crop_size, "crop_size")
        self.scale_range = (lo, hi)
        self.jitter = v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter) if jitter > 0 else None
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        if self.augment:
            img, msk = self._augment(img, msk)
        out = TF.to_dtype(img, torch.float32, scale=True)
        out = TF.normalize(out, mean=self.mean, std=self.std)
        return out.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor).long()

    def _augment(self, img: tv_tensors.Image, msk: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = img.shape[-2:]
        ch, cw = self.crop_size or (h, w)
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))
        if s != 1.0:
            size = [max(1, round(h * s)), max(1, round(w * s))]
            img = TF.resize(img, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
            msk = TF.resize(msk, size, interpolation=v2.InterpolationMode.NEAREST)
        h, w = img.shape[-2:]
        if h < ch or w < cw:
            pad = [0, 0, max(0, cw - w), max(0, ch - h)]  # left, top, right, bottom
            img = TF.pad(img, pad, fill=0)
            msk = TF.pad(msk, pad, fill=IGNORE_INDEX)
            h, w = img.shape[-2:]
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        img = TF.crop(img, top, left, ch, cw)
        msk = TF.crop(msk, top, left, ch, cw)
        if bool(torch.rand(()) < 0.5):
            img = TF.horizontal_flip(img)
            msk = TF.horizontal_flip(msk)
        if self.jitter is not None:
            img = self.jitter(img)
        return img, msk
