"""Joint image/mask transforms (torchvision.transforms.v2 functional ops on tv_tensors).

Training: random scale (bilinear for the image, NEAREST for the mask), pad to the crop size
(image 0, mask 255 = ignore), random crop, horizontal flip, colour jitter (image only).
Evaluation: only conversion to float and ImageNet normalisation.
Random draws use torch's global generator, which the DataLoader seeds differently per
worker process (NumPy's would repeat across workers).

Class-centred crops: called with ``focus_class=c`` (the class a batch was drawn for, see
``tce_ray.data.sampling``), the training crop is placed so that it contains pixels of ``c``:
after the random scale (and padding), a pixel of ``c`` is picked uniformly in the scaled
mask, then the crop window uniformly among the positions that contain it. Scale, flip and
jitter are unchanged. If the scaling removed every pixel of ``c`` (nearest-neighbour
down-scaling of a tiny region), the ordinary random crop is used and
:attr:`SegmentationTransform.crop_fallbacks` counts it (per process). Without
``focus_class`` the transform draws exactly the random numbers it always drew.
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
        self.crop_fallbacks = 0
        """Class-centred crops that fell back to a random crop (the class vanished in the
        scaling); counted in this process only (each DataLoader process has its copy)."""

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, focus_class: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform one pair; ``focus_class`` (training only) centres the crop on that class.

        Evaluation transforms (``augment=False``) do not crop and ignore ``focus_class``.
        """
        if focus_class is not None and (
            isinstance(focus_class, bool) or not isinstance(focus_class, (int, np.integer)) or focus_class < 0
        ):
            raise ValueError(f"focus_class must be a class id (an int >= 0) or None, got {focus_class!r}")
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        if self.augment:
            img, msk = self._augment(img, msk, None if focus_class is None else int(focus_class))
        out = TF.to_dtype(img, torch.float32, scale=True)
        out = TF.normalize(out, mean=self.mean, std=self.std)
        return out.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor).long()

    def _augment(
        self, img: tv_tensors.Image, msk: tv_tensors.Mask, focus_class: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        window = None if focus_class is None else self._class_window(msk, focus_class, ch, cw)
        if window is None:
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
        else:
            top, left = window
        img = TF.crop(img, top, left, ch, cw)
        msk = TF.crop(msk, top, left, ch, cw)
        if bool(torch.rand(()) < 0.5):
            img = TF.horizontal_flip(img)
            msk = TF.horizontal_flip(msk)
        if self.jitter is not None:
            img = self.jitter(img)
        return img, msk

    def _class_window(self, msk: torch.Tensor, cls: int, ch: int, cw: int) -> tuple[int, int] | None:
        """(top, left) of a ``ch x cw`` window containing a random pixel of ``cls``, uniform
        among the windows that contain it; None (counted) when ``msk`` holds no ``cls``."""
        ys, xs = torch.nonzero(msk.as_subclass(torch.Tensor) == cls, as_tuple=True)
        if ys.numel() == 0:
            self.crop_fallbacks += 1
            return None
        h, w = msk.shape[-2:]
        j = int(torch.randint(0, ys.numel(), ()))
        y, x = int(ys[j]), int(xs[j])
        top_lo, top_hi = max(0, y - ch + 1), min(y, h - ch)  # window rows [top, top + ch) hold y
        left_lo, left_hi = max(0, x - cw + 1), min(x, w - cw)
        top = int(torch.randint(top_lo, top_hi + 1, ()))
        left = int(torch.randint(left_lo, left_hi + 1, ()))
        return top, left
