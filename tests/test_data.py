"""File data sets (folder, camvid, cityscapes, ade20k) on fake trees, transforms, the factory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tce_ray.data import (
    ADE20K_CLASSES,
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    SegmentationTransform,
    build_dataset,
    build_lut,
    list_datasets,
)
from tce_ray.data import folder as folder_module

torch.set_num_threads(1)
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
RNG = np.random.default_rng(0)

# The standard Cityscapes labelId -> trainId table (cityscapesScripts labels.py), written out independently.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def write_image(path: Path, h: int = 12, w: int = 16) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def write_label(path: Path, values: np.ndarray | list[int], h: int = 12, w: int = 16) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.choice(np.asarray(values, dtype=np.uint8), size=(h, w))
    Image.fromarray(arr, mode="L").save(path)
    return arr


def make_folder(root: Path, split: str = "train", n: int = 3, values=(0, 1, 2, 255)) -> dict[str, np.ndarray]:
    labels = {}
    exts = [".png", ".jpg", ".bmp", ".tif"]
    for i in range(n):
        write_image(root / "images" / split / f"img{i}{exts[i % len(exts)]}")
        labels[f"img{i}"] = write_label(root / "labels" / split / f"img{i}.png", values)
    return labels


# ---------------------------------------------------------------- factory


def test_list_datasets():
    assert list_datasets() == ["synthetic", "cityscapes", "ade20k", "camvid", "folder"]


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="'nope'.*synthetic.*cityscapes.*ade20k.*camvid.*folder"):
        build_dataset("nope", "train")


def test_unknown_option_is_named(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(TypeError, match="colour.*accepted.*class_names"):
        build_dataset("folder", "train", str(tmp_path), class_names=["a", "b", "c"], colour=True)


# ---------------------------------------------------------------- generic folder


def test_folder_pairs_by_stem_and_reads_labels_exactly(tmp_path):
    labels = make_folder(tmp_path, n=4)
    (tmp_path / "images" / "train" / "notes.txt").write_text("not an image")  # ignored
    ds = build_dataset("folder", "val", str(tmp_path), class_names=["a", "b", "c"],
                       image_dir="images/train", label_dir="labels/train")  # fmt: skip
    assert len(ds) == 4 and ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
    assert ds.name == "folder" and ds.split == "val"
    for i, stem in enumerate(sorted(labels)):
        assert ds.images[i].stem == stem
        assert np.array_equal(ds.load_mask(i), labels[stem])
    image, mask = ds[0]
    assert image.shape == (3, 12, 16) and image.dtype == torch.float32
    assert np.array_equal(mask.numpy(), labels["img0"].astype(np.int64))
    raw = np.asarray(Image.open(ds.images[0]).convert("RGB"), dtype=np.float64)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), (raw / 255 - MEAN) / STD, atol=1e-5)


def test_folder_remap_dict_and_list(tmp_path):
    labels = make_folder(tmp_path, n=2, values=(0, 5, 9))
    ds = build_dataset("folder", "train", tmp_path, class_names=["a", "b"], remap={5: 1, 9: 255}, augment=False)
    expected = np.select([labels["img0"] == 0, labels["img0"] == 5], [0, 1], 255)
    assert np.array_equal(ds.load_mask(0), expected)
    table = [-1] * 256
    table[0], table[5], table[9] = 1, 0, 0
    ds2 = build_dataset("folder", "train", tmp_path, class_names=["a", "b"], remap=table)
    assert np.array_equal(ds2.load_mask(1), np.where(labels["img1"] == 0, 1, 0))
    assert ds.fingerprint() != ds2.fingerprint()


def test_downscale_shrinks_image_smoothly_and_labels_by_nearest(tmp_path):
    labels = make_folder(tmp_path, n=1, values=(0, 1, 2, 255))
    full = build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"], augment=False)
    half = build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"], augment=False, downscale=2)
    mask = half.load_mask(0)
    assert mask.shape == (6, 8) and half.load_image(0).shape == (6, 8, 3)
    # NEAREST: every output label is the label of one input pixel of its 2x2 block
    blocks = labels["img0"].reshape(6, 2, 8, 2).transpose(0, 2, 1, 3).reshape(6, 8, 4)
    assert all(mask[r, c] in blocks[r, c] for r in range(6) for c in range(8))
    # the image is a smooth reduction: close to the 2x2 block means (PIL's antialiased bilinear)
    raw = full.load_image(0).astype(np.float64).reshape(6, 2, 8, 2, 3).mean(axis=(1, 3))
    assert np.abs(half.load_image(0) - raw).mean() < 40
    assert half.fingerprint() != full.fingerprint()
    with pytest.raises(ValueError, match="downscale must be an int >= 1"):
        build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"], downscale=0)


def test_build_lut_rules():
    lut = build_lut(3)
    assert lut[:3].tolist() == [0, 1, 2] and lut[255] == 255 and (lut[3:255] == -1).all()
    with pytest.raises(ValueError, match="256 entries"):
        build_lut(3, [0, 1, 2])
    with pytest.raises(ValueError, match="7 -> 3"):
        build_lut(3, {7: 3})
    with pytest.raises(ValueError, match="300"):
        build_lut(3, {300: 0})


def test_folder_needs_root_and_class_names(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="root"):
        build_dataset("folder", "train", class_names=["a"])
    with pytest.raises(ValueError, match="class_names"):
        build_dataset("folder", "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        build_dataset("folder", "train", str(tmp_path / "does-not-exist"), class_names=["a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        build_dataset("folder", "train", str(tmp_path / "empty"), class_names=["a"])
    with pytest.raises(FileNotFoundError, match="labels/val"):
        (tmp_path / "images" / "val").mkdir()
        build_dataset("folder", "val", str(tmp_path), class_names=["a"])


def test_image_without_label_is_named(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "images" / "train" / "lonely.png")
    with pytest.raises(FileNotFoundError, match="lonely.png.*no label map|no label map.*lonely.png"):
        build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"])


def test_label_without_image_is_named(tmp_path):
    make_folder(tmp_path)
    write_label(tmp_path / "labels" / "train" / "orphan.png", [0])
    with pytest.raises(FileNotFoundError, match="orphan.png"):
        build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"])


def test_unreadable_image_fails_at_construction(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "images" / "train" / "broken.png").write_bytes(b"this is not a png")
    write_label(tmp_path / "labels" / "train" / "broken.png", [0])
    with pytest.raises(ValueError, match="unreadable image.*broken.png"):
        build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"])


def test_size_mismatch_fails_at_construction(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "images" / "train" / "odd.png", 12, 16)
    write_label(tmp_path / "labels" / "train" / "odd.png", [0], 12, 15)
    with pytest.raises(ValueError, match="odd.png.*16x12.*15x12"):
        build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"])


def test_colour_label_map_rejected(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "labels" / "train" / "img0.png")  # overwrite a label with an RGB image
    with pytest.raises(ValueError, match="img0.png.*'RGB'"):
        build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"])


def test_out_of_range_label_values_named_by_load_mask(tmp_path):
    make_folder(tmp_path, values=(0, 1))
    write_label(tmp_path / "labels" / "train" / "img1.png", [0, 7, 200])
    ds = build_dataset("folder", "train", tmp_path, class_names=["a", "b", "c"])  # headers are fine
    assert ds.load_mask(0).max() <= 1
    with pytest.raises(ValueError, match=r"img1.png.*\[7, 200\]"):
        ds.load_mask(1)
    with pytest.raises(ValueError, match="img1.png"):
        ds[1]


def test_fingerprint_follows_files(tmp_path):
    make_folder(tmp_path)
    kwargs = dict(class_names=["a", "b", "c"])
    fp = build_dataset("folder", "train", tmp_path, **kwargs).fingerprint()
    assert fp == build_dataset("folder", "train", tmp_path, crop_size=8, **kwargs).fingerprint()
    label = tmp_path / "labels" / "train" / "img2.png"
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fp2 = build_dataset("folder", "train", tmp_path, **kwargs).fingerprint()
    assert fp2 != fp
    make_folder(tmp_path, n=4)
    assert build_dataset("folder", "train", tmp_path, **kwargs).fingerprint() not in (fp, fp2)


# ---------------------------------------------------------------- camvid


def test_camvid_fake_tree(tmp_path, monkeypatch):
    values = list(range(12))
    lbl = write_label(tmp_path / "trainannot" / "0001TP_006690.png", values, 9, 11)
    write_image(tmp_path / "train" / "0001TP_006690.jpg", 9, 11)
    write_label(tmp_path / "valannot" / "a.png", [3], 9, 11)
    write_image(tmp_path / "val" / "a.png", 9, 11)
    ds = build_dataset("camvid", "train", str(tmp_path))
    assert ds.class_names == CAMVID_CLASSES and ds.num_classes == 11 and len(ds) == 1
    assert np.array_equal(ds.load_mask(0), np.where(lbl == 11, 255, lbl))
    assert ds.transform.augment and not build_dataset("camvid", "val", str(tmp_path)).transform.augment
    write_label(tmp_path / "trainannot" / "0001TP_006690.png", [12], 9, 11)
    with pytest.raises(ValueError, match=r"0001TP_006690.png.*\[12\]"):
        build_dataset("camvid", "train", str(tmp_path)).load_mask(0)
    with pytest.raises(FileNotFoundError, match="test"):
        build_dataset("camvid", "test", str(tmp_path))


def test_camvid_without_root_says_where(monkeypatch):
    monkeypatch.delenv("TCE_CAMVID_ROOT", raising=False)
    monkeypatch.setattr(folder_module, "_CAMVID_SHARED", Path("/nonexistent/camvid"))
    with pytest.raises(FileNotFoundError, match="TCE_CAMVID_ROOT"):
        build_dataset("camvid", "train")


@pytest.mark.camvid
def test_camvid_real(camvid_root):
    train = build_dataset("camvid", "train", str(camvid_root), crop_size=96)
    val = build_dataset("camvid", "val", str(camvid_root))
    assert (len(train), len(val)) == (367, 101)
    image, mask = val[0]
    assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
    values = set(np.unique(np.concatenate([val.load_mask(i).ravel() for i in range(0, 101, 25)])).tolist())
    assert values <= set(range(11)) | {255} and len(values) > 5
    image, mask = train[0]
    assert image.shape == (3, 96, 96) and mask.shape == (96, 96)
    assert train.fingerprint() == build_dataset("camvid", "train", str(camvid_root)).fingerprint()


# ---------------------------------------------------------------- cityscapes


def make_cityscapes(root: Path, split: str = "train") -> np.ndarray:
    label = None
    for city, frame in (("aachen", "000000_000019"), ("bremen", "000001_000019")):
        base = f"{city}_{frame}"
        write_image(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png", 6, 8)
        gt = root / "gtFine" / split / city
        label = write_label(gt / f"{base}_gtFine_labelIds.png", list(range(34)), 6, 8)
        write_label(gt / f"{base}_gtFine_instanceIds.png", [0], 6, 8)  # other targets: ignored
        write_image(gt / f"{base}_gtFine_color.png", 6, 8)
    return label


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    last = make_cityscapes(tmp_path)
    ds = build_dataset("cityscapes", "train", str(tmp_path), augment=False)
    assert len(ds) == 2 and ds.num_classes == 19 and ds.class_names == CITYSCAPES_CLASSES
    assert ds.class_names[0] == "road" and ds.class_names[18] == "bicycle"
    expected = np.vectorize(lambda v: CITYSCAPES_TRAIN_IDS.get(int(v), 255))(last)
    assert np.array_equal(ds.load_mask(1), expected)
    _, mask = ds[1]
    assert np.array_equal(mask.numpy(), expected)


def test_cityscapes_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    with pytest.raises(FileNotFoundError, match="CITYSCAPES_DATASET"):
        build_dataset("cityscapes", "train")
    make_cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match="leftImg8bit/val"):
        build_dataset("cityscapes", "val", str(tmp_path))
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    assert len(build_dataset("cityscapes", "train")) == 2
    (tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="aachen_000000_000019_leftImg8bit.png"):
        build_dataset("cityscapes", "train")
    write_label(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", [40], 6, 8)
    with pytest.raises(ValueError, match=r"aachen_000000_000019_gtFine_labelIds.png.*\[40\]"):
        build_dataset("cityscapes", "train").load_mask(0)
    write_label(tmp_path / "gtFine/train/zurich/zurich_000002_000019_gtFine_labelIds.png", [7], 6, 8)
    with pytest.raises(FileNotFoundError, match="zurich_000002_000019_gtFine_labelIds.png"):
        build_dataset("cityscapes", "train")


# ---------------------------------------------------------------- ade20k


def test_ade20k_fake_tree(tmp_path, monkeypatch):
    top = tmp_path / "ADEChallengeData2016"
    lbl = write_label(top / "annotations/training/ADE_train_00000001.png", [0, 1, 2, 150], 7, 9)
    write_image(top / "images/training/ADE_train_00000001.jpg", 7, 9)
    write_label(top / "annotations/validation/ADE_val_00000001.png", [151], 7, 9)
    write_image(top / "images/validation/ADE_val_00000001.jpg", 7, 9)
    ds = build_dataset("ade20k", "train", str(tmp_path))  # the parent of ADEChallengeData2016 works too
    assert len(ADE20K_CLASSES) == 150 == ds.num_classes
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag" and len(set(ADE20K_CLASSES)) == 150
    assert np.array_equal(ds.load_mask(0), np.where(lbl == 0, 255, lbl.astype(np.int64) - 1))
    val = build_dataset("ade20k", "val", str(top))
    with pytest.raises(ValueError, match=r"ADE_val_00000001.png.*\[151\]"):
        val.load_mask(0)
    monkeypatch.delenv("ADE20K_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="ADE20K_ROOT"):
        build_dataset("ade20k", "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset("ade20k", "test", str(top))


# ---------------------------------------------------------------- transforms


def test_pad_uses_ignore_for_mask_and_zero_for_image():
    torch.manual_seed(0)
    image = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = RNG.integers(0, 3, (20, 30), dtype=np.uint8)
    t = SegmentationTransform(augment=True, crop_size=(40, 50), scale_range=(1.0, 1.0), jitter=0.0)
    out_img, out_mask = t(image, mask)
    assert out_img.shape == (3, 40, 50) and out_mask.shape == (40, 50)
    pad = out_mask == 255
    assert int(pad.sum()) == 40 * 50 - 20 * 30
    zero = torch.tensor((0 - MEAN) / STD, dtype=torch.float32)
    assert torch.allclose(out_img.permute(1, 2, 0)[pad], zero.expand(int(pad.sum()), 3), atol=1e-6)
    kept = out_mask[~pad].numpy()
    assert sorted(np.bincount(kept, minlength=3).tolist()) == sorted(np.bincount(mask.ravel(), minlength=3).tolist())


def test_scale_is_nearest_for_masks():
    torch.manual_seed(1)
    mask = RNG.integers(0, 5, (8, 10), dtype=np.uint8)
    image = RNG.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    t = SegmentationTransform(augment=True, crop_size=(16, 20), scale_range=(2.0, 2.0))
    for _ in range(4):
        _, out = t(image, mask)
        up = np.kron(mask, np.ones((2, 2), np.uint8))
        assert np.array_equal(out.numpy(), up) or np.array_equal(out.numpy(), up[:, ::-1])


def test_random_scale_keeps_label_values_and_crop_none_keeps_shape():
    torch.manual_seed(2)
    mask = RNG.choice(np.array([1, 4, 255], np.uint8), (24, 32))
    image = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    t = SegmentationTransform(augment=True, crop_size=None, scale_range=(0.5, 2.0))
    for _ in range(6):
        img, out = t(image, mask)
        assert img.shape == (3, 24, 32) and out.shape == (24, 32)
        assert set(out.unique().tolist()) <= {1, 4, 255}


def test_flip_happens_jointly():
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :3] = 255  # left half white
    mask = np.zeros((4, 6), np.uint8)
    mask[:, :3] = 1
    t = SegmentationTransform(augment=True, crop_size=(4, 6), scale_range=(1.0, 1.0), jitter=0.0)
    seen = set()
    torch.manual_seed(3)
    for _ in range(20):
        img, out = t(image, mask)
        white = img[0] > 0
        assert torch.equal(white, out == 1)
        seen.add(bool(out[0, 0] == 1))
    assert seen == {True, False}
