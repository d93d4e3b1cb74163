"""Image/label-map folders matched by file stem: CamVid (SegNet's 11 classes) and a generic folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tce_ray.data.files import (
    FileSegmentationDataset,
    FileSplit,
    build_lut,
    file_builder,
    file_dataset,
    pair_files,
    require_dirs,
    resolve_root,
    scan,
)

CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_UNLABELLED = 11
CAMVID_ENV = "TCE_CAMVID_ROOT"
# ../shared/data/camvid next to the repository checkout (used when present and no root/env is given)
_CAMVID_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"


def _dir(root: Path, d: str | os.PathLike, split: str) -> Path:
    path = Path(str(d).format(split=split))
    return path if path.is_absolute() else root / path


def build_folder(
    split: str,
    root: str | os.PathLike | None = None,
    *,
    class_names: Sequence[str] | None = None,
    image_dir: str = "images/{split}",
    label_dir: str = "labels/{split}",
    remap: Mapping[int, int] | Sequence[int] | None = None,
    name: str = "folder",
    crop_size: int | tuple[int, int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    augment: bool | None = None,
    downscale: int = 1,
) -> FileSegmentationDataset:
    """Images in ``root/image_dir`` and label maps in ``root/label_dir`` paired by file stem.

    ``image_dir``/``label_dir`` may contain ``{split}``; label values 0..K-1 are classes, 255
    is ignore; ``remap`` (a dict or a 256-entry list) maps other raw values.
    """
    files = _folder_files(split, root, class_names, image_dir, label_dir, remap, name)
    return file_dataset(files, split, crop_size=crop_size, scale_range=scale_range, augment=augment, downscale=downscale)


def _folder_files(split: str, root, class_names, image_dir: str, label_dir: str, remap, name: str) -> FileSplit:
    """The pairs of :func:`build_folder` (its arguments, checked)."""
    if root is None:
        raise FileNotFoundError(f"{name}: pass root=... (the folder holding {image_dir!r} and {label_dir!r})")
    if not class_names:
        raise ValueError(f"{name}: pass class_names=[...] (one name per label value 0..K-1)")
    layout = f"{image_dir}/ and {label_dir}/"
    root_path = resolve_root(root, name, "TCE_FOLDER_ROOT", layout)
    img_dir, lbl_dir = _dir(root_path, image_dir, split), _dir(root_path, label_dir, split)
    require_dirs(f"{name}/{split}", {"image": img_dir, "label": lbl_dir}, layout)
    pairs = pair_files(scan(img_dir), scan(lbl_dir), img_dir, lbl_dir)
    return FileSplit(name, root_path, pairs, class_names, build_lut(len(class_names), remap))


def camvid_root(root: str | os.PathLike | None = None) -> Path | None:
    """``root``, else ``$TCE_CAMVID_ROOT``, else ../shared/data/camvid when it exists (None otherwise)."""
    if root is not None:
        return Path(root)
    if os.environ.get(CAMVID_ENV):
        return Path(os.environ[CAMVID_ENV])
    return _CAMVID_SHARED if _CAMVID_SHARED.is_dir() else None


def find_camvid(split: str, root: str | os.PathLike | None = None) -> FileSplit:
    """CamVid, SegNet layout: ``<split>/`` images and ``<split>annot/`` label maps; 11 -> ignore."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"camvid split must be 'train', 'val' or 'test', got {split!r}")
    root_path = resolve_root(
        camvid_root(root), "camvid", CAMVID_ENV, "train/, trainannot/, val/, valannot/ (SegNet layout)"
    )
    return _folder_files(split, root_path, CAMVID_CLASSES, split, f"{split}annot", {CAMVID_UNLABELLED: 255}, "camvid")


build_camvid = file_builder(find_camvid, "build_camvid")
