"""Check every file of a data set before training: full decode and label values, cached.

Building a file data set reads only the headers (pairing, sizes, label-map modes), so a
truncated JPEG or a label value outside the classes would surface in the middle of
training, as a long traceback from a worker. :func:`verify_dataset` decodes every image
fully (``Image.load()``, not only the header; PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES``
must stay False, the default, or truncated files pass) and reads every label map through
the data set's own ``load_mask`` (which refuses values that are neither a class nor
ignore), once per data set: a small JSON file ``verified-<fingerprint>.json`` in the
cache folder records that this fingerprint was checked, written atomically.

What the fingerprint sees (``FileSegmentationDataset``): every file's relative path, size
and modification time (ns), the class names, the label LUT and ``downscale``. A file that
is replaced or edited gets a new mtime (and usually size), so it is checked again. Not
seen: content changed with the same size AND the old mtime restored (``cp -p``, ``rsync
-a`` or ``touch -r`` from a same-size damaged copy); delete the cache file (or the cache
folder) after such a copy.

The generated synthetic set has no files and is not checked. For huge data sets the check
can be skipped (``skip=True``; the study setting is ``data.verify: false``, documented in
the README's "when things go wrong"): the first bad file then fails the training instead.

Cost (``benchmarks/bench_verify.py``; CamVid train + val, 468 pairs of 480x360 JPEG + PNG,
on a shared 2-core machine under heavy load): 8-9 s for both splits (about 18 ms a pair;
2 or 4 threads gained under 10 % there: decoding releases the GIL, so they help on a
machine with free cores or slow storage), 0.2 ms when the record is there.

This module imports neither Ray nor torch (PIL and numpy only, plus the data classes).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["BadFile", "DataCheckError", "VerifyResult", "verify_dataset", "verify_splits", "verified_path"]

log = logging.getLogger(__name__)

_FORMAT = 1
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_RGB_READY = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "I", "F"})
IGNORE_INDEX = 255


class _Dataset(Protocol):
    name: str
    split: str
    num_classes: int

    def __len__(self) -> int: ...
    def load_image(self, i: int) -> np.ndarray: ...
    def load_mask(self, i: int) -> np.ndarray: ...
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class BadFile:
    """One problem: the data set index, the file (or ``name/split image i``) and what is wrong."""

    index: int
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DataCheckError(ValueError):
    """Bad files in a split. ``bad`` lists them (at most ``max_problems``, in index order);
    ``str(err)`` is one line naming the first and how many more there are."""

    def __init__(self, label: str, bad: Sequence[BadFile], stopped_early: bool):
        self.label = label
        self.bad = list(bad)
        more = len(self.bad) - 1
        extra = ""
        if more:
            others = ", ".join(Path(b.path).name for b in self.bad[1:4])
            extra = f" (and {more}{'+' if stopped_early else ''} more bad file(s) in {label}: {others}{', ...' if more > 3 else ''})"
        super().__init__(
            f"{label}: {self.bad[0]}{extra}; replace or remove the bad file(s) and run again "
            "(data.verify: false skips this check)"
        )


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_dataset` did: ``checked`` (decoded every file now), ``cached``
    (this fingerprint was checked before), ``skipped`` (asked to) or ``generated`` (no files)."""

    name: str
    split: str
    num_images: int
    status: Literal["checked", "cached", "skipped", "generated"]
    seconds: float
    cache_file: Path | None = None


def verified_path(cache_dir: str | os.PathLike[str], fingerprint: str) -> Path:
    """``cache_dir/verified-<fingerprint>.json`` (a fingerprint that is not file-safe is hashed)."""
    key = fingerprint if _SAFE_NAME.fullmatch(fingerprint) else hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    return Path(cache_dir) / f"verified-{key}.json"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _describe_decode_error(exc: BaseException, what: str) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, UnidentifiedImageError):
        return f"not an {what} PIL can read (unknown format or a damaged header)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"{what} too large to decode safely ({text})"
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return f"truncated {what}: the file is cut short ({text})"
    return f"corrupt {what}: decoding failed ({type(exc).__name__}: {text})"


def _decode_image(path: Path) -> str | None:
    """Decode the whole file; None when fine, else what is wrong."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in _RGB_READY:  # e.g. I;16: make sure the loader's convert("RGB") works
                im.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, zlib/struct errors
        return _describe_decode_error(exc, "image")
    return None


def _check_mask(dataset: _Dataset, i: int, label_path: str | None) -> tuple[str | None, tuple[int, ...]]:
    """Read label map ``i`` through the data set (exact values, its LUT) and check them:
    (what is wrong or None, the mask's shape)."""
    try:
        mask = np.asarray(dataset.load_mask(i))
    except ValueError as exc:  # FileSegmentationDataset: bad values or mode, naming the file
        text = str(exc)
        if label_path:
            text = text.replace(f"label map {label_path!r} ", "label map ")
        return text, ()
    except Exception as exc:
        return _describe_decode_error(exc, "label map"), ()
    k = int(dataset.num_classes)
    if mask.dtype.kind not in "iu":
        return f"label map holds {mask.dtype} values; expected integer class ids", mask.shape
    bad = ((mask >= k) & (mask != IGNORE_INDEX)) | (mask < 0)
    if bad.any():
        values = np.unique(mask[bad])[:10].tolist()
        return (f"label value(s) {values} ({int(bad.sum())} pixels) outside the classes [0, {k}) and not "
                f"ignore ({IGNORE_INDEX}); fix the file or remap the values"), mask.shape
    return None, mask.shape


def _check_one(dataset: _Dataset, i: int) -> BadFile | None:
    images: list[Path] | None = getattr(dataset, "images", None)
    labels: list[Path] | None = getattr(dataset, "labels", None)
    if images is not None and labels is not None:  # a file data set: decode the file itself
        problem = _decode_image(Path(images[i]))
        if problem:
            return BadFile(i, str(images[i]), problem)
        problem, _ = _check_mask(dataset, i, str(labels[i]))
        return BadFile(i, str(labels[i]), problem) if problem else None
    where = f"{dataset.name}/{dataset.split} image {i}"  # any other data set: its own loaders
    try:
        image = np.asarray(dataset.load_image(i))
    except Exception as exc:
        return BadFile(i, where, _describe_decode_error(exc, "image"))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return BadFile(i, where, f"load_image gave {image.dtype} {image.shape}; expected uint8 [H, W, 3]")
    problem, shape = _check_mask(dataset, i, None)
    if problem:
        return BadFile(i, where, problem)
    if tuple(shape) != image.shape[:2]:
        return BadFile(i, where, f"image is {image.shape[:2]} but its label map is {tuple(shape)} (H, W)")
    return None


def _read_record(path: Path, fingerprint: str, n: int) -> bool:
    try:
        rec = json.loads(path.read_text())
        return rec.get("format") == _FORMAT and rec.get("fingerprint") == fingerprint and rec.get("num_images") == n
    except (OSError, ValueError, AttributeError):
        return False


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verify_dataset(
    dataset: _Dataset,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    skip: bool = False,
    num_threads: int = 2,
    progress: Callable[[str], None] | None = _stderr,
    progress_every: float = 5.0,
    max_problems: int = 20,
) -> VerifyResult:
    """Decode every image and check every label map of ``dataset`` (see the module doc).

    ``cache_dir``: where the "verified" record of this fingerprint is read and written
    (None: always check, record nothing). ``skip``: do nothing (huge data sets).
    ``num_threads``: decoding threads (PIL releases the GIL while decoding).
    ``progress``: called with a line every ``progress_every`` seconds while checking and
    once at the end if any progress line was given (default: stderr; None: silent).
    ``max_problems``: stop after this many bad files. Raises :class:`DataCheckError`.
    """
    from tce_ray.data.synthetic import SyntheticStreets  # numpy only

    label = f"{dataset.name}/{dataset.split}"
    n = len(dataset)
    if skip:
        return VerifyResult(dataset.name, dataset.split, n, "skipped", 0.0)
    if isinstance(dataset, SyntheticStreets):
        return VerifyResult(dataset.name, dataset.split, n, "generated", 0.0)
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an integer >= 1, got {num_threads!r}")
    t0 = time.monotonic()
    fingerprint = str(dataset.fingerprint())
    record = verified_path(cache_dir, fingerprint) if cache_dir is not None else None
    if record is not None and _read_record(record, fingerprint, n):
        return VerifyResult(dataset.name, dataset.split, n, "cached", time.monotonic() - t0, record)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images pass the check")

    check = _Check(dataset, label, progress, progress_every, max_problems)
    check.run(num_threads)
    seconds = time.monotonic() - t0
    if check.bad:
        raise DataCheckError(label, sorted(check.bad, key=lambda b: b.index), check.stop.is_set())
    if record is not None:
        try:
            _write_record(record, {
                "format": _FORMAT, "fingerprint": fingerprint, "name": dataset.name, "split": dataset.split,
                "num_images": n, "num_classes": int(dataset.num_classes), "seconds": round(seconds, 3),
                "verified_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })
        except OSError as exc:  # a read-only cache folder costs a re-check next time, nothing more
            log.warning("could not record the check of %s in %s: %s", label, record, exc)
            record = None
    if progress is not None and check.said:
        progress(f"checked {label}: {n} images in {seconds:.1f} s")
    return VerifyResult(dataset.name, dataset.split, n, "checked", seconds, record)


class _Check:
    """The parallel check of every file of one data set: the bad files found, the progress
    lines, and the stop after ``max_problems`` (shared by the pool's threads under a lock)."""

    def __init__(self, dataset: _Dataset, label: str, progress: Callable[[str], None] | None,
                 progress_every: float, max_problems: int) -> None:
        self.dataset, self.label, self.n = dataset, label, len(dataset)
        self.progress, self.progress_every, self.max_problems = progress, progress_every, max_problems
        self.bad: list[BadFile] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.done = 0
        self.t0 = self.last_line = time.monotonic()
        self.said = False

    def run(self, num_threads: int) -> None:
        if num_threads == 1 or self.n < 2:
            for i in range(self.n):
                self.one(i)
        else:
            with ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="verify") as pool:
                list(pool.map(self.one, range(self.n)))

    def one(self, i: int) -> None:
        if self.stop.is_set():
            return
        problem = _check_one(self.dataset, i)
        with self.lock:
            self.done += 1
            if problem is not None:
                self.bad.append(problem)
                if len(self.bad) >= self.max_problems:
                    self.stop.set()
            self._progress_line()

    def _progress_line(self) -> None:
        now, done, n = time.monotonic(), self.done, self.n
        if self.progress is not None and now - self.last_line >= self.progress_every and done < n:
            self.last_line, self.said = now, True
            rate = done / (now - self.t0)
            self.progress(f"checking {self.label}: {done}/{n} images ({100 * done // n}%), {now - self.t0:.0f} s, "
                          f"about {(n - done) / rate:.0f} s left")


def verify_splits(datasets: Sequence[_Dataset], **options: Any) -> list[VerifyResult]:
    """:func:`verify_dataset` for each data set (e.g. ``[train, val]``) in order; the
    first split with bad files raises its :class:`DataCheckError`."""
    return [verify_dataset(ds, **options) for ds in datasets]
