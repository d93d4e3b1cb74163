"""ClassIndex (counts, Parquet cache) and TiltedBatchSampler (class draws, FIFO, seeds)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import DataLoader

from tce_ray.data.sampling import ClassIndex, TiltedBatchSampler, count_classes

torch.set_num_threads(1)


class FakeMasks(torch.utils.data.Dataset):
    """The data-set surface the index uses; ``__getitem__`` returns the image index."""

    def __init__(self, masks: list[np.ndarray], num_classes: int, fp: str = "fake-v1", names=None) -> None:
        self.masks = masks
        self.num_classes = num_classes
        self.class_names = tuple(names or (f"c{c}" for c in range(num_classes)))
        self.ignore_index = 255
        self.fp = fp
        self.calls: list[int] = []  # list.append is atomic: safe from the index's threads

    def __len__(self) -> int:
        return len(self.masks)

    def load_mask(self, i: int) -> np.ndarray:
        self.calls.append(i)
        return self.masks[i]

    def fingerprint(self) -> str:
        return self.fp

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


class FixedWeights:
    def __init__(self, weights) -> None:
        self.weights = np.asarray(weights, dtype=float)


def random_masks(n: int, k: int, seed: int = 0, dtype=np.uint8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(4, 20, size=2)
        present = rng.choice(k, size=rng.integers(1, k + 1), replace=False)
        m = rng.choice(present, size=(h, w)).astype(dtype)
        m[rng.random((h, w)) < 0.2] = 255
        out.append(m)
    return out


def direct_counts(masks: list[np.ndarray], k: int) -> np.ndarray:
    return np.array([[int((m == c).sum()) for c in range(k)] for m in masks], dtype=np.int64)


# ---------------------------------------------------------------- ClassIndex: counting


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32])
@pytest.mark.parametrize("threads", [1, 3])
def test_counts_match_direct_numpy(dtype, threads):
    masks = random_masks(25, 6, seed=1, dtype=dtype)
    masks.append(np.full((5, 5), 255, dtype=dtype))  # nothing labelled
    index = ClassIndex.from_dataset(FakeMasks(masks, 6), num_threads=threads)
    assert index.counts.dtype == np.int64 and index.counts.shape == (26, 6)
    np.testing.assert_array_equal(index.counts, direct_counts(masks, 6))
    assert index.counts[-1].sum() == 0
    assert (index.num_images, index.num_classes) == (26, 6)
    assert index.class_names == tuple(f"c{c}" for c in range(6))


def test_ignore_never_counts_and_bad_labels_name_the_image():
    np.testing.assert_array_equal(count_classes(np.array([[0, 255], [2, 2]]), 3), [1, 0, 2])
    masks = [np.zeros((3, 3), np.uint8), np.ones((3, 3), np.uint8), np.array([[0, 3], [1, 255]], np.uint8)]
    with pytest.raises(ValueError, match=r"image 2: label values \[3\]"):
        ClassIndex.from_dataset(FakeMasks(masks, 3))
    with pytest.raises(ValueError, match=r"image 0: label values \[-1\]"):
        ClassIndex.from_dataset(FakeMasks([np.array([[0, -1]])], 3))
    with pytest.raises(ValueError, match=r"\[254, 300\]"):
        count_classes(np.array([1, 254, 300, 255]), 3, image=7)
    with pytest.raises(TypeError, match="integers"):
        count_classes(np.zeros((2, 2), np.float32), 3)


def test_dataset_load_mask_error_propagates():
    class Broken(FakeMasks):
        def load_mask(self, i):
            raise FileNotFoundError(f"label map missing: img_{i}.png")

    with pytest.raises(FileNotFoundError, match="img_0.png"):
        ClassIndex.from_dataset(Broken([np.zeros((2, 2), np.uint8)], 2), num_threads=2)


def test_queries_by_hand():
    index = ClassIndex(np.array([[3, 0, 1, 0], [0, 2, 1, 0], [5, 0, 0, 0]]), ["a", "b", "c", "d"])
    np.testing.assert_array_equal(index.images_with(0), [0, 2])
    np.testing.assert_array_equal(index.images_with(0, min_pixels=4), [2])
    np.testing.assert_array_equal(index.images_with(3), np.array([], np.int64))
    assert index.images_with(1).dtype == np.int64
    np.testing.assert_array_equal(index.drawable(), [0, 1, 2])
    np.testing.assert_array_equal(index.drawable(min_pixels=2), [0, 1])
    np.testing.assert_allclose(index.pixel_frequencies(), np.array([8, 2, 2, 0]) / 12)
    for bad in (-1, 4, 1.0, True, "0"):
        with pytest.raises(ValueError, match="not a class id"):
            index.images_with(bad)
    with pytest.raises(ValueError, match="min_pixels"):
        index.drawable(min_pixels=0)
    with pytest.raises(ValueError, match="no labelled pixel"):
        ClassIndex(np.zeros((2, 3), np.int64)).pixel_frequencies()
    with pytest.raises(ValueError, match="2 class names for 4"):
        ClassIndex(np.zeros((1, 4), np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="non-negative"):
        ClassIndex(np.array([[1, -1]]))


# ---------------------------------------------------------------- ClassIndex: Parquet cache


def test_save_load_roundtrip_with_metadata(tmp_path):
    index = ClassIndex.from_dataset(FakeMasks(random_masks(8, 4), 4, fp="abc"))
    index.save(tmp_path / "x.parquet")
    back = ClassIndex.load(tmp_path / "x.parquet")
    np.testing.assert_array_equal(back.counts, index.counts)
    assert (back.class_names, back.fingerprint) == (("c0", "c1", "c2", "c3"), "abc")
    meta = pq.read_schema(tmp_path / "x.parquet").metadata[b"tce_ray.class_index"].decode()
    assert '"num_classes": 4' in meta and '"fingerprint": "abc"' in meta and '"c3"' in meta
    with pytest.raises(FileNotFoundError, match="ClassIndex.build"):
        ClassIndex.load(tmp_path / "missing.parquet")


def test_cache_is_reused(tmp_path):
    masks = random_masks(12, 5)
    first = FakeMasks(masks, 5, fp="fp1")
    a = ClassIndex.build(first, cache_dir=tmp_path)
    assert sorted(first.calls) == list(range(12))
    assert (tmp_path / "class_index-fp1.parquet").is_file()
    second = FakeMasks(masks, 5, fp="fp1")
    b = ClassIndex.build(second, cache_dir=tmp_path)
    assert second.calls == []
    np.testing.assert_array_equal(a.counts, b.counts)
    assert [p.name for p in tmp_path.iterdir()] == ["class_index-fp1.parquet"]  # no temp files left


def test_cache_invalidated_by_new_fingerprint(tmp_path):
    ClassIndex.build(FakeMasks(random_masks(6, 3, seed=0), 3, fp="v1"), cache_dir=tmp_path)
    new_masks = random_masks(6, 3, seed=5)
    ds = FakeMasks(new_masks, 3, fp="v2")
    index = ClassIndex.build(ds, cache_dir=tmp_path)
    assert len(ds.calls) == 6
    np.testing.assert_array_equal(index.counts, direct_counts(new_masks, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_index-v1.parquet", "class_index-v2.parquet"]


@pytest.mark.parametrize("stale", ["classes", "names", "images", "garbage"])
def test_mismatched_or_corrupt_cache_is_rebuilt(tmp_path, stale):
    masks = random_masks(6, 4, seed=2)
    path = ClassIndex.cache_path(tmp_path, "same")
    if stale == "classes":
        ClassIndex(np.ones((6, 3), np.int64), fingerprint="same").save(path)
    elif stale == "names":
        ClassIndex(direct_counts(masks, 4), ["w", "x", "y", "z"], fingerprint="same").save(path)
    elif stale == "images":
        ClassIndex(direct_counts(masks[:5], 4), [f"c{c}" for c in range(4)], fingerprint="same").save(path)
    else:
        path.write_bytes(b"PAR1 not really parquet")
    ds = FakeMasks(masks, 4, fp="same")
    index = ClassIndex.build(ds, cache_dir=tmp_path)
    assert len(ds.calls) == 6
    np.testing.assert_array_equal(index.counts, direct_counts(masks, 4))
    np.testing.assert_array_equal(ClassIndex.load(path).counts, index.counts)  # replaced


def test_corrupt_file_load_errors_clearly(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable class index.*delete it"):
        ClassIndex.load(tmp_path / "bad.parquet")
    plain = tmp_path / "plain.parquet"
    pq.write_table(__import__("pyarrow").table({"a": [1, 2]}), plain)  # Parquet, but not ours
    with pytest.raises(ValueError, match="not a readable class index"):
        ClassIndex.load(plain)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "i.parquet"
    ClassIndex(np.ones((2, 2), np.int64)).save(path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        ClassIndex(np.zeros((3, 2), np.int64)).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["i.parquet"]
    assert ClassIndex.load(path).num_images == 2


def test_unsafe_fingerprint_is_hashed_into_cache_dir(tmp_path):
    path = ClassIndex.cache_path(tmp_path, "../evil name/x")
    assert path.parent == tmp_path and path.name.startswith("class_index-") and "/" not in path.name[12:]
    ds = FakeMasks(random_masks(3, 2), 2, fp="../evil name/x")
    ClassIndex.build(ds, cache_dir=tmp_path)
    assert ClassIndex.load(path).fingerprint == "../evil name/x"


# ---------------------------------------------------------------- TiltedBatchSampler


@pytest.fixture()
def index() -> ClassIndex:
    """40 images, 4 classes: |D_0| = 40, |D_1| = 20, |D_2| = 3, D_3 empty; class 1 has 1-3 px."""
    counts = np.zeros((40, 4), np.int64)
    counts[:, 0] = 100
    counts[::2, 1] = np.tile([1, 2, 3], 7)[:20]
    counts[[5, 17, 33], 2] = 7
    return ClassIndex(counts)


def draw(sampler: TiltedBatchSampler) -> list[tuple[int, list[int]]]:
    out = []
    for batch in sampler:
        out.append((sampler.pop_batch_class(), batch))
    return out


def test_class_frequencies_follow_weights_and_skip_empty_classes(index):
    weights = np.array([0.4, 0.3, 0.2, 0.1])  # class 3 has no image: never drawn, rest renormalised
    sampler = TiltedBatchSampler(index, FixedWeights(weights), batch_size=2, num_batches=4000, seed=3)
    classes = np.array([c for c, _ in draw(sampler)])
    observed = np.bincount(classes, minlength=4)
    assert observed[3] == 0 and observed.sum() == 4000
    expected = weights[:3] / weights[:3].sum()
    assert chisquare(observed[:3], expected * 4000).pvalue > 0.001
    np.testing.assert_allclose(sampler.last_weights, [4 / 9, 3 / 9, 2 / 9, 0])
    # a clearly wrong distribution is rejected by the same test (the check can fail)
    assert chisquare(observed[:3], np.array([1 / 3] * 3) * 4000).pvalue < 0.001


@pytest.mark.parametrize("min_pixels", [1, 2])
def test_every_image_contains_its_class(index, min_pixels):
    sampler = TiltedBatchSampler(index, FixedWeights([1, 1, 1, 1]), 4, 300, min_pixels=min_pixels)
    for c, batch in draw(sampler):
        assert len(batch) == 4
        assert (index.counts[batch, c] >= min_pixels).all()
        if c in (0, 1):  # |D_c| >= batch_size: no repeats
            assert len(set(batch)) == 4


def test_with_replacement_when_class_has_fewer_images(index):
    sampler = TiltedBatchSampler(index, FixedWeights([0, 0, 1, 0]), batch_size=4, num_batches=50)
    seen = set()
    for c, batch in draw(sampler):
        assert c == 2 and len(batch) == 4 and set(batch) <= {5, 17, 33}
        assert len(set(batch)) < 4  # 4 draws from 3 images must repeat one
        seen |= set(batch)
    assert seen == {5, 17, 33}


def test_without_replacement_when_class_has_exactly_batch_size(index):
    sampler = TiltedBatchSampler(index, FixedWeights([0, 0, 1, 0]), batch_size=3, num_batches=20)
    assert all(sorted(batch) == [5, 17, 33] for _, batch in draw(sampler))


def test_multiprocess_dataloader_fifo_matches_received_batches(index):
    weights = FixedWeights([0.1, 0.5, 0.4, 0.0])
    sampler = TiltedBatchSampler(index, weights, batch_size=4, num_batches=30, seed=11)
    reference = [c for c, _ in draw(TiltedBatchSampler(index, weights, 4, 30, seed=11))]
    loader = DataLoader(FakeMasks([np.zeros(1, np.uint8)] * 40, 4), batch_sampler=sampler, num_workers=2)
    assert len(loader) == 30
    popped = []
    for batch in loader:
        c = sampler.pop_batch_class()
        assert (index.counts[batch.numpy(), c] >= 1).all()
        popped.append(c)
    assert popped == reference and len(set(popped)) == 3
    with pytest.raises(RuntimeError, match="once per batch"):
        sampler.pop_batch_class()


def test_ranks_epochs_and_seeds(index):
    def stream(**kw):
        s = TiltedBatchSampler(index, FixedWeights([1, 1, 1, 0]), 4, 40, **kw)
        return draw(s)

    assert stream(seed=1, rank=0) == stream(seed=1, rank=0)
    assert stream(seed=1, rank=0) != stream(seed=1, rank=1)
    assert stream(seed=1) != stream(seed=2)
    s = TiltedBatchSampler(index, FixedWeights([1, 1, 1, 0]), 4, 40, seed=1)
    first = draw(s)
    s.set_epoch(1)
    second = draw(s)
    s.set_epoch(0)
    assert second != first and draw(s) == first


def test_weight_changes_between_batches_are_honoured(index):
    source = FixedWeights([1.0, 0.0, 0.0, 0.0])
    sampler = TiltedBatchSampler(index, source, 2, 40)
    it = iter(sampler)
    for _ in range(10):
        next(it)
        assert sampler.pop_batch_class() == 0
    source.weights = np.array([0.0, 1.0, 0.0, 0.0])
    for batch in it:
        assert sampler.pop_batch_class() == 1 and (index.counts[batch, 1] > 0).all()


def test_new_iteration_drops_undelivered_classes(index):
    sampler = TiltedBatchSampler(index, FixedWeights([1, 1, 1, 0]), 2, 10)
    it = iter(sampler)
    next(it), next(it)
    assert len(draw(sampler)) == 10  # draw() pops exactly once per batch; stale entries gone
    with pytest.raises(RuntimeError):
        sampler.pop_batch_class()


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1, 1, 1], r"shape \(4,\)"),
        ([1, np.nan, 1, 1], "finite and non-negative"),
        ([1, np.inf, 1, 1], "finite and non-negative"),
        ([1, -0.1, 1, 1], "finite and non-negative"),
        ([0, 0, 0, 0], "no mass on a drawable class"),
        ([0, 0, 0, 1], r"no mass on a drawable class .*drawable: \[0, 1, 2\]"),
    ],
)
def test_bad_weights(index, weights, match):
    sampler = TiltedBatchSampler(index, FixedWeights(weights), 2, 5)
    with pytest.raises(ValueError, match=match):
        next(iter(sampler))


def test_bad_arguments(index):
    ok = FixedWeights([1, 1, 1, 1])
    with pytest.raises(TypeError, match="weights attribute"):
        TiltedBatchSampler(index, object(), 2, 5)
    with pytest.raises(TypeError, match="ClassIndex"):
        TiltedBatchSampler(np.zeros((3, 3)), ok, 2, 5)
    for kw in ({"batch_size": 0}, {"num_batches": -1}, {"min_pixels": 0}, {"seed": -1}, {"rank": 1.5}):
        args = {"batch_size": 2, "num_batches": 5, **kw}
        with pytest.raises(ValueError, match=next(iter(kw))):
            TiltedBatchSampler(index, ok, **args)
    with pytest.raises(ValueError, match="lower min_pixels"):
        TiltedBatchSampler(index, ok, 2, 5, min_pixels=1000)
    with pytest.raises(RuntimeError, match="no yielded batch"):
        TiltedBatchSampler(index, ok, 2, 5).pop_batch_class()


@pytest.mark.skipif(importlib.util.find_spec("tce_ray.core.tilt") is None, reason="tce_ray.core.tilt not written yet")
def test_with_tilt_state(index):
    from tce_ray.core.tilt import TiltState

    state = TiltState(4, t=1.0, gamma=0.5, drawable=index.drawable())
    sampler = TiltedBatchSampler(index, state, 2, 300, seed=0)
    classes = []
    for batch in sampler:
        c = sampler.pop_batch_class()
        classes.append(c)
        state.update(c, 5.0 if c == 2 else 0.1)  # class 2 is "hard": it should take most draws
    counts = np.bincount(classes, minlength=4)
    assert counts[3] == 0 and counts[2] > counts[0] + counts[1]
