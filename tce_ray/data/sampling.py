"""Class-conditional sampling: stochastic TCE (SPEC "Stochastic TCE", steps 1-2) and
static rare-class sampling.

:class:`ClassIndex` counts, once per data set, the pixels of every class in every image
(``D_c`` = the images with at least ``min_pixels`` pixels of class ``c``) and caches the
counts as Parquet keyed by the data set's fingerprint. :class:`TiltedBatchSampler` is a
torch batch sampler: for every batch it reads the current class weights, draws a class
``c`` and then a minibatch from ``D_c``, and records ``c`` so that the training loop can
report ``(c, batch loss)`` back to the weight state.

Two settings make a drawn class reach the model (the paper's Algorithm 1 is
``image_power=0, class_crop=False``, the defaults):

* ``image_power`` (float >= 0): the image of ``D_c`` is chosen with probability
  ``P(m | c) ∝ n_{m,c} ** image_power`` (``n_{m,c}``: pixels of c in image m, from the
  index). 0 is uniform over ``D_c`` (the paper: "a minibatch from D_c"); 1 is proportional
  to c's pixels; values in between temper it. With ``image_power > 0`` the batch's images
  are independent draws from ``P(m | c)`` (an image may appear twice, each copy with its
  own crop and augmentation), so the distribution is exactly the stated one.
* ``class_crop`` (bool): the sampler yields ``(image index, class)`` pairs instead of
  plain indices; :class:`~tce_ray.data.base.SegmentationDataset` passes the class to its
  transform, which places the training crop so that it contains pixels of that class
  (``tce_ray.data.transforms``). Plain indices keep the random crop.

Static rare-class sampling (DAFormer's rare class sampling: Hoyer, Dai, Van Gool,
"DAFormer: Improving Network Architectures and Training Strategies for Domain-Adaptive
Semantic Segmentation", CVPR 2022, eq. 6): fixed class probabilities
``p_c ∝ exp((1 - f_c) / T)`` over the drawable classes, ``f_c`` the share of the training
set's labelled pixels that are class c (:func:`rare_class_probabilities`). Feed them to the
same :class:`TiltedBatchSampler` through :class:`StaticClassWeights` in place of the
adaptive weight source; any loss can then train on the batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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

__all__ = [
    "ClassIndex",
    "StaticClassWeights",
    "TiltedBatchSampler",
    "check_image_power",
    "count_classes",
    "image_probabilities",
    "rare_class_probabilities",
]

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


def check_image_power(image_power: Any) -> float:
    """``image_power`` as a float; it must be a finite real number >= 0."""
    ok = isinstance(image_power, (int, float, np.integer, np.floating)) and not isinstance(image_power, bool)
    if not ok or not math.isfinite(float(image_power)) or float(image_power) < 0:
        raise ValueError(
            f"image_power must be a finite number >= 0 (0: uniform over D_c, the paper; "
            f"1: proportional to the class's pixels), got {image_power!r}"
        )
    return float(image_power)


def image_probabilities(pixels: np.ndarray, image_power: float) -> np.ndarray:
    """``P(m | c) ∝ pixels[m] ** image_power`` over the images of ``D_c`` (float64, sums to 1).

    ``pixels``: the class's pixel counts in the images of ``D_c`` (each > 0).
    ``image_power = 0`` gives the uniform distribution. Computed in log space, so large
    powers neither overflow nor lose the smaller images to underflow more than needed.
    """
    power = check_image_power(image_power)
    n = np.asarray(pixels, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or not (n > 0).all():
        raise ValueError(f"pixels must be a non-empty 1-D array of positive counts, got {np.asarray(pixels)!r}")
    if power == 0.0:
        return np.full(n.size, 1.0 / n.size)
    logits = power * np.log(n)
    with np.errstate(under="ignore"):
        p = np.exp(logits - logits.max())
    return p / p.sum()


def rare_class_probabilities(
    frequencies: Sequence[float] | np.ndarray, temperature: float, drawable: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """DAFormer's rare-class sampling probabilities: ``p_c ∝ exp((1 - f_c) / T)``.

    ``frequencies`` [K]: each class's share of the training set's labelled pixels
    (:meth:`ClassIndex.pixel_frequencies`). Only the ``drawable`` classes (default: those
    with ``f_c > 0``) get mass; the rest get 0. A small ``T`` concentrates the draws on the
    rarest classes (DAFormer uses T = 0.01 on GTA); ``T -> inf`` is uniform over the
    drawable classes. Computed as a softmax (log-sum-exp), so any ``T > 0`` is safe.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    if f.ndim != 1 or f.size == 0 or not np.isfinite(f).all() or (f < 0).any() or (f > 1).any():
        raise ValueError(f"frequencies must be a 1-D array of shares in [0, 1], got {np.asarray(frequencies).tolist()}")
    ok = isinstance(temperature, (int, float, np.integer, np.floating)) and not isinstance(temperature, bool)
    if not ok or not math.isfinite(float(temperature)) or float(temperature) <= 0:
        raise ValueError(f"temperature must be a finite number > 0 (DAFormer: 0.01), got {temperature!r}")
    k = f.size
    mask = np.zeros(k, dtype=bool)
    if drawable is None:
        mask[f > 0] = True
    else:
        ids = np.asarray(drawable, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= k):
            raise ValueError(f"drawable class ids {ids.tolist()} lie outside [0, {k})")
        mask[ids] = True
    if not mask.any():
        raise ValueError("no drawable class: rare-class sampling needs at least one class with pixels")
    logits = (1.0 - f[mask]) / float(temperature)
    with np.errstate(under="ignore"):
        e = np.exp(logits - logits.max())
    p = np.zeros(k)
    p[mask] = e / e.sum()
    return p


class StaticClassWeights:
    """A fixed class-weight source for :class:`TiltedBatchSampler` (e.g. rare-class sampling)."""

    def __init__(self, weights: Sequence[float] | np.ndarray) -> None:
        w = np.array(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"weights must be a non-empty 1-D array, finite, >= 0, not all 0; got {w.tolist()}")
        self._weights = w / w.sum()
        self._weights.flags.writeable = False

    @property
    def weights(self) -> np.ndarray:
        """The fixed sampling distribution [K] (sums to 1)."""
        return self._weights

    def __repr__(self) -> str:
        return f"StaticClassWeights({np.round(self._weights, 4).tolist()})"


class TiltedBatchSampler(Sampler[list]):
    """Batches of ``batch_size`` images that all contain one class drawn from the current weights.

    For every batch: read ``weight_source.weights`` ([K], finite, >= 0; e.g. a TiltState,
    a WeightClient or :class:`StaticClassWeights`), zero the classes whose ``D_c`` is empty
    at ``min_pixels`` (a class with weight > 0 but no image is never drawn; the rest are
    renormalised), draw a class ``c``, then ``batch_size`` images of ``D_c``:

    - ``image_power == 0`` (the paper, default): uniformly, without replacement when
      ``|D_c| >= batch_size``, with replacement otherwise;
    - ``image_power > 0``: ``batch_size`` independent draws from
      ``P(m | c) ∝ n_{m,c} ** image_power`` (:func:`image_probabilities`).

    A batch is a list of image indices; with ``class_crop=True`` a list of
    ``(image index, c)`` pairs, which :class:`~tce_ray.data.base.SegmentationDataset`
    understands (the crop is then placed on pixels of ``c``).

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
        image_power: float = 0.0,
        class_crop: bool = False,
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
        self.image_power = check_image_power(image_power)
        if not isinstance(class_crop, (bool, np.bool_)):
            raise ValueError(f"class_crop must be true or false, got {class_crop!r}")
        self.class_crop = bool(class_crop)
        self.epoch = 0
        self._members = [index.images_with(c, self.min_pixels) for c in range(index.num_classes)]
        self._image_p: list[np.ndarray | None] = [
            image_probabilities(index.counts[m, c], self.image_power) if m.size and self.image_power > 0 else None
            for c, m in enumerate(self._members)
        ]
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

    def __iter__(self) -> Iterator[list]:
        self._classes.clear()
        rng = np.random.default_rng([self.seed, self.rank, self.epoch])
        k = self.index.num_classes
        for _ in range(self.num_batches):
            p = self._probabilities()
            c = int(rng.choice(k, p=p))
            members = self._members[c]
            image_p = self._image_p[c]
            if image_p is None:  # the paper: uniform over D_c (the draw main has always made)
                batch = rng.choice(members, size=self.batch_size, replace=members.size < self.batch_size)
            else:
                batch = rng.choice(members, size=self.batch_size, replace=True, p=image_p)
            self.last_weights = p
            self._classes.append(c)
            if self.class_crop:
                yield [(int(i), c) for i in batch]
            else:
                yield batch.tolist()
