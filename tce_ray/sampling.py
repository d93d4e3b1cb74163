"""Class-conditional sampling for stochastic TCE (SPEC "Stochastic TCE", steps 1-2).

:class:`ClassIndex` counts, once per data set, the pixels of every class in every image
(``D_c`` = the images with at least ``min_pixels`` pixels of class ``c``) and caches the
counts as Parquet keyed by the data set's fingerprint. :class:`TiltedBatchSampler` is a
torch batch sampler: for every batch it reads the current class weights, draws a class
``c`` and then a minibatch from ``D_c``, and records ``c`` so that the training loop can
report ``(c, batch loss)`` back to the weight state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import Sampler

__all__ = ["ClassIndex", "TiltedBatchSampler", "count_classes"]

log = logging.getLogger(__name__)

_META_KEY = b"tce_ray.class_index"
_FORMAT_VERSION = 1
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


class _MaskDataset(Protocol):
    num_classes: int

    def __len__(self) -> int: ...
    def load_mask(self, i: int) -> np.ndarray: ...
    def fingerprint(self) -> str: ...


class _WeightSource(Protocol):
    @property
    def weights(self) -> np.ndarray: ...


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def count_classes(
    mask: np.ndarray, num_classes: int, ignore_index: int = 255, *, image: int | None = None
) -> np.ndarray:
    """Pixels of each class in one label map: ``[K]`` int64; ``ignore_index`` counts nowhere.

    Any other value outside ``[0, K)`` raises ValueError naming ``image`` (the data set index).
    """
    flat = np.asarray(mask).ravel()
    if flat.dtype.kind not in "iu":
        raise TypeError(f"image {image}: label map must hold integers, got dtype {flat.dtype}")
    if ignore_index < 0:
        flat = flat[flat != ignore_index]
    k = num_classes
    if flat.size == 0:
        return np.zeros(k, dtype=np.int64)
    top = max(k, ignore_index + 1)
    if int(flat.min()) < 0 or int(flat.max()) >= top:
        _raise_bad_labels(flat, k, ignore_index, image)
    bins = np.bincount(flat.astype(np.intp, copy=False), minlength=top)
    if ignore_index >= k:
        bins[ignore_index] = 0
    if bins[k:].any():
        _raise_bad_labels(flat, k, ignore_index, image)
    return bins[:k].astype(np.int64)


def _raise_bad_labels(flat: np.ndarray, k: int, ignore_index: int, image: int | None) -> None:
    bad = np.unique(flat[((flat < 0) | (flat >= k)) & (flat != ignore_index)])
    raise ValueError(
        f"image {image}: label values {bad[:10].tolist()} are outside [0, {k}) and are not the "
        f"ignore index {ignore_index}; remap them in the data set's load_mask (e.g. to {ignore_index})"
    )


class ClassIndex:
    """Per-image pixel counts of every class: ``counts[m, c]`` = pixels of class c in image m."""

    def __init__(self, counts: np.ndarray, class_names: Sequence[str] | None = None, fingerprint: str = "") -> None:
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] < 1 or counts.dtype.kind not in "iu":
            raise ValueError(f"counts must be an integer array [M, K] with K >= 1, got {counts.dtype} {counts.shape}")
        if counts.size and counts.min() < 0:
            raise ValueError("counts must be non-negative")
        self.counts: np.ndarray = counts.astype(np.int64, copy=True)
        self.counts.flags.writeable = False
        k = self.counts.shape[1]
        names = tuple(str(c) for c in range(k)) if class_names is None else tuple(str(n) for n in class_names)
        if len(names) != k:
            raise ValueError(f"got {len(names)} class names for {k} classes")
        self.class_names: tuple[str, ...] = names
        self.fingerprint: str = str(fingerprint)

    @property
    def num_images(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[1])

    def __repr__(self) -> str:
        return (
            f"ClassIndex(num_images={self.num_images}, num_classes={self.num_classes}, "
            f"fingerprint={self.fingerprint!r})"
        )

    # -- queries -----------------------------------------------------------------------

    def _check_class(self, cls: Any) -> int:
        is_int = isinstance(cls, (int, np.integer)) and not isinstance(cls, bool)
        if not is_int or not 0 <= cls < self.num_classes:
            raise ValueError(f"class {cls!r} is not a class id in [0, {self.num_classes})")
        return int(cls)

    def images_with(self, cls: int, min_pixels: int = 1) -> np.ndarray:
        """``D_c``: indices (int64, ascending) of the images with >= ``min_pixels`` pixels of ``cls``."""
        c = self._check_class(cls)
        m = _check_int("min_pixels", min_pixels, 1)
        return np.flatnonzero(self.counts[:, c] >= m).astype(np.int64)

    def drawable(self, min_pixels: int = 1) -> np.ndarray:
        """Class ids (int64, ascending) whose ``D_c`` is non-empty at this ``min_pixels``."""
        m = _check_int("min_pixels", min_pixels, 1)
        return np.flatnonzero((self.counts >= m).any(axis=0)).astype(np.int64)

    def pixel_frequencies(self) -> np.ndarray:
        """Share of all labelled pixels that belong to each class: ``[K]`` float64, sums to 1."""
        total = self.counts.sum(axis=0, dtype=np.float64)
        if total.sum() <= 0:
            raise ValueError("the index holds no labelled pixel, so pixel frequencies are undefined")
        return total / total.sum()

    # -- building and caching ----------------------------------------------------------

    @classmethod
    def from_dataset(cls, dataset: _MaskDataset, *, num_threads: int = 1) -> ClassIndex:
        """Count every ``dataset.load_mask(i)``, in ``num_threads`` threads.

        One thread by default: on CamVid (PNG decoding) a pool gained nothing and on the
        synthetic set (Python-heavy generation, GIL-bound) it was slower; more threads
        can help when masks are read from slow (network) storage.
        """
        k = _check_int("dataset.num_classes", dataset.num_classes, 1)
        ignore = int(getattr(dataset, "ignore_index", 255))
        if 0 <= ignore < k:
            raise ValueError(f"ignore_index {ignore} is a class id in [0, {k}); use a value outside it (e.g. 255)")
        n = len(dataset)
        threads = _check_int("num_threads", num_threads, 1)

        def one(i: int) -> np.ndarray:
            return count_classes(dataset.load_mask(i), k, ignore, image=i)

        if threads == 1 or n < 2:
            rows = [one(i) for i in range(n)]
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="class-index") as pool:
                rows = list(pool.map(one, range(n)))
        counts = np.stack(rows) if rows else np.zeros((0, k), dtype=np.int64)
        names = getattr(dataset, "class_names", None)
        return cls(counts, names, dataset.fingerprint())

    @staticmethod
    def cache_path(cache_dir: str | Path, fingerprint: str) -> Path:
        """``cache_dir/class_index-<fingerprint>.parquet`` (a non file-safe fingerprint is hashed)."""
        safe = _SAFE_NAME.fullmatch(fingerprint)
        key = fingerprint if safe else hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
        return Path(cache_dir) / f"class_index-{key}.parquet"

    @classmethod
    def build(
        cls, dataset: _MaskDataset, cache_dir: str | Path | None = None, *, num_threads: int = 1
    ) -> ClassIndex:
        """The data set's index, read from ``cache_dir`` when a matching file is there.

        A cached file is reused only if its fingerprint, class count, class names and
        image count match ``dataset``; a mismatched or unreadable file is rebuilt and
        replaced (written atomically, so concurrent workers never read half a file).
        """
        if cache_dir is None:
            return cls.from_dataset(dataset, num_threads=num_threads)
        fingerprint = str(dataset.fingerprint())
        path = cls.cache_path(cache_dir, fingerprint)
        if path.exists():
            try:
                cached = cls.load(path)
            except ValueError as err:
                log.warning("rebuilding the class index: %s", err)
            else:
                names = getattr(dataset, "class_names", None)
                if (
                    cached.fingerprint == fingerprint
                    and cached.num_classes == dataset.num_classes
                    and cached.num_images == len(dataset)
                    and (names is None or cached.class_names == tuple(str(n) for n in names))
                ):
                    return cached
                log.warning("rebuilding the class index: %s does not match the data set", path)
        index = cls.from_dataset(dataset, num_threads=num_threads)
        index.save(path)
        return index

    def save(self, path: str | Path) -> None:
        """Write the counts as Parquet (one int64 column per class), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "version": _FORMAT_VERSION,
            "num_classes": self.num_classes,
            "num_images": self.num_images,
            "class_names": list(self.class_names),
            "fingerprint": self.fingerprint,
        }
        table = pa.table({f"count_{c}": self.counts[:, c] for c in range(self.num_classes)})
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> ClassIndex:
        """Read a file written by :meth:`save`; a corrupt or foreign file raises ValueError."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no class index at {path}; build one with ClassIndex.build(dataset, cache_dir)")
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[_META_KEY])
            k = int(meta["num_classes"])
            counts = np.stack([table.column(f"count_{c}").to_numpy() for c in range(k)], axis=1)
            if meta["version"] != _FORMAT_VERSION or counts.shape != (int(meta["num_images"]), k):
                raise ValueError(f"version {meta['version']} / shape {counts.shape} do not match the metadata")
            return cls(counts, meta["class_names"], meta["fingerprint"])
        except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is not a readable class index ({err}); delete it to rebuild") from err


class TiltedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` images that all contain one class drawn from the current weights.

    For every batch: read ``weight_source.weights`` ([K], finite, >= 0; e.g. a TiltState
    or a WeightClient), zero the classes whose ``D_c`` is empty at ``min_pixels`` (a class
    with weight > 0 but no image is never drawn; the rest are renormalised), draw a class
    ``c``, then ``batch_size`` images of ``D_c`` - without replacement when
    ``|D_c| >= batch_size``, with replacement otherwise.

    The class of every yielded batch is queued; the training loop calls
    :meth:`pop_batch_class` once per batch it receives (a DataLoader with the default
    ``in_order=True`` delivers batches in sampler order). Lag: a DataLoader draws
    ``prefetch_factor * num_workers`` batches ahead, so a batch's class is drawn with
    weights that many batches old. A new iteration (epoch) drops the classes of batches
    that the previous iterator drew but never delivered.

    Randomness: ``np.random.default_rng([seed, rank, epoch])``; ranks draw distinct streams.
    """

    def __init__(
        self,
        index: ClassIndex,
        weight_source: _WeightSource,
        batch_size: int,
        num_batches: int,
        *,
        min_pixels: int = 1,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if not isinstance(index, ClassIndex):
            raise TypeError(f"index must be a ClassIndex, got {type(index).__name__}")
        if not hasattr(weight_source, "weights"):
            raise TypeError(f"weight_source must have a .weights attribute, got {type(weight_source).__name__}")
        self.index = index
        self.weight_source = weight_source
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.num_batches = _check_int("num_batches", num_batches, 0)
        self.min_pixels = _check_int("min_pixels", min_pixels, 1)
        self.seed = _check_int("seed", seed, 0)
        self.rank = _check_int("rank", rank, 0)
        self.epoch = 0
        self._members = [index.images_with(c, self.min_pixels) for c in range(index.num_classes)]
        self._drawable = np.array([m.size > 0 for m in self._members])
        if not self._drawable.any():
            raise ValueError(f"no class has an image with >= {self.min_pixels} pixels; lower min_pixels")
        self._classes: deque[int] = deque()
        self.last_weights: np.ndarray | None = None
        """The sampling distribution (renormalised over drawable classes) of the last batch."""

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Reseed the next iteration with ``[seed, rank, epoch]``."""
        self.epoch = _check_int("epoch", epoch, 0)

    def pop_batch_class(self) -> int:
        """The class of the oldest yielded batch not popped yet."""
        if not self._classes:
            raise RuntimeError(
                "pop_batch_class(): no yielded batch is waiting; call it once per batch received from the loader"
            )
        return self._classes.popleft()

    def _probabilities(self) -> np.ndarray:
        k = self.index.num_classes
        w = np.array(self.weight_source.weights, dtype=np.float64)
        if w.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
        w[~self._drawable] = 0.0
        total = w.sum()
        if not total > 0:
            raise ValueError(
                f"weights {w.tolist()} put no mass on a drawable class "
                f"(drawable: {np.flatnonzero(self._drawable).tolist()} at min_pixels={self.min_pixels})"
            )
        return w / total

    def __iter__(self) -> Iterator[list[int]]:
        self._classes.clear()
        rng = np.random.default_rng([self.seed, self.rank, self.epoch])
        k = self.index.num_classes
        for _ in range(self.num_batches):
            p = self._probabilities()
            c = int(rng.choice(k, p=p))
            members = self._members[c]
            batch = rng.choice(members, size=self.batch_size, replace=members.size < self.batch_size)
            self.last_weights = p
            self._classes.append(c)
            yield batch.tolist()
