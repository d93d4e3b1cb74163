"""Sampling that delivers the drawn class: image_power, class-centred crops, static
rare-class sampling; and that the paper-exact settings draw what they always drew."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from tce_ray.data import SegmentationTransform, SyntheticStreets
from tce_ray.data.sampling import (
    ClassIndex,
    StaticClassWeights,
    TiltedBatchSampler,
    check_image_power,
    image_probabilities,
    rare_class_probabilities,
)

torch.set_num_threads(1)


class FixedWeights:
    def __init__(self, weights) -> None:
        self.weights = np.asarray(weights, dtype=float)


def _index(counts) -> ClassIndex:
    return ClassIndex(np.asarray(counts, dtype=np.int64))


# counts[m, c]; class 1 lives in images 0..4 with 1, 2, 5, 10, 20 pixels
COUNTS = [
    [50, 1, 0],
    [40, 2, 3],
    [30, 5, 0],
    [20, 10, 0],
    [10, 20, 7],
    [60, 0, 0],
]


# ---------------------------------------------------------------- image choice


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_image_choice_follows_pixel_counts_to_the_power(power):
    index = _index(COUNTS)
    sampler = TiltedBatchSampler(index, FixedWeights([0, 1, 0]), batch_size=4, num_batches=3000, seed=5,
                                 image_power=power)
    seen = np.bincount(np.concatenate([b for b in sampler]), minlength=6)
    assert seen[5] == 0  # image 5 holds no pixel of class 1
    n = np.array([1, 2, 5, 10, 20], dtype=float)
    expected = n**power / (n**power).sum() * seen[:5].sum()
    assert chisquare(seen[:5], expected).pvalue > 1e-3
    # and not uniform (the test can fail): uniform is rejected for every power tested
    assert chisquare(seen[:5], np.full(5, seen[:5].sum() / 5)).pvalue < 1e-6


def test_power_zero_is_uniform_over_the_class_images():
    index = _index(COUNTS)
    sampler = TiltedBatchSampler(index, FixedWeights([0, 1, 0]), batch_size=2, num_batches=3000, seed=1)
    seen = np.bincount(np.concatenate([b for b in sampler]), minlength=6)[:5]
    assert chisquare(seen, np.full(5, seen.sum() / 5)).pvalue > 1e-3


def test_image_probabilities_by_hand_and_in_log_space():
    np.testing.assert_allclose(image_probabilities([1, 3], 1.0), [0.25, 0.75])
    np.testing.assert_allclose(image_probabilities([4, 9], 0.5), [2 / 5, 3 / 5])
    np.testing.assert_allclose(image_probabilities([7, 1, 2], 0.0), [1 / 3] * 3)
    p = image_probabilities([1e6, 1e6 / 2], 2000.0)  # 2**2000 overflows a naive power
    assert np.isfinite(p).all() and p[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive counts"):
        image_probabilities([1, 0], 1.0)


def test_paper_exact_settings_draw_what_main_always_drew():
    """image_power=0, class_crop=False: the exact stream of the original sampler."""
    rng_masks = np.random.default_rng(0)
    counts = rng_masks.integers(0, 3, size=(40, 5)) * rng_masks.integers(1, 50, size=(40, 5))
    index = _index(counts)
    weights = [0.1, 0.4, 0.2, 0.2, 0.1]
    got = list(TiltedBatchSampler(index, FixedWeights(weights), 6, 200, seed=9, rank=2))
    # the original algorithm, written out
    rng = np.random.default_rng([9, 2, 0])
    members = [np.flatnonzero(counts[:, c] >= 1) for c in range(5)]
    p = np.array(weights) * np.array([m.size > 0 for m in members])
    p /= p.sum()
    want = []
    for _ in range(200):
        c = int(rng.choice(5, p=p))
        want.append(rng.choice(members[c], size=6, replace=members[c].size < 6).tolist())
    assert got == want


def test_class_crop_yields_pairs_and_keeps_the_class_queue():
    index = _index(COUNTS)
    sampler = TiltedBatchSampler(index, FixedWeights([1, 1, 1]), 3, 50, seed=2, class_crop=True, image_power=1.0)
    for batch in sampler:
        c = sampler.pop_batch_class()
        assert len(batch) == 3 and all(isinstance(i, int) and cls == c for i, cls in batch)
        assert all(COUNTS[i][c] > 0 for i, _ in batch)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_power": -1.0}, "image_power must be a finite number >= 0"),
        ({"image_power": float("nan")}, "image_power"),
        ({"image_power": float("inf")}, "image_power"),
        ({"image_power": "1"}, "image_power"),
        ({"image_power": True}, "image_power"),
        ({"class_crop": "yes"}, "class_crop must be true or false"),
        ({"class_crop": 1}, "class_crop"),
    ],
)
def test_bad_sampling_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TiltedBatchSampler(_index(COUNTS), FixedWeights([1, 1, 1]), 2, 5, **kwargs)


def test_check_image_power_accepts_ints():
    assert check_image_power(1) == 1.0 and check_image_power(np.float32(0.5)) == 0.5


# ---------------------------------------------------------------- static rare-class sampling


def test_rare_class_probabilities_by_hand():
    f = [0.5, 0.3, 0.2, 0.0]
    e = [math.exp(0.5 / 0.1), math.exp(0.7 / 0.1), math.exp(0.8 / 0.1)]
    want = [x / sum(e) for x in e] + [0.0]
    np.testing.assert_allclose(rare_class_probabilities(f, 0.1), want, rtol=1e-12)
    # explicit drawable set: class 1 left out
    e2 = [e[0], e[2]]
    np.testing.assert_allclose(rare_class_probabilities(f, 0.1, drawable=[0, 2]),
                               [e2[0] / sum(e2), 0, e2[1] / sum(e2), 0], rtol=1e-12)
    # T -> large: uniform over the drawable; tiny T: all mass on the rarest, no overflow
    np.testing.assert_allclose(rare_class_probabilities(f, 1e9), [1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(rare_class_probabilities(f, 1e-4), [0, 0, 1, 0], atol=1e-12)


@pytest.mark.parametrize(
    "freq, temperature, match",
    [
        ([0.5, 0.5], 0.0, "temperature must be a finite number > 0"),
        ([0.5, 0.5], -1.0, "temperature"),
        ([0.5, 0.5], float("inf"), "temperature"),
        ([0.5, 0.5], True, "temperature"),
        ([0.5, 1.5], 0.1, "shares in \\[0, 1\\]"),
        ([0.5, float("nan")], 0.1, "shares"),
        ([0.0, 0.0], 0.1, "no drawable class"),
    ],
)
def test_rare_class_probabilities_reject_bad_input(freq, temperature, match):
    with pytest.raises(ValueError, match=match):
        rare_class_probabilities(freq, temperature)


def test_static_weights_drive_the_sampler():
    index = _index(COUNTS)
    p = rare_class_probabilities(index.pixel_frequencies(), 0.2, index.drawable())
    source = StaticClassWeights(p)
    np.testing.assert_allclose(source.weights, p)
    sampler = TiltedBatchSampler(index, source, 2, 4000, seed=4)
    classes = []
    for _ in sampler:
        classes.append(sampler.pop_batch_class())
    seen = np.bincount(classes, minlength=3)
    assert chisquare(seen, p * len(classes)).pvalue > 1e-3
    with pytest.raises(ValueError, match="not all 0"):
        StaticClassWeights([0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        StaticClassWeights([1, -1])


# ---------------------------------------------------------------- class-centred crops


def _blob_mask(h=40, w=60, cls=3, y=(2, 5), x=(50, 55)):
    mask = np.zeros((h, w), np.uint8)
    mask[y[0]:y[1], x[0]:x[1]] = cls
    mask[20:, :] = 1
    return mask


def test_class_crop_always_contains_the_class():
    mask = _blob_mask()
    image = np.zeros((*mask.shape, 3), np.uint8)
    t = SegmentationTransform(augment=True, crop_size=16, scale_range=(0.75, 1.5))
    torch.manual_seed(0)
    plain = sum(bool((t(image, mask)[1] == 3).any()) for _ in range(200))
    focused = sum(bool((t(image, mask, focus_class=3)[1] == 3).any()) for _ in range(200))
    assert focused == 200 and t.crop_fallbacks == 0
    assert plain < 60  # the random crop mostly misses the 3x5 blob (the test can fail)


def test_class_crop_window_is_uniform_among_valid_positions():
    mask = np.zeros((30, 30), np.uint8)
    mask[12, 20] = 2  # one pixel: the valid tops are 12-9..12 = 3..12, lefts 20-9..20 = 11..20
    image = np.zeros((30, 30, 3), np.uint8)
    t = SegmentationTransform(augment=True, crop_size=10, scale_range=(1.0, 1.0), jitter=0.0)
    torch.manual_seed(1)
    tops, cols = [], []
    for _ in range(2000):
        _, out = t(image, mask, focus_class=2)
        ys, xs = np.nonzero(out.numpy() == 2)
        assert ys.size == 1
        tops.append(12 - int(ys[0]))  # the window's top row in the image
        cols.append(int(xs[0]))  # the pixel's column inside the (maybe flipped) crop
    tops = np.bincount(tops)
    assert tops.size == 13 and tops[:3].sum() == 0  # tops 3..12 only
    assert chisquare(tops[3:]).pvalue > 1e-3  # each of the 10 valid rows equally often
    # a flip maps column j to 9 - j; the pixel's column is uniform either way
    cols = np.bincount(cols, minlength=10)
    assert cols.size == 10 and chisquare(cols).pvalue > 1e-3


def test_class_crop_with_padding_and_whole_image_crop():
    mask = _blob_mask(h=12, w=14, y=(0, 2), x=(12, 14))
    image = np.zeros((12, 14, 3), np.uint8)
    t = SegmentationTransform(augment=True, crop_size=(20, 20), scale_range=(1.0, 1.0))
    torch.manual_seed(2)
    for _ in range(20):
        _, out = t(image, mask, focus_class=3)
        assert out.shape == (20, 20) and bool((out == 3).any())


def test_class_crop_falls_back_and_counts_when_the_class_vanishes():
    # which source pixels survive a nearest 20x20 -> 2x2 downscale?
    probe = tv_tensors.Mask(torch.arange(400, dtype=torch.int64).view(20, 20))
    kept = set(TF.resize(probe, [2, 2], interpolation=v2.InterpolationMode.NEAREST).flatten().tolist())
    lost = next(v for v in range(400) if v not in kept)
    mask = np.zeros((20, 20), np.uint8)
    mask.flat[lost] = 4
    image = np.zeros((20, 20, 3), np.uint8)
    t = SegmentationTransform(augment=True, crop_size=2, scale_range=(0.1, 0.1))
    torch.manual_seed(3)
    _, out = t(image, mask, focus_class=4)
    assert out.shape == (2, 2) and not bool((out == 4).any())
    assert t.crop_fallbacks == 1
    t(image, mask)  # no focus: nothing counted
    assert t.crop_fallbacks == 1


def test_bad_focus_class():
    t = SegmentationTransform(augment=True, crop_size=4)
    m = np.zeros((8, 8), np.uint8)
    im = np.zeros((8, 8, 3), np.uint8)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="focus_class"):
            t(im, m, focus_class=bad)
    ds = SyntheticStreets("train", num_images=4, image_size=(32, 48), crop_size=16)
    with pytest.raises(ValueError, match="not a class id"):
        ds[(0, 99)]
    with pytest.raises(ValueError, match="not a class id"):
        ds[(0, True)]
    with pytest.raises(TypeError, match="pair"):
        ds[(0, 1, 2)]
    with pytest.raises(IndexError):
        ds[(10, 1)]


def test_eval_transform_ignores_focus():
    ds = SyntheticStreets("val", num_images=2, image_size=(32, 48))
    a, b = ds[1], ds[(1, 2)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------- plain ints: unchanged


def _old_augment(t: SegmentationTransform, image: np.ndarray, mask: np.ndarray):
    """The training transform as main has always had it, written out (the reference)."""
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
    h, w = img.shape[-2:]
    ch, cw = t.crop_size
    lo, hi = t.scale_range
    s = lo + (hi - lo) * float(torch.rand(()))
    if s != 1.0:
        size = [max(1, round(h * s)), max(1, round(w * s))]
        img = TF.resize(img, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        msk = TF.resize(msk, size, interpolation=v2.InterpolationMode.NEAREST)
    h, w = img.shape[-2:]
    if h < ch or w < cw:
        pad = [0, 0, max(0, cw - w), max(0, ch - h)]
        img = TF.pad(img, pad, fill=0)
        msk = TF.pad(msk, pad, fill=255)
        h, w = img.shape[-2:]
    top = int(torch.randint(0, h - ch + 1, ()))
    left = int(torch.randint(0, w - cw + 1, ()))
    img, msk = TF.crop(img, top, left, ch, cw), TF.crop(msk, top, left, ch, cw)
    if bool(torch.rand(()) < 0.5):
        img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
    img = t.jitter(img)
    out = TF.normalize(TF.to_dtype(img, torch.float32, scale=True), mean=t.mean, std=t.std)
    return out.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor).long()


def test_plain_indices_keep_the_old_random_stream():
    ds = SyntheticStreets("train", num_images=6, image_size=(48, 64), crop_size=32, scale_range=(0.75, 1.5))
    torch.manual_seed(123)
    got = [ds[i] for i in range(6)]
    torch.manual_seed(123)
    want = [_old_augment(ds.transform, *ds.sample(i)) for i in range(6)]
    for (gi, gm), (wi, wm) in zip(got, want):
        assert torch.equal(gm, wm) and torch.equal(gi, wi)


# ---------------------------------------------------------------- through a DataLoader


def test_multiprocess_loader_delivers_class_centred_crops():
    ds = SyntheticStreets("train", num_images=24, image_size=(48, 64), crop_size=16, scale_range=(0.75, 1.5))
    index = ClassIndex.from_dataset(ds)
    sampler = TiltedBatchSampler(index, FixedWeights(np.ones(ds.num_classes)), 4, 24, seed=3,
                                 image_power=1.0, class_crop=True)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, generator=torch.Generator().manual_seed(0))
    n = 0
    for _, masks in loader:
        c = sampler.pop_batch_class()
        has = (masks == c).flatten(1).any(1)
        assert has.all(), f"class {c} missing from {int((~has).sum())} crops"  # the synthetic classes survive 0.75x
        n += 1
    assert n == 24
