"""The preflight: every input a trial cannot work with fails in seconds, before Ray starts.

Each case builds a small study (tiny synthetic data or a few generated files), runs
:func:`tce_ray.study.preflight.preflight` and checks the one-line error: its key path, its YAML
line where a file is given, and that it says what to do. No Ray is started (the CLI cases
check in a subprocess that Ray is not even imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tce_ray.study.config import ConfigError, load_config, parse_config
from tce_ray.study.preflight import MAX_NAME_CHARS, PreflightError, preflight, verify_cache_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "synthetic", "options": {"num_images": 6, "image_size": [32, 32]}, "loader_workers": 0}


@pytest.fixture(autouse=True)
def _local_ray(monkeypatch):
    """The resource checks apply to a local Ray this study would start: not to the Ray an
    earlier test of the session initialised, nor to a RAY_ADDRESS cluster."""
    import tce_ray.study.preflight as pf

    monkeypatch.setattr(pf, "_ray_running", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def study(**sections) -> dict:
    base = {
        "name": "pf", "data": dict(TINY), "model": {"backbone": "tiny"},
        "train": {"steps": 2, "eval_every": 2, "batch_size": 2, "num_workers": 1},
        "search": {"num_samples": 1},
    }
    for k, v in sections.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def check(data: dict, tmp_path: Path, **kw):
    data = {"storage": str(tmp_path / "results"), **data}
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("cpu_count", 8)
    return preflight(parse_config(data), **kw)


def fails(data: dict, tmp_path: Path, path: str, *words: str, **kw) -> PreflightError:
    with pytest.raises(PreflightError) as ei:
        check(data, tmp_path, **kw)
    err = ei.value
    assert err.path == path, str(err)
    text = str(err)
    assert "\n" not in text, text
    for w in words:
        assert w in text, text
    return err


# ------------------------------------------------------------------ a good study


def test_a_good_study_passes_and_says_what_it_checked(tmp_path):
    rep = check(study(), tmp_path)
    text = rep.summary()
    assert "data synthetic (train 6, val 6 images" in text and "model tiny (os 16)" in text
    assert "resources (1 of 8 CPUs per trial)" in text
    assert rep.warnings == [] and rep.seconds < 30


def test_the_shipped_smoke_study_passes(tmp_path):
    cfg = load_config(ROOT / "studies" / "smoke.yaml").model_copy(update={"storage": str(tmp_path)})
    rep = preflight(cfg, file=ROOT / "studies" / "smoke.yaml", cache_dir=str(tmp_path / "c"), cpu_count=4)
    assert any(c.startswith("model ") for c in rep.checked)


# ------------------------------------------------------------------ the model


def test_unknown_backbone(tmp_path):
    fails(study(model={"backbone": "resnet9000"}), tmp_path, "model.backbone", "unknown backbone 'resnet9000'", "tiny")


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pt"
    fails(study(model={"backbone_weights": str(missing)}), tmp_path, "model.backbone_weights", str(missing), "does not exist")


def test_weights_file_that_is_text(tmp_path):
    f = tmp_path / "weights.pt"
    f.write_text("these are not weights\n")
    fails(study(model={"backbone_weights": str(f)}), tmp_path, "model.backbone_weights",
          "cannot load the backbone_weights file", str(f), "torch.save(model.state_dict(), path)")


def test_weights_of_another_backbone(tmp_path):
    f = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, f)
    fails(study(model={"backbone_weights": str(f)}), tmp_path, "model.backbone_weights", "does not match")


def test_matching_weights_pass(tmp_path):
    from tce_ray.models.backbones import TinyBackbone

    f = tmp_path / "tiny.pt"
    torch.save(TinyBackbone(16).state_dict(), f)
    rep = check(study(model={"backbone_weights": str(f)}), tmp_path)
    assert any("weights tiny.pt" in c for c in rep.checked)


# ------------------------------------------------------------------ data options and numbers


def test_unknown_data_option(tmp_path):
    fails(study(data={**TINY, "options": {"num_images": 6, "colour": 1}}), tmp_path, "data.options",
          "unknown option(s) ['colour']", "accepted")


def test_no_images(tmp_path):
    fails(study(data={**TINY, "options": {"num_images": 0}}), tmp_path, "data.options", "num_images must be a positive")


def test_negative_image_size(tmp_path):
    fails(study(data={**TINY, "options": {"num_images": 6, "image_size": [0, -4]}}), tmp_path, "data.options", "image_size")


def test_scale_range_the_wrong_way(tmp_path):
    fails(study(data={**TINY, "scale_range": [2, -1]}), tmp_path, "data.scale_range", "0 < low <= high")


def test_fewer_training_images_than_a_global_batch(tmp_path):
    fails(study(train={"batch_size": 4, "num_workers": 2}), tmp_path, "train.batch_size",
          "has 6 images, fewer than train.batch_size x train.num_workers = 8")


def test_configuration_errors_name_the_configuration(tmp_path):
    # a configuration may not change the data; the base run is checked, and each configuration's run too
    data = study(search={"num_samples": 0, "configurations": [{"name": "mcce"}, {"name": "tce_class", "t": 0.5}]})
    rep = check(data, tmp_path)
    assert sum(c.startswith("data ") for c in rep.checked) == 1  # one distinct data set, built once


def test_infinite_lr_is_refused_before_the_preflight():
    with pytest.raises(ConfigError, match="optim.lr"):
        parse_config(study(optim={"lr": float("inf")}))


# ------------------------------------------------------------------ names, storage, optuna storage


def test_long_study_name(tmp_path):
    fails(study(name="x" * (MAX_NAME_CHARS + 1)), tmp_path, "name", f"at most {MAX_NAME_CHARS}")


def test_storage_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    fails({**study(), "storage": str(f)}, tmp_path, "storage", f"{f} is a file", "must name a folder")
    # a file further up the path
    fails({**study(), "storage": str(f / "sub")}, tmp_path, "storage", f"{f} is a file")


def test_study_folder_that_is_a_file(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "pf").write_text("x")
    fails(study(), tmp_path, "storage", "pf is a file")


def test_optuna_storage_in_a_missing_folder(tmp_path):
    missing = tmp_path / "no" / "such"
    fails({**study(), "optuna_storage": f"sqlite:///{missing}/optuna.db"}, tmp_path, "optuna_storage",
          f"the folder {missing} of the SQLite file does not exist", "mkdir -p")


def test_optuna_storage_that_is_a_folder(tmp_path):
    fails({**study(), "optuna_storage": f"sqlite:///{tmp_path}"}, tmp_path, "optuna_storage", "is a folder")


def test_optuna_storage_without_its_driver(tmp_path):
    fails({**study(), "optuna_storage": "nosuchdb+nodriver://u@h/db"}, tmp_path, "optuna_storage", "install its driver")


def test_optuna_sqlite_in_an_existing_folder_passes(tmp_path):
    rep = check({**study(), "optuna_storage": f"sqlite:///{tmp_path}/o.db"}, tmp_path)
    assert any(c.startswith("optuna_storage") for c in rep.checked)


# ------------------------------------------------------------------ resources


def test_one_trial_needs_more_cpus_than_the_machine(tmp_path):
    data = study(train={"num_workers": 3, "cpus_per_worker": 1})
    fails(data, tmp_path, "train.cpus_per_worker", "3 x 1 = 3 CPUs but this machine has 2", cpu_count=2)


def test_a_cluster_address_skips_the_local_resource_check(tmp_path):
    data = study(train={"num_workers": 3, "cpus_per_worker": 1})
    rep = check(data, tmp_path, cpu_count=2, address="10.0.0.1:6379")
    assert not any(c.startswith("resources") for c in rep.checked)


def test_a_ray_already_running_skips_the_local_resource_check(tmp_path, monkeypatch):
    import tce_ray.study.preflight as pf

    monkeypatch.setattr(pf, "_ray_running", lambda: True)  # run_study then uses that Ray as it is
    rep = check(study(train={"num_workers": 3, "cpus_per_worker": 1}), tmp_path, cpu_count=2)
    assert not any(c.startswith("resources") for c in rep.checked)


def test_gpus_asked_on_a_machine_without_one(tmp_path, monkeypatch):
    import tce_ray.study.preflight as pf

    monkeypatch.setattr(pf, "_gpu_count", lambda: 0)
    fails(study(train={"use_gpu": True}), tmp_path, "train.use_gpu", "asks for 1 GPU(s)", "has 0",
          "train.use_gpu: false")


def test_concurrent_trials_that_do_not_fit_warn(tmp_path):
    rep = check({**study(), "resources": {"max_concurrent_trials": 4}}, tmp_path, cpu_count=2)
    assert len(rep.warnings) == 1 and "at most 2 will run at once" in rep.warnings[0]


# ------------------------------------------------------------------ file data sets

CLASSES = ["a", "b", "c"]


def _image(path: Path, h: int = 48, w: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 7) % 256, (yy * 5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def _label(path: Path, values=(0, 1, 2, 255), h: int = 48, w: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.choice(np.asarray(values, np.uint8), (h, w)), mode="L").save(path)


def make_tree(root: Path, n: int = 4) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            _image(root / "images" / split / f"img{i}.jpg")
            _label(root / "labels" / split / f"img{i}.png")
    return root


def folder_study(root: Path, **data) -> dict:
    return study(data={"name": "folder", "root": str(root), "options": {"class_names": CLASSES}, "loader_workers": 0,
                       **data})


def test_folder_data_passes_and_the_check_is_cached(tmp_path, monkeypatch):
    import tce_ray.data.verify as verify

    root = make_tree(tmp_path / "d")
    calls = []
    real = verify._check_one
    monkeypatch.setattr(verify, "_check_one", lambda ds, i: calls.append(i) or real(ds, i))
    rep = check(folder_study(root), tmp_path)
    assert "data folder (train 4, val 4 images, verified)" in rep.summary()
    assert len(calls) == 8  # every file of both splits decoded
    records = sorted(p.name for p in (tmp_path / "cache").glob("verified-*.json"))
    assert len(records) == 2
    calls.clear()
    check(folder_study(root), tmp_path)
    assert calls == []  # the second preflight reads the records


def test_wrong_layout(tmp_path):
    root = tmp_path / "d"
    (root / "somewhere").mkdir(parents=True)
    fails(folder_study(root), tmp_path, "data.root", "cannot build the folder data set", "does not exist")


def test_unpaired_files(tmp_path):
    root = make_tree(tmp_path / "d")
    (root / "labels" / "train" / "img2.png").unlink()
    fails(folder_study(root), tmp_path, "data.root", "img2")


def test_size_mismatch(tmp_path):
    root = make_tree(tmp_path / "d")
    _label(root / "labels" / "val" / "img1.png", h=10, w=10)
    fails(folder_study(root), tmp_path, "data.root", "img1")


def test_unreadable_image(tmp_path):
    root = make_tree(tmp_path / "d")
    (root / "images" / "train" / "img3.jpg").write_bytes(b"not a jpeg at all")
    fails(folder_study(root), tmp_path, "data.root", "img3.jpg")


def test_colour_label_map(tmp_path):
    root = make_tree(tmp_path / "d")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "labels" / "train" / "img1.png")
    fails(folder_study(root), tmp_path, "data.root", "img1.png")


def test_label_value_outside_the_classes_in_the_val_split(tmp_path):
    root = make_tree(tmp_path / "d")
    _label(root / "labels" / "val" / "img2.png", values=(0, 7))
    fails(folder_study(root), tmp_path, "data.root", "img2.png", "7")


def test_label_value_in_the_first_image_is_caught_without_the_full_check(tmp_path):
    root = make_tree(tmp_path / "d")
    _label(root / "labels" / "val" / "img0.png", values=(0, 9))
    fails(folder_study(root, verify=False), tmp_path, "data.root", "9")


def test_truncated_jpeg_is_caught_by_the_full_check_only(tmp_path):
    root = make_tree(tmp_path / "d")
    bad = root / "images" / "train" / "img2.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 3 // 4])  # the header stays readable
    rep = check(folder_study(root, verify=False), tmp_path)  # headers only: it passes
    assert "not verified (data.verify: false)" in rep.summary()
    fails(folder_study(root), tmp_path, "data.root", "img2.jpg", "truncated", "data.verify: false")


# ------------------------------------------------------------------ the cache folder


def test_verify_cache_dir_is_the_class_index_cache(tmp_path, monkeypatch):
    from tce_ray.train.trainer import class_index_cache_dir  # imports Ray, starts nothing

    monkeypatch.delenv("TCE_CACHE_DIR", raising=False)
    runs = str(tmp_path / "study" / "runs")
    assert verify_cache_dir(runs) == class_index_cache_dir(runs)
    monkeypatch.setenv("TCE_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert verify_cache_dir(runs) == class_index_cache_dir(runs) == str(tmp_path / "elsewhere")


# ------------------------------------------------------------------ line numbers and the CLI


BAD_FILES = {
    "backbone": ("model:\n  backbone: resnet9000\n", "model.backbone", 3),
    "weights": ("model:\n  backbone_weights: /no/such/file.pt\n", "model.backbone_weights", 3),
    "option": ("data:\n  name: synthetic\n  options: {num_images: 6, colour: 1}\n", "data.options", 4),
    "scale": ("data:\n  name: synthetic\n  options: {num_images: 6, image_size: [32, 32]}\n  scale_range: [2, -1]\n",
              "data.scale_range", 5),
}


def _write(tmp_path: Path, name: str, body: str) -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(f"name: {name}\n" + body + textwrap.dedent("""\
        train: {steps: 2, eval_every: 2, batch_size: 2, num_workers: 1}
        search: {num_samples: 1}
        """))
    return f


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_errors_carry_the_file_and_line(tmp_path, case):
    body, path, line = BAD_FILES[case]
    f = _write(tmp_path, case, body)
    cfg = load_config(f).model_copy(update={"storage": str(tmp_path / "r")})
    with pytest.raises(PreflightError) as ei:
        preflight(cfg, file=f, cache_dir=str(tmp_path / "c"), cpu_count=4)
    assert ei.value.path == path and ei.value.line == line
    assert str(ei.value).startswith(f"{f}:{line}: {path}: ")


def test_cli_fails_in_seconds_with_one_line_exit_2_and_no_ray(tmp_path):
    body, path, line = BAD_FILES["backbone"]
    f = _write(tmp_path, "cli_bad", body)
    code = ("import sys\nfrom tce_ray.cli import main\nrc = main(sys.argv[1:])\n"
            "print('RAY_IMPORTED', 'ray' in sys.modules)\nsys.exit(rc)\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(f), "--storage", str(tmp_path / "r")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {f}:{line}: {path}: unknown backbone 'resnet9000'; choose one of "
        "['resnet101', 'resnet50', 'mobilenet_v3_large', 'tiny']"
    ]
    assert "RAY_IMPORTED False" in proc.stdout
    assert took < 60  # well under 10 s on an idle 2-core machine; the bound leaves room for a loaded one
    assert not (tmp_path / "r" / "cli_bad").exists()  # nothing written: not even the lock
