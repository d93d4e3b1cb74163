"""ADE20K scene parsing (ADEChallengeData2016): 150 classes, label 0 ("other") -> ignore."""

from __future__ import annotations

import os

import numpy as np

from tce_ray.data.files import INVALID, FileSplit, file_builder, pair_files, require_dirs, resolve_root, scan

ADE20K_ENV = "ADE20K_ROOT"
# objectInfo150 names (first name of each entry), label value i+1 -> class i
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
_SPLIT_DIRS = {"train": "training", "val": "validation"}
_LAYOUT = "ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"


def ade20k_lut() -> np.ndarray:
    """0 -> 255 (ignore), 1..150 -> 0..149, 255 stays ignore, anything else invalid."""
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[0] = 255
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    lut[255] = 255
    return lut


def find_ade20k(split: str, root: str | os.PathLike | None = None) -> FileSplit:
    """ADE20K ``split`` ("train"/"val") under ``root`` (the ADEChallengeData2016 folder or its parent)."""
    if split not in _SPLIT_DIRS:
        raise ValueError(f"ade20k split must be one of {list(_SPLIT_DIRS)}, got {split!r}")
    root_path = resolve_root(root, "ade20k", ADE20K_ENV, _LAYOUT)
    if (root_path / "ADEChallengeData2016").is_dir():
        root_path = root_path / "ADEChallengeData2016"
    img_dir = root_path / "images" / _SPLIT_DIRS[split]
    lbl_dir = root_path / "annotations" / _SPLIT_DIRS[split]
    require_dirs("ade20k", {"image": img_dir, "label": lbl_dir}, _LAYOUT)
    pairs = pair_files(scan(img_dir), scan(lbl_dir, extensions=(".png",)), img_dir, lbl_dir)
    return FileSplit("ade20k", root_path, pairs, ADE20K_CLASSES, ade20k_lut())


build_ade20k = file_builder(find_ade20k, "build_ade20k")
