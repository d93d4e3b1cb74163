"""The built-in synthetic street scenes: no files, deterministic, generated on the fly.

Image ``i`` of a split is drawn from ``np.random.default_rng([seed, crc32(split), i, stream])``
so any index can be made on its own, in any worker process. Geometry (the label map) uses
stream 0 and texture/noise stream 1, so ``load_mask`` skips the rendering.

A perspective street: sky, a skyline of buildings and trees, road with lane markings and
sidewalks; cars, persons, poles with traffic signs in front; and some rare, hard classes:
thin poles, small signs, bicycles (two 1-px wheel rings and a frame), a ``bus_lane`` strip
that is road with a faint red tint (a rare look-alike of road) and ``truck`` (a larger,
boxier car in car colours: a rare look-alike of car). Every class has its own texture and
all pixels get illumination, shading and noise, so colour alone does not separate them.
Ignore (255): an ego-vehicle hood band at the bottom of half the images and random
"unlabelled" clutter blobs.

Pixel shares over the default train split (400 images, 96x128, seed 0), measured with
``measure_frequencies()`` as shares of the labelled pixels (ignore: 3.4 % of all pixels);
the last column is the fraction of images that contain the class:

====  ============  ========  ========
 id   class         share     images
====  ============  ========  ========
  0   road          27.8 %    100 %
  1   sidewalk      20.4 %    100 %
  2   building      17.7 %    100 %
  3   vegetation     7.7 %     90 %
  4   sky           18.9 %    100 %
  5   car            3.96 %    80 %
  6   truck          1.03 %    16 %
  7   person         0.55 %    61 %
  8   pole           0.76 %    62 %
  9   traffic_sign   0.14 %    41 %
 10   bicycle        0.097 %   18 %
 11   bus_lane       0.94 %    28 %
====  ============  ========  ========

The shares span 2.5 orders of magnitude. The tiny DeepLabv3+ trained with plain
cross-entropy (2000 steps of 8 images, SGD lr 0.05 with poly decay) reached 0.55 mIoU on
the val split: the five stuff classes 0.89-0.95, car 0.77, truck 0.60, person 0.41,
bus_lane 0.16, pole 0.04, traffic_sign 0.02 and bicycle 0.0.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from functools import lru_cache

import numpy as np

from tce_ray.data.base import SegmentationDataset, make_transform

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "vegetation", "sky", "car",
    "truck", "person", "pole", "traffic_sign", "bicycle", "bus_lane",
)  # fmt: skip
# Measured shares of the labelled pixels of the default train split (sum 1; see the table above).
SYNTHETIC_FREQUENCIES: dict[str, float] = {
    "road": 0.2778, "sidewalk": 0.2043, "building": 0.1768, "vegetation": 0.0772, "sky": 0.1891,
    "car": 0.0396, "truck": 0.0103, "person": 0.0055, "pole": 0.0076, "traffic_sign": 0.0014,
    "bicycle": 0.00097, "bus_lane": 0.0094,
}  # fmt: skip
GENERATOR_VERSION = 1  # bump when the scenes change (invalidates class-index caches)
DEFAULT_SIZE: tuple[int, int] = (96, 128)
DEFAULT_NUM_IMAGES: dict[str, int] = {"train": 400, "val": 100, "test": 100}

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, TRUCK, PERSON, POLE, SIGN, BICYCLE, BUS_LANE = range(12)
IGNORE = 255

# Per-class texture strength (std of a per-pixel grey-level field); index 255 = ignore clutter.
_TEXTURE = np.zeros(256, np.float32)
_TEXTURE[[ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, TRUCK, PERSON, POLE, SIGN, BICYCLE, BUS_LANE]] = (
    9, 10, 10, 28, 3, 6, 6, 8, 6, 4, 6, 9,
)
_TEXTURE[IGNORE] = 30
_VEHICLE_COLOURS = np.array(
    [[170, 30, 30], [30, 50, 150], [220, 220, 215], [30, 30, 32], [150, 150, 155], [200, 170, 40], [40, 110, 60]],
    np.float32,
)


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _axes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The row coordinates as a column [H,1] and the column coordinates as a row [1,W].

    A term that depends on y only (or x only) is computed on these and broadcast: every
    pixel gets the same float value as from the full [H,W] grid, at a fraction of the work
    (the generated pixels are pinned by tests/test_synthetic.py).
    """
    yy, xx = _grid(h, w)
    return yy[:, :1], xx[:1, :]


class _Canvas:
    """Label map and flat colour layer painted back to front."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.full((h, w), SKY, np.uint8)
        self.colour = np.zeros((h, w, 3), np.float32)

    def box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice]:
        h, w = self.h, self.w  # plain-Python clipping: the same ints as np.clip(np.floor(.)), ~10x cheaper
        ys = slice(min(max(math.floor(y0), 0), h), min(max(math.ceil(y1), 0), h))
        xs = slice(min(max(math.floor(x0), 0), w), min(max(math.ceil(x1), 0), w))
        return ys, xs

    def rect(self, y0: float, y1: float, x0: float, x1: float, cls: int | None, colour) -> None:
        ys, xs = self.box(y0, y1, x0, x1)
        if cls is not None:
            self.label[ys, xs] = cls
        self.colour[ys, xs] = colour

    def shape(self, ys: slice, xs: slice, mask: np.ndarray, cls: int | None, colour) -> None:
        if cls is not None:
            self.label[ys, xs][mask] = cls
        self.colour[ys, xs][mask] = colour

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, cls: int | None, colour, ring: float = 0.0) -> None:
        ys, xs = self.box(cy - ry - 1, cy + ry + 1, cx - rx - 1, cx + rx + 1)
        yy, xx = _grid(self.h, self.w)
        d = np.sqrt(((yy[ys, xs] - cy) / max(ry, 0.5)) ** 2 + ((xx[ys, xs] - cx) / max(rx, 0.5)) ** 2)
        mask = np.abs(d - 1.0) * max(ry, rx) <= ring if ring > 0 else d <= 1.0
        self.shape(ys, xs, mask, cls, colour)


def _scene(rng: np.random.Generator, h: int, w: int) -> _Canvas:
    """Draw one street scene's label map and flat colours (geometry stream).

    The parts are drawn in a fixed order, and each takes its random draws in a fixed order:
    together they make the pixels the tests pin by checksum (tests/test_synthetic.py)."""
    cv = _Canvas(h, w)
    yc, xr_ = _axes(h, w)  # y as a column [H,1], x as a row [1,W]: terms of one axis broadcast
    horizon = h * rng.uniform(0.36, 0.5)
    _sky(cv, rng, yc, horizon)
    _skyline(cv, rng, yc, xr_, horizon)
    road = _Road.draw(cv, rng, yc, xr_, horizon)
    _bus_lane(cv, rng, road, yc, xr_, horizon)
    _markings(cv, rng, road, yc, xr_, horizon)
    _objects(cv, rng, road, horizon)
    _clutter(cv, rng, yc, xr_, horizon)
    return cv


def _sky(cv: _Canvas, rng: np.random.Generator, yc: np.ndarray, horizon: float) -> None:
    """A vertical gradient."""
    sky_top, sky_low = rng.uniform([60, 110, 170], [110, 150, 230]), rng.uniform([150, 180, 200], [200, 215, 240])
    a = np.clip(yc / max(horizon, 1.0), 0, 1)[..., None]
    cv.colour[:] = sky_top * (1 - a) + sky_low * a


def _skyline(cv: _Canvas, rng: np.random.Generator, yc: np.ndarray, xr_: np.ndarray, horizon: float) -> None:
    """Segments of building (with windows) or trees, per-column tops."""
    h, w = cv.label.shape
    x = 0.0
    windows = (yc % rng.integers(4, 7) < 2) & (xr_ % rng.integers(4, 7) < 2)
    while x < w:
        seg = w * rng.uniform(0.08, 0.25)
        xs = slice(int(x), int(min(w, x + seg)))
        nx = xs.stop - xs.start
        top = horizon - h * rng.uniform(0.08, 0.42)
        if rng.random() < 0.7:
            m = np.broadcast_to((yc >= top) & (yc < horizon + 1), (h, nx))
            base = rng.uniform([90, 80, 70], [180, 165, 150])
            cv.shape(slice(None), xs, m, BUILDING, base)
            win = m & windows[:, xs] & (yc > top + 2)
            cv.shape(slice(None), xs, win, None, base * 0.55 + np.array([0, 10, 30], np.float32))
        else:
            bump = 3.0 * np.sin(xr_[:, xs] * rng.uniform(0.4, 0.9) + rng.uniform(0, 6)) * (h / 96)
            m = (yc >= top + bump) & (yc < horizon + 1)
            cv.shape(slice(None), xs, m, VEGETATION, rng.uniform([40, 80, 20], [90, 140, 60]))
        x += seg


class _Road:
    """The perspective road: two edges meeting at the vanishing point ``vx`` (``xl``/``xr``:
    the edges at the bottom row), ``t`` 0 at the horizon to 1 at the bottom ([H,1])."""

    def __init__(self, vx: float, xl: float, xr: float, t: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
        self.vx, self.xl, self.xr, self.t, self.mask, self.colour = vx, xl, xr, t, mask, colour
        self.left, self.right = vx + (xl - vx) * t, vx + (xr - vx) * t

    @classmethod
    def draw(cls, cv: _Canvas, rng: np.random.Generator, yc: np.ndarray, xr_: np.ndarray, horizon: float) -> _Road:
        """Paint the ground: the road, and tiled sidewalk outside it."""
        h, w = cv.label.shape
        vx = w * rng.uniform(0.4, 0.6)
        xl, xr = w * rng.uniform(-0.45, 0.05), w * rng.uniform(0.95, 1.45)
        t = np.clip((yc - horizon) / (h - horizon), 0, 1)
        left, right = vx + (xl - vx) * t, vx + (xr - vx) * t
        ground = yc >= horizon
        road = ground & (xr_ >= left) & (xr_ <= right)
        road_col = rng.uniform(85, 125) + rng.uniform(-6, 6, 3)
        cv.shape(slice(None), slice(None), ground & ~road, SIDEWALK, rng.uniform([140, 130, 120], [190, 180, 170]))
        tiles = ground & ~road & ((yc % 5 < 1) | ((xr_ - vx) % 7 < 1))
        cv.colour[tiles] *= 0.85
        cv.shape(slice(None), slice(None), road, ROAD, road_col)
        return cls(vx, xl, xr, t, road, road_col)

    def edges_at(self, tb: float) -> tuple[float, float]:
        return self.vx + (self.xl - self.vx) * tb, self.vx + (self.xr - self.vx) * tb


def _bus_lane(cv: _Canvas, rng: np.random.Generator, road: _Road, yc: np.ndarray, xr_: np.ndarray, horizon: float) -> None:
    """The rare look-alike of road: a bus lane with a faint red tint along one edge."""
    h = cv.label.shape[0]
    if rng.random() < 0.28:
        frac, y0 = rng.uniform(0.12, 0.2), horizon + (h - horizon) * rng.uniform(0.05, 0.3)
        span = road.right - road.left
        if rng.random() < 0.5:
            lane = road.mask & (xr_ <= road.left + frac * span) & (yc >= y0)
        else:
            lane = road.mask & (xr_ >= road.right - frac * span) & (yc >= y0)
        cv.shape(slice(None), slice(None), lane, BUS_LANE, road.colour + np.array([14, -3, -6], np.float32))


def _markings(cv: _Canvas, rng: np.random.Generator, road: _Road, yc: np.ndarray, xr_: np.ndarray, horizon: float) -> None:
    """Lane markings (road colour, still labelled road): a dashed centre line."""
    w = cv.label.shape[1]
    centre = road.vx + (w * rng.uniform(0.4, 0.6) - road.vx) * road.t
    dash = road.mask & (np.abs(xr_ - centre) <= 0.4 + 1.2 * road.t) & ((yc - horizon) % 8 < 4)
    cv.shape(slice(None), slice(None), dash & (cv.label == ROAD), None, np.full(3, 225.0, np.float32))


def _objects(cv: _Canvas, rng: np.random.Generator, road: _Road, horizon: float) -> None:
    """Cars, a truck, people, poles and a bicycle, painted from far (small bottom y) to near."""
    h = cv.label.shape[0]
    at = lambda lo, hi: horizon + (h - horizon) * rng.uniform(lo, hi)  # noqa: E731 - a bottom y
    objects: list[tuple[float, int, float]] = []  # (bottom y, kind, x anchor)
    for _ in range(min(rng.poisson(1.6), 4)):
        objects.append((at(0.15, 0.95), CAR, rng.uniform(0.1, 0.9)))
    if rng.random() < 0.15:
        objects.append((at(0.2, 0.9), TRUCK, rng.uniform(0.1, 0.9)))
    for _ in range(min(rng.poisson(1.3), 4)):
        objects.append((at(0.1, 0.95), PERSON, rng.uniform(0, 1)))
    for _ in range(min(rng.poisson(1.4), 3)):
        objects.append((at(0.1, 0.9), POLE, rng.uniform(0, 1)))
    if rng.random() < 0.22:
        objects.append((at(0.2, 0.95), BICYCLE, rng.uniform(0, 1)))
    for yb, kind, u in sorted(objects):
        tb = (yb - horizon) / (h - horizon)
        lx, rx = road.edges_at(tb)
        if kind in (CAR, TRUCK):
            _vehicle(cv, rng, yb, lx + u * (rx - lx), tb, kind)
        elif kind in (PERSON, BICYCLE):
            side = lx - (rx - lx) * 0.1 * u if u < 0.5 else rx + (rx - lx) * 0.1 * (u - 0.5)
            cx = side if rng.random() < 0.8 else lx + u * (rx - lx)  # mostly on the sidewalk
            (_person if kind == PERSON else _bicycle)(cv, rng, yb, cx, tb)
        else:
            _pole(cv, rng, yb, (lx - 2 - 6 * tb) if u < 0.5 else (rx + 2 + 6 * tb), tb)


def _clutter(cv: _Canvas, rng: np.random.Generator, yc: np.ndarray, xr_: np.ndarray, horizon: float) -> None:
    """Ignore: clutter blobs and an ego-vehicle hood band."""
    h, w = cv.label.shape
    if rng.random() < 0.3:
        cy, cx = rng.uniform(horizon, h), rng.uniform(0, w)
        cv.ellipse(cy, cx, h * rng.uniform(0.03, 0.07), w * rng.uniform(0.03, 0.07), IGNORE, rng.uniform(0, 255, 3))
    if rng.random() < 0.5:
        band = h * rng.uniform(0.04, 0.08)
        hood = np.broadcast_to(yc >= h - band - 2.0 * np.cos((xr_ / w - 0.5) * np.pi), (h, w))
        cv.shape(slice(None), slice(None), hood, IGNORE, rng.uniform(20, 60, 3))


def _vehicle(cv: _Canvas, rng: np.random.Generator, yb: float, cx: float, tb: float, kind: int) -> None:
    width = cv.w * 0.32 * tb * rng.uniform(0.85, 1.15) * (1.3 if kind == TRUCK else 1.0)
    height = width * (0.85 if kind == TRUCK else 0.55)
    colour = _VEHICLE_COLOURS[rng.integers(len(_VEHICLE_COLOURS))] + rng.uniform(-15, 15, 3)
    x0, x1, y0 = cx - width / 2, cx + width / 2, yb - height
    if kind == TRUCK:  # cab (lower, one side) + a tall cargo box
        cab = 0.3 * width
        cv.rect(yb - 0.7 * height, yb, x0, x0 + cab, kind, colour)
        cv.rect(y0, yb, x0 + cab, x1, kind, colour * 0.92)
        cv.rect(yb - 0.6 * height, yb - 0.4 * height, x0 + 0.1 * cab, x0 + 0.8 * cab, kind, (40, 50, 70))
    else:  # body + a narrower cabin with windows
        cv.rect(yb - 0.6 * height, yb, x0, x1, kind, colour)
        cv.rect(y0, yb - 0.55 * height, x0 + 0.18 * width, x1 - 0.18 * width, kind, colour)
        cv.rect(y0 + 0.1 * height, yb - 0.6 * height, x0 + 0.24 * width, x1 - 0.24 * width, kind, (40, 50, 70))
    r = max(0.8, 0.11 * width)
    for wx in (x0 + 0.2 * width, x1 - 0.2 * width):
        cv.ellipse(yb - r * 0.6, wx, r, r, kind, (20, 20, 20))


def _person(cv: _Canvas, rng: np.random.Generator, yb: float, cx: float, tb: float) -> None:
    height = cv.h * 0.36 * tb * rng.uniform(0.85, 1.15)
    width = max(1.0, 0.26 * height)
    shirt = rng.uniform(20, 230, 3)
    legs = rng.uniform(20, 90, 3)
    cv.rect(yb - 0.48 * height, yb, cx - width * 0.4, cx - width * 0.05, PERSON, legs)
    cv.rect(yb - 0.48 * height, yb, cx + width * 0.05, cx + width * 0.4, PERSON, legs)
    cv.rect(yb - 0.85 * height, yb - 0.45 * height, cx - width / 2, cx + width / 2, PERSON, shirt)
    cv.ellipse(yb - 0.92 * height, cx, 0.08 * height, 0.07 * height + 0.3, PERSON, rng.uniform([150, 100, 70], [240, 200, 170]))


def _bicycle(cv: _Canvas, rng: np.random.Generator, yb: float, cx: float, tb: float) -> None:
    r = max(2.0, cv.h * 0.065 * tb * rng.uniform(0.85, 1.15))
    colour = _VEHICLE_COLOURS[rng.integers(len(_VEHICLE_COLOURS))]
    cy = yb - r
    for wx in (cx - 1.3 * r, cx + 1.3 * r):
        cv.ellipse(cy, wx, r, r, BICYCLE, (25, 25, 25), ring=0.9)
    cv.rect(cy - 0.9 * r, cy - 0.9 * r + 1, cx - 1.3 * r, cx + 1.0 * r, BICYCLE, colour)  # top tube
    cv.rect(cy - 1.3 * r, cy, cx - 0.1 * r, cx - 0.1 * r + 1, BICYCLE, colour)  # seat tube


def _pole(cv: _Canvas, rng: np.random.Generator, yb: float, x: float, tb: float) -> None:
    thick = 1.0 + (tb > 0.6)
    height = cv.h * rng.uniform(0.5, 0.8) * (0.35 + tb)
    grey = rng.uniform(90, 150) + rng.uniform(-5, 5, 3)
    cv.rect(yb - height, yb, x, x + thick, POLE, grey)
    if rng.random() < 0.6:
        s = max(3.0, cv.h * 0.08 * (0.3 + tb))
        colour = ((200, 30, 30), (30, 60, 170), (230, 200, 40))[rng.integers(3)]
        if rng.random() < 0.5:
            cv.rect(yb - height - s / 2, yb - height + s / 2, x + 0.5 - s / 2, x + 0.5 + s / 2, SIGN, colour)
        else:
            cv.ellipse(yb - height, x + 0.5, s / 2, s / 2, SIGN, colour)


def _render(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Texture, illumination, shading and sensor noise (texture stream) -> uint8 [H,W,3]."""
    h, w = cv.h, cv.w
    yc, xr_ = _axes(h, w)
    texture = rng.standard_normal((h, w), dtype=np.float32) * _TEXTURE[cv.label]
    shade = 1.0 + 0.12 * np.sin(xr_ * rng.uniform(0.02, 0.08) + rng.uniform(0, 6)) * np.cos(
        yc * rng.uniform(0.02, 0.08) + rng.uniform(0, 6)
    )
    # in place where the values allow it (the same float operations, in the same order, as
    # img = colour * (u * shade) + texture; img += offset + 5 * noise; clip; cast)
    shade *= rng.uniform(0.75, 1.2)
    img = cv.colour * shade[..., None]
    img += texture[..., None]
    offset = rng.uniform(-10, 10, 3).astype(np.float32)
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    noise *= 5.0
    noise += offset
    img += noise
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, (int, np.integer)) for s in hw) or min(hw) < 16:
        raise ValueError(f"image_size must be an int or (H, W) of ints >= 16, got {size!r}")
    return int(hw[0]), int(hw[1])


class SyntheticStreets(SegmentationDataset):
    """Synthetic street scenes (12 classes, long-tailed); see the module docstring."""

    def __init__(
        self,
        split: str = "train",
        *,
        num_images: int | None = None,
        image_size: int | tuple[int, int] = DEFAULT_SIZE,
        seed: int = 0,
        crop_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        augment: bool | None = None,
    ) -> None:
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string, got {split!r}")
        n = DEFAULT_NUM_IMAGES.get(split, 100) if num_images is None else num_images
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        super().__init__("synthetic", split, SYNTHETIC_CLASSES, make_transform(split, augment, crop_size, scale_range))
        self.num_images = int(n)
        self.image_size = _pair(image_size)
        self.seed = int(seed)
        self._split_code = zlib.crc32(split.encode())

    def __len__(self) -> int:
        return self.num_images

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._split_code, i, stream])

    def _canvas(self, i: int) -> _Canvas:
        i = self._check_index(int(i))
        return _scene(self._rng(i, 0), *self.image_size)

    def load_image(self, i: int) -> np.ndarray:
        return _render(self._canvas(i), self._rng(self._check_index(int(i)), 1))

    def load_mask(self, i: int) -> np.ndarray:
        return self._canvas(i).label

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed (image uint8 [H,W,3], mask uint8 [H,W]) of image ``i``, generated once."""
        cv = self._canvas(i)
        return _render(cv, self._rng(self._check_index(int(i)), 1)), cv.label

    def __getitem__(self, item: int | tuple[int, int]):
        i, focus = self._parse_item(item)  # an index or (index, focus_class), see the base class
        return self._transform(*self.sample(i), focus)

    def fingerprint(self) -> str:
        payload = {
            "name": self.name,
            "split": self.split,
            "num_images": self.num_images,
            "image_size": list(self.image_size),
            "seed": self.seed,
            "version": GENERATOR_VERSION,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def measure_frequencies(dataset: SyntheticStreets) -> tuple[np.ndarray, float]:
    """(share of each class among the labelled pixels [K] (sums to 1), share of ignore among all pixels)."""
    counts = np.zeros(256, np.int64)
    for i in range(len(dataset)):
        counts += np.bincount(dataset.load_mask(i).ravel(), minlength=256)
    labelled = counts[: dataset.num_classes]
    return labelled / labelled.sum(), float(counts[IGNORE] / counts.sum())
