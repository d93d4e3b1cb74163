"""File-backed data sets: pairing, construction-time validation, exact label reading, fingerprints.

Construction checks every pair from image headers only (no pixel decoding): readable,
label map single-channel 8-bit, same size as its image. Label VALUES are checked by
``load_mask`` (the class index calls it for every image before training).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tce_ray.data.base import SegmentationDataset, make_transform
from tce_ray.data.transforms import IGNORE_INDEX, SegmentationTransform

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
LABEL_MODES: tuple[str, ...] = ("L", "P")
INVALID = -1  # a LUT entry for raw values that are neither a class nor ignore


def build_lut(num_classes: int, remap: Mapping[int, int] | Sequence[int] | None = None) -> np.ndarray:
    """A 256-entry int16 table raw value -> label (0..K-1 or 255); -1 marks invalid raw values.

    ``remap=None``: identity for 0..K-1, 255 stays ignore, everything else invalid.
    A dict updates that default for its keys. A 256-entry list gives every entry
    (use -1 or None for values that must not occur).
    """
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    if remap is None:
        return lut
    if isinstance(remap, Mapping):
        items = list(remap.items())
    elif isinstance(remap, Sequence) and not isinstance(remap, str):
        if len(remap) != 256:
            raise ValueError(f"a list remap must have 256 entries (one per raw value), got {len(remap)}")
        lut[:] = INVALID
        items = [(i, INVALID if v is None else v) for i, v in enumerate(remap)]
    else:
        raise TypeError(f"remap must be a dict {{raw: label}} or a 256-entry list, got {type(remap).__name__}")
    for raw, new in items:
        raw, new = int(raw), int(new)
        if not 0 <= raw <= 255:
            raise ValueError(f"remap key {raw} is not an 8-bit label value (0..255)")
        if not (0 <= new < num_classes or new in (IGNORE_INDEX, INVALID)):
            raise ValueError(f"remap maps {raw} -> {new}; targets must be in [0, {num_classes}), 255 (ignore) or -1")
        lut[raw] = new
    return lut


def resolve_root(root: str | os.PathLike | None, dataset: str, env_var: str, layout: str) -> Path:
    """``root`` or ``$env_var``; a clear FileNotFoundError when neither points at a non-empty directory."""
    if root is None:
        root = os.environ.get(env_var)
        if not root:
            raise FileNotFoundError(
                f"{dataset}: no data root given. Put the data set on disk ({layout}) and pass "
                f"root=... (build_dataset('{dataset}', split, root=...) or data.root in the study YAML) "
                f"or set the environment variable {env_var}"
            )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: root {str(path)!r} is not a directory (expected {layout})")
    if not any(path.iterdir()):
        raise FileNotFoundError(f"{dataset}: root {str(path)!r} is empty (expected {layout})")
    return path


def scan(directory: Path, suffix: str = "", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Files under ``directory`` (recursively) keyed by relative path + stem without ``suffix``."""
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {str(directory)!r} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(directory.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        stem = path.stem
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        key = str(path.relative_to(directory).with_name(stem))
        if key in found:
            raise ValueError(f"two files share the stem {key!r} in {directory}: {found[key].name} and {path.name}")
        found[key] = path
    return found


def pair_files(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path) -> list[tuple[Path, Path]]:
    """Match images and label maps by key; any unmatched file raises FileNotFoundError naming it."""
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {str(image_dir)!r}")
    no_label = sorted(set(images) - set(labels))
    if no_label:
        raise FileNotFoundError(
            f"{len(no_label)} image(s) have no label map in {str(label_dir)!r}, e.g. "
            f"{str(images[no_label[0]])!r} (expected a label map with the same name stem)"
        )
    no_image = sorted(set(labels) - set(images))
    if no_image:
        raise FileNotFoundError(
            f"{len(no_image)} label map(s) have no image in {str(image_dir)!r}, e.g. {str(labels[no_image[0]])!r}"
        )
    return [(images[k], labels[k]) for k in sorted(images)]


def require_dirs(dataset: str, dirs: Mapping[str, Path], expected: str) -> None:
    """FileNotFoundError naming the first of ``dirs`` (what -> path) that is not a directory."""
    for what, d in dirs.items():
        if not d.is_dir():
            raise FileNotFoundError(f"{dataset}: {what} directory {str(d)!r} does not exist (expected {expected})")


def _header(path: Path, what: str) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception as exc:  # PIL raises several types for bad files
        raise ValueError(f"unreadable {what} {str(path)!r}: {exc}") from exc


def validate_pairs(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Header-only checks: readable files, 8-bit single-channel labels, equal sizes."""
    for img, lbl in pairs:
        img_size, _ = _header(img, "image")
        lbl_size, mode = _header(lbl, "label map")
        if mode not in LABEL_MODES:
            raise ValueError(
                f"label map {str(lbl)!r} has PIL mode {mode!r}; label maps must be 8-bit single-channel "
                f"({' or '.join(LABEL_MODES)}) class-id images, not colour-coded"
            )
        if img_size != lbl_size:
            raise ValueError(
                f"image {str(img)!r} is {img_size[0]}x{img_size[1]} but its label map {str(lbl)!r} is "
                f"{lbl_size[0]}x{lbl_size[1]} (W x H); they must have the same size"
            )


class FileSegmentationDataset(SegmentationDataset):
    """Pairs of (image file, label-map file) with a 256-entry label LUT."""

    def __init__(
        self,
        name: str,
        split: str,
        root: Path,
        pairs: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        lut: np.ndarray,
        transform: SegmentationTransform,
        downscale: int = 1,
    ) -> None:
        super().__init__(name, split, tuple(class_names), transform)
        if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
            raise ValueError(f"downscale must be an int >= 1 (1 keeps the full resolution), got {downscale!r}")
        self.downscale = downscale
        if len(pairs) == 0:
            raise FileNotFoundError(f"{name}/{split}: no image/label pairs under {str(root)!r}")
        self.root = Path(root)
        self.images = [Path(p) for p, _ in pairs]
        self.labels = [Path(q) for _, q in pairs]
        self.lut = np.asarray(lut, dtype=np.int16)
        if self.lut.shape != (256,):
            raise ValueError(f"lut must have 256 entries, got shape {self.lut.shape}")
        validate_pairs(pairs)
        self._fingerprint = self._compute_fingerprint()

    def __len__(self) -> int:
        return len(self.images)

    def _reduced_size(self, im: Image.Image) -> tuple[int, int]:
        w, h = im.size
        return max(1, w // self.downscale), max(1, h // self.downscale)

    def load_image(self, i: int) -> np.ndarray:
        with Image.open(self.images[i]) as im:
            rgb = im.convert("RGB")
            if self.downscale > 1:  # antialiased (PIL widens the bilinear kernel when shrinking)
                rgb = rgb.resize(self._reduced_size(rgb), Image.BILINEAR)
            return np.array(rgb)

    def load_mask(self, i: int) -> np.ndarray:
        path = self.labels[i]
        with Image.open(path) as im:
            if im.mode not in LABEL_MODES:
                raise ValueError(f"label map {str(path)!r} has PIL mode {im.mode!r}, expected L or P")
            if self.downscale > 1:  # NEAREST keeps exact label values
                im = im.resize(self._reduced_size(im), Image.NEAREST)
            raw = np.asarray(im)  # exact values (P: palette indices), never interpolated
        mapped = self.lut[raw]
        bad = mapped < 0
        if bad.any():
            values = np.unique(raw[bad])
            valid = np.flatnonzero(self.lut >= 0)
            raise ValueError(
                f"label map {str(path)!r} contains value(s) {values.tolist()[:20]} ({int(bad.sum())} pixels) that are "
                f"neither one of the {self.num_classes} classes nor ignore; valid raw values: "
                f"{_ranges(valid)} (fix the file or pass a remap)"
            )
        return mapped.astype(np.uint8)

    def fingerprint(self) -> str:
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        files = []
        for img, lbl in zip(self.images, self.labels):
            for p in (img, lbl):
                st = p.stat()
                files.append([str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p), st.st_size, st.st_mtime_ns])
        payload = {
            "name": self.name,
            "split": self.split,
            "classes": list(self.class_names),
            "lut": self.lut.tolist(),
            "downscale": self.downscale,
            "files": sorted(files),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class FileSplit:
    """What a file data set finds on disk for one split: pairs, class names and label LUT."""

    name: str
    root: Path
    pairs: Sequence[tuple[Path, Path]]
    class_names: Sequence[str]
    lut: np.ndarray


def file_dataset(files: FileSplit, split: str, *, downscale: int = 1, **transform) -> FileSegmentationDataset:
    """The data set of ``files`` with ``split``'s transform (``make_transform``'s
    ``augment``, ``crop_size``, ``scale_range``): the tail every file builder shares."""
    return FileSegmentationDataset(
        files.name, split, files.root, files.pairs, files.class_names, files.lut, make_transform(split, **transform), downscale
    )


def file_builder(find: Callable[[str, str | os.PathLike | None], FileSplit], name: str) -> Callable[..., FileSegmentationDataset]:
    """A ``build_dataset`` builder ``name(split, root=None, *, crop_size, scale_range, augment,
    downscale)`` from ``find(split, root) -> FileSplit``. The options every file data set takes
    are declared here once; they are keyword-only because ``build_dataset`` reads a builder's
    accepted options from its signature."""

    def build(
        split: str,
        root: str | os.PathLike | None = None,
        *,
        crop_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        augment: bool | None = None,
        downscale: int = 1,
    ) -> FileSegmentationDataset:
        return file_dataset(
            find(split, root), split, crop_size=crop_size, scale_range=scale_range, augment=augment, downscale=downscale
        )

    build.__name__ = build.__qualname__ = name
    build.__module__ = find.__module__
    build.__doc__ = (
        f"{find.__doc__}\n\nOptions: ``crop_size`` and ``scale_range`` (training crop), ``augment`` "
        "(default: on for train), ``downscale`` (shrink by this integer factor when reading)."
    )
    return build


def _ranges(values: np.ndarray) -> str:
    """Compact "0-10, 255" text for a sorted int array."""
    out: list[str] = []
    start = prev = None
    for v in values.tolist():
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(out)
