"""Cityscapes (fine, semantic): torchvision's file list, labelIds mapped to the 19 trainIds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torchvision.datasets import Cityscapes

from tce_ray.data.files import INVALID, FileSplit, file_builder, pair_files, require_dirs, resolve_root, scan

CITYSCAPES_ENV = "CITYSCAPES_DATASET"
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    c.name for c in sorted((c for c in Cityscapes.classes if 0 <= c.train_id < 255), key=lambda c: c.train_id)
)
_LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"


def cityscapes_lut() -> np.ndarray:
    """256-entry labelId -> trainId table (0..18; 255 for void/unused ids; -1 for ids that do not exist)."""
    lut = np.full(256, INVALID, dtype=np.int16)
    for c in Cityscapes.classes:
        if c.id >= 0:
            lut[c.id] = c.train_id if 0 <= c.train_id < 255 else 255
    lut[255] = 255
    return lut


def find_cityscapes(split: str, root: str | os.PathLike | None = None) -> FileSplit:
    """Cityscapes gtFine ``split`` ("train", "val", "test") under ``root`` or ``$CITYSCAPES_DATASET``."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"cityscapes split must be 'train', 'val' or 'test', got {split!r}")
    root_path = resolve_root(root, "cityscapes", CITYSCAPES_ENV, _LAYOUT)
    img_dir, lbl_dir = root_path / "leftImg8bit" / split, root_path / "gtFine" / split
    # checked first: torchvision would try to unpack zips instead
    require_dirs("cityscapes", {"image": img_dir, "label": lbl_dir}, _LAYOUT)
    tv = Cityscapes(str(root_path), split=split, mode="fine", target_type="semantic")
    images = {str(Path(p).relative_to(img_dir)).removesuffix("_leftImg8bit.png"): Path(p) for p in tv.images}
    # torchvision lists every file and never checks the targets: match both ways ourselves.
    for p in images.values():
        if not p.name.endswith("_leftImg8bit.png"):
            raise ValueError(f"cityscapes: unexpected file {str(p)!r} (images must be named *_leftImg8bit.png)")
    labels = scan(lbl_dir, "_gtFine_labelIds", extensions=(".png",))
    pairs = pair_files(images, labels, img_dir, lbl_dir)
    return FileSplit("cityscapes", root_path, pairs, CITYSCAPES_CLASSES, cityscapes_lut())


build_cityscapes = file_builder(find_cityscapes, "build_cityscapes")
