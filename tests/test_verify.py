"""Every file of both splits checked before training: truncated JPEG, corrupt PNG, bad label values; cached."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tce_ray.data import build_dataset
from tce_ray.data.synthetic import SyntheticStreets
from tce_ray.data.verify import DataCheckError, verified_path, verify_dataset, verify_splits

CLASSES = ["a", "b", "c"]
RNG = np.random.default_rng(0)


def _image(path: Path, h: int = 72, w: int = 96, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # smooth content so that a JPEG is several kB and a cut really loses scan data
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 7) % 256, (yy * 5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    arr = np.clip(arr.astype(int) + RNG.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 95} if path.suffix == ".jpg" else {}))


def _label(path: Path, values=(0, 1, 2, 255), h: int = 72, w: int = 96) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.choice(np.asarray(values, np.uint8), (h, w)), mode="L").save(path)


def make_tree(root: Path, n: int = 4) -> None:
    """images/{split}/img{i}.jpg|png and labels/{split}/img{i}.png for train and val."""
    for split in ("train", "val"):
        for i in range(n):
            ext = ".jpg" if i % 2 == 0 else ".png"
            _image(root / "images" / split / f"img{i}{ext}")
            _label(root / "labels" / split / f"img{i}.png")


def build(root: Path, split: str, **kw):
    return build_dataset("folder", split, root, class_names=CLASSES, **kw)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def corrupt_png(path: Path) -> None:
    """Flip bytes inside the IDAT chunk: the header (size, mode) stays readable."""
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") + 8
    for k in range(at, min(at + 40, len(data) - 16)):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def test_good_tree_passes_and_is_recorded(tmp_path):
    make_tree(tmp_path / "d")
    cache = tmp_path / "cache"
    results = verify_splits([build(tmp_path / "d", "train"), build(tmp_path / "d", "val")], cache_dir=cache, progress=None)
    assert [r.status for r in results] == ["checked", "checked"]
    assert [(r.split, r.num_images) for r in results] == [("train", 4), ("val", 4)]
    rec = json.loads(results[0].cache_file.read_text())
    assert rec["fingerprint"] == build(tmp_path / "d", "train").fingerprint() and rec["num_images"] == 4
    assert not list(cache.glob(".*.tmp"))  # written atomically, no leftovers
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize(
    "damage,file,words",
    [
        ("truncated_jpeg", "images/{split}/img2.jpg", ["img2.jpg", "truncated image"]),
        ("corrupt_png", "images/{split}/img1.png", ["img1.png", "corrupt image"]),
        ("corrupt_label_png", "labels/{split}/img3.png", ["img3.png", "corrupt label map"]),
        ("truncated_label", "labels/{split}/img0.png", ["img0.png", "label map"]),
        ("bad_label_value", "labels/{split}/img1.png", ["img1.png", "[37]", "neither one of the 3 classes"]),
        ("not_an_image", "images/{split}/img2.jpg", ["img2.jpg"]),
    ],
)
def test_each_damage_is_named_in_each_split(tmp_path, split, damage, file, words):
    root = tmp_path / "d"
    make_tree(root)
    path = root / file.format(split=split)
    if damage.startswith("truncated"):
        truncate(path)
    elif damage.startswith("corrupt"):
        corrupt_png(path)
    elif damage == "bad_label_value":
        _label(path, values=(0, 1, 37))
    elif damage == "not_an_image":
        ds = build(root, split)  # built while the file was fine (headers are read at construction)
        path.write_bytes(b"GIF89a" + b"\x00" * 20)
    if damage != "not_an_image":
        ds = build(root, split)  # the header-only checks of construction pass
    other = "val" if split == "train" else "train"
    assert verify_dataset(build(root, other), progress=None).status == "checked"
    with pytest.raises(DataCheckError) as info:
        verify_dataset(ds, cache_dir=tmp_path / "cache", progress=None)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"folder/{split}: {path}: ")
    for w in words:
        assert w in msg, (w, msg)
    assert "data.verify: false" in msg
    assert [b.path for b in info.value.bad] == [str(path)]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())  # failures not recorded


def test_several_bad_files_are_all_listed(tmp_path):
    root = tmp_path / "d"
    make_tree(root, n=6)
    truncate(root / "images/train/img0.jpg")
    _label(root / "labels/train/img3.png", values=(9,))
    corrupt_png(root / "images/train/img5.png")
    with pytest.raises(DataCheckError) as info:
        verify_dataset(build(root, "train"), progress=None, num_threads=2)
    assert [Path(b.path).name for b in info.value.bad] == ["img0.jpg", "img3.png", "img5.png"]
    assert "and 2 more bad file(s) in folder/train: img3.png, img5.png" in str(info.value)
    with pytest.raises(DataCheckError) as info:
        verify_dataset(build(root, "train"), progress=None, num_threads=1, max_problems=1)
    assert len(info.value.bad) == 1


def _count_decodes(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = Image.Image.load

    def load(self, *a, **kw):
        if getattr(self, "filename", None):
            opened.append(self.filename)
        return real(self, *a, **kw)

    monkeypatch.setattr(Image.Image, "load", load)
    from PIL import ImageFile as IF

    real_if = IF.ImageFile.load

    def load_if(self, *a, **kw):
        opened.append(self.filename)
        return real_if(self, *a, **kw)

    monkeypatch.setattr(IF.ImageFile, "load", load_if)
    return opened


def test_cache_second_call_decodes_nothing_and_a_new_fingerprint_checks_again(tmp_path, monkeypatch):
    root = tmp_path / "d"
    make_tree(root)
    cache = tmp_path / "cache"
    decoded = _count_decodes(monkeypatch)
    first = verify_dataset(build(root, "train"), cache_dir=cache, progress=None)
    assert first.status == "checked" and len(decoded) >= 8  # 4 images + 4 label maps
    decoded.clear()
    second = verify_dataset(build(root, "train"), cache_dir=cache, progress=None)
    assert second.status == "cached" and decoded == [] and second.cache_file == first.cache_file
    # another split, downscale or class list is another fingerprint: checked on its own
    assert verify_dataset(build(root, "train", downscale=2), cache_dir=cache, progress=None).status == "checked"
    assert len(list(cache.glob("verified-*.json"))) == 2
    # a damaged file changes size and mtime: a new fingerprint, so it is decoded and caught
    victim = root / "images/train/img2.jpg"
    truncate(victim)
    ds = build(root, "train")
    assert ds.fingerprint() != build(root, "train", downscale=2).fingerprint()
    decoded.clear()
    with pytest.raises(DataCheckError, match="img2.jpg: truncated image"):
        verify_dataset(ds, cache_dir=cache, progress=None)
    assert decoded  # really decoded again


def test_same_size_and_restored_mtime_is_the_documented_blind_spot(tmp_path):
    root = tmp_path / "d"
    make_tree(root)
    cache = tmp_path / "cache"
    verify_dataset(build(root, "train"), cache_dir=cache, progress=None)
    victim = root / "images/train/img1.png"
    st = victim.stat()
    corrupt_png(victim)
    assert victim.stat().st_size == st.st_size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p / rsync -a do
    assert verify_dataset(build(root, "train"), cache_dir=cache, progress=None).status == "cached"
    with pytest.raises(DataCheckError, match="img1.png: corrupt image"):  # without the cache it is caught
        verify_dataset(build(root, "train"), cache_dir=None, progress=None)


def test_corrupt_or_foreign_cache_file_means_check_again(tmp_path):
    root = tmp_path / "d"
    make_tree(root)
    cache = tmp_path / "cache"
    ds = build(root, "train")
    rec = verified_path(cache, ds.fingerprint())
    rec.parent.mkdir(parents=True)
    rec.write_text("{not json")
    assert verify_dataset(ds, cache_dir=cache, progress=None).status == "checked"
    rec.write_text(json.dumps({"format": 1, "fingerprint": "other", "num_images": 4}))
    assert verify_dataset(ds, cache_dir=cache, progress=None).status == "checked"
    assert verify_dataset(ds, cache_dir=cache, progress=None).status == "cached"


def test_skip_synthetic_and_progress(tmp_path):
    root = tmp_path / "d"
    make_tree(root, n=6)
    truncate(root / "images/train/img0.jpg")
    assert verify_dataset(build(root, "train"), skip=True).status == "skipped"
    synth = SyntheticStreets("train", num_images=4, image_size=(16, 16))
    assert verify_dataset(synth, cache_dir=tmp_path / "c").status == "generated"
    assert not (tmp_path / "c").exists()
    (root / "images/train/img0.jpg").unlink()
    _image(root / "images/train/img0.jpg")
    lines: list[str] = []
    res = verify_dataset(build(root, "train"), progress=lines.append, progress_every=0.0, num_threads=1)
    assert res.status == "checked"
    assert lines[0].startswith("checking folder/train: 1/6 images (16%)") and "left" in lines[0]
    assert lines[-1].startswith("checked folder/train: 6 images in ")
    with pytest.raises(ValueError, match="num_threads"):
        verify_dataset(build(root, "train"), num_threads=0)


class _ArrayDataset:
    """A data set without files: only the interface (load_image, load_mask, fingerprint)."""

    name, split, num_classes = "arrays", "train", 3

    def __init__(self, masks, images=None):
        self.masks = masks
        self.images_ = images

    def __len__(self):
        return len(self.masks)

    def load_image(self, i):
        if self.images_ is not None:
            return self.images_[i]
        return np.zeros((*self.masks[i].shape, 3), np.uint8)

    def load_mask(self, i):
        return self.masks[i]

    def fingerprint(self):
        return "arrays-v1"


def test_any_data_set_is_checked_through_its_loaders():
    ok = [np.array([[0, 1], [2, 255]], np.uint8)]
    assert verify_dataset(_ArrayDataset(ok), progress=None).status == "checked"
    with pytest.raises(DataCheckError, match=r"arrays/train image 1: label value\(s\) \[7\] \(1 pixels\) outside the classes \[0, 3\)"):
        verify_dataset(_ArrayDataset(ok + [np.array([[0, 7]], np.uint8)]), progress=None)
    with pytest.raises(DataCheckError, match=r"image is \(2, 2\) but its label map is \(1, 2\)"):
        verify_dataset(_ArrayDataset([np.zeros((1, 2), np.uint8)], images=[np.zeros((2, 2, 3), np.uint8)]), progress=None)


@pytest.mark.camvid
def test_camvid_both_splits_cold_then_cached(camvid_root, tmp_path):
    train, val = build_dataset("camvid", "train", str(camvid_root)), build_dataset("camvid", "val", str(camvid_root))
    t0 = time.monotonic()
    cold = verify_splits([train, val], cache_dir=tmp_path, progress=None)
    t_cold = time.monotonic() - t0
    t0 = time.monotonic()
    warm = verify_splits([train, val], cache_dir=tmp_path, progress=None)
    t_warm = time.monotonic() - t0
    assert [r.status for r in cold] == ["checked"] * 2 and [r.status for r in warm] == ["cached"] * 2
    assert [r.num_images for r in cold] == [367, 101]
    assert t_warm < 0.5 and t_warm < t_cold / 10, (t_cold, t_warm)
