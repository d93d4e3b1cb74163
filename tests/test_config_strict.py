"""Hostile and odd YAML in a study file: one line with file:line: key.path, exit 2, no Ray.

Alias bombs, duplicate keys, non-finite numbers (.inf, .nan, 1e400) and booleans where a
number belongs (issues 14 item 3 and 15 item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tce_ray.study.config import ConfigError, load_config, parse_config
from tce_ray.train.runspec import DataSpec, LossSpec, OptimSpec, RunSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: t1
data:
  name: synthetic
  options: {num_images: 8, image_size: [48, 64]}
loss: {name: mcce}
optim:
  lr: 0.01
train:
  steps: 4
  batch_size: 2
  use_gpu: false
search:
  num_samples: 2
  losses: [tce_image, tce_stochastic]
  t: {low: 0.1, high: 2.0, log: true}
  gamma: {low: 0.1, high: 0.5}
  configurations:
    - {name: mcce}
    - {name: tce_stochastic, t: 0.1}
"""

BOMB = GOOD + "".join(
    f"x{k}: &x{k} [{', '.join([f'*x{k - 1}'] * 10)}]\n" if k else 'x0: &x0 "lol"\n' for k in range(8)
)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_good_file_still_loads_and_booleans_stay_booleans(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.run.train.use_gpu is False and cfg.search.t.log is True and cfg.run.train.batch_size == 2
    assert load_config(_write(tmp_path, GOOD.replace("lr: 0.01", "lr: 1e-3"))).run.optim.lr == 0.001
    # options are free-form: a boolean there is the data set's business
    cfg = load_config(_write(tmp_path, GOOD.replace("image_size: [48, 64]}", "image_size: [48, 64], augment: true}")))
    assert cfg.run.data.options["augment"] is True


@pytest.mark.parametrize(
    "old,new,path,needle,words",
    [
        # non-finite numbers, however written
        ("  lr: 0.01", "  lr: .inf", "optim.lr", "lr:", ["finite", "inf"]),
        ("  lr: 0.01", "  lr: 1e400", "optim.lr", "lr:", ["finite", "1.8e308"]),
        ("  lr: 0.01", "  lr: .nan", "optim.lr", "lr:", ["finite", "nan"]),
        ("  lr: 0.01", "  lr: '-inf'", "optim.lr", "lr:", ["finite"]),
        ("  t: {low: 0.1, high: 2.0, log: true}", "  t: {low: 0.05, high: .inf}", "search.t.high", "t: {", ["finite"]),
        ("  t: {low: 0.1, high: 2.0, log: true}", "  t: .inf", "search.t", "t: .inf", ["finite"]),
        ("  gamma: {low: 0.1, high: 0.5}", "  gamma: {low: .nan, high: 0.5}", "search.gamma.low", "gamma:", ["finite"]),
        ("    - {name: tce_stochastic, t: 0.1}", "    - {name: tce_stochastic, t: -.inf}",
         "search.configurations.1.t", "t: -.inf", ["finite"]),
        ("loss: {name: mcce}", "loss: {name: mcce, focal_gamma: 1e999}", "loss.focal_gamma", "loss:", ["finite"]),
        ("name: t1", "name: t1\nresources: {max_concurrent_trials: .inf}", "resources.max_concurrent_trials",
         "resources:", ["finite"]),
        ("  options: {num_images: 8, image_size: [48, 64]}", "  options: {num_images: .inf, image_size: [48, 64]}",
         "data.options", "options:", ["num_images is inf", "finite"]),
        ("  options: {num_images: 8, image_size: [48, 64]}", "  options: {num_images: 8, image_size: [48, 1e400]}",
         "data.options", "options:", ["image_size.1 is inf"]),
        # booleans are not numbers
        ("  batch_size: 2", "  batch_size: true", "train.batch_size", "batch_size:", ["boolean", "True"]),
        ("  steps: 4", "  steps: false", "train.steps", "steps:", ["boolean"]),
        ("  lr: 0.01", "  lr: true", "optim.lr", "lr:", ["boolean"]),
        ("  num_samples: 2", "  num_samples: yes", "search.num_samples", "num_samples:", ["boolean"]),
        ("  t: {low: 0.1, high: 2.0, log: true}", "  t: {low: true, high: 2.0}", "search.t.low", "t: {", ["boolean"]),
        ("loss: {name: mcce}", "loss: {name: focal, focal_alpha: [1.0, true]}", "loss.focal_alpha", "loss:", ["boolean"]),
        ("    - {name: mcce}", "    - {name: mcce, min_pixels: true}", "search.configurations.0.min_pixels",
         "min_pixels", ["boolean"]),
        # duplicate keys
        ("  steps: 4", "  steps: 4\n  steps: 8", "train.steps", "steps: 8", ["duplicate key 'steps'", "first at line 9"]),
        ("name: t1", "name: t1\nname: t2", "name", "name: t2", ["duplicate key 'name'", "first at line 1"]),
    ],
)
def test_each_bad_value_is_one_line_with_path_and_line(tmp_path, old, new, path, needle, words):
    assert old in GOOD
    text = GOOD.replace(old, new)
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    err = info.value
    assert (err.path, err.line) == (path, _line_of(text, needle)), str(err)
    msg = str(err)
    assert msg.startswith(f"{p}:{err.line}: {path}: ") and "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_alias_bomb_named_by_alias_line(tmp_path):
    p = _write(tmp_path, BOMB)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert time.monotonic() - t0 < 10
    # x5 = 10**5 strings: its own expansion passes 100,000 values at its 10th alias
    assert info.value.line == _line_of(BOMB, "x5: &x5") and info.value.path.startswith("x5.")
    assert "*x4" in str(info.value) and "more than 100,000 values" in str(info.value)


def test_schema_refuses_non_finite_and_bools_without_yaml():
    with pytest.raises(ConfigError, match="optim.lr: must be a finite number"):
        parse_config({"name": "x", "optim": {"lr": float("inf")}, "search": {"num_samples": 1}})
    with pytest.raises(ConfigError, match="train.batch_size: a boolean"):
        parse_config({"name": "x", "train": {"batch_size": True}, "search": {"num_samples": 1}})
    # the RunSpec a trial gets is as strict (assignment is validated too)
    with pytest.raises(ValueError, match="finite"):
        OptimSpec(lr=float("nan"))
    with pytest.raises(ValueError, match="boolean"):
        TrainSpec(steps=True)
    with pytest.raises(ValueError, match="finite"):
        LossSpec(focal_gamma=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        DataSpec(scale_range=(0.5, float("inf")))
    with pytest.raises(ValueError, match="boolean"):
        DataSpec(crop_size=True)
    run = RunSpec()
    with pytest.raises(ValueError, match="boolean"):
        run.train.batch_size = True
    assert TrainSpec(use_gpu=True, amp=False).use_gpu is True


def _cli(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "tce_ray.study", str(path), "--storage", str(tmp_path / "res")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )


@pytest.mark.parametrize(
    "text,needle,path,words",
    [
        (BOMB, "x5: &x5", "x5.", ["alias *x4", "more than 100,000 values"]),
        (GOOD.replace("  steps: 4", "  steps: 4\n  steps: 8"), "steps: 8", "train.steps", ["duplicate key"]),
        (GOOD.replace("  lr: 0.01", "  lr: 1e400"), "lr:", "optim.lr", ["finite"]),
        (GOOD.replace("  batch_size: 2", "  batch_size: true"), "batch_size:", "train.batch_size", ["boolean"]),
    ],
    ids=["alias_bomb", "duplicate_key", "overflow", "bool_batch"],
)
def test_cli_exit_2_one_line(tmp_path, text, needle, path, words):
    p = _write(tmp_path, text)
    t0 = time.monotonic()
    proc = _cli(p, tmp_path)
    assert time.monotonic() - t0 < 60  # no Ray start (a loaded shared machine needs ~20 s for the imports)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: {p}:{_line_of(text, needle)}: {path}"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "res").exists()


def test_huge_or_deep_files_are_refused_before_parsing(tmp_path):
    from tce_ray.study.yaml_load import MAX_CHARS

    p = tmp_path / "big.yaml"
    p.write_text(GOOD + "# " + "x" * (4 * MAX_CHARS) + "\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="bytes; a study file has a few thousand"):
        load_config(p)
    assert time.monotonic() - t0 < 5
    p.write_text(GOOD + "# " + "x" * MAX_CHARS + "\n")
    with pytest.raises(ConfigError, match="characters"):
        load_config(p)
    text = GOOD + "deep: " + "[" * 80 + "]" * 80 + "\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.line == _line_of(text, "deep:") and "nested more than 64 levels" in str(info.value)
