"""Issue 24, item 3: ``--dry-run`` runs the preflight (exit 2 and one line when a trial could
not work), ``--no-preflight`` skips it; the ``folder`` data set's missing-root hint names its
own layout."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tce_ray.cli import EXIT_BAD_INPUT, main
from tce_ray.study.config import ConfigError, parse_config

HEAD = "name: dry\n"
TAIL = textwrap.dedent("""\
    model: {backbone: tiny}
    train: {steps: 2, eval_every: 2, batch_size: 2, num_workers: 1}
    search: {num_samples: 1}
    """)
SYNTHETIC = "data:\n  name: synthetic\n  options: {num_images: 6, image_size: [32, 32]}\n  loader_workers: 0\n"


def _study(tmp_path: Path, data: str = SYNTHETIC, extra: str = "") -> Path:
    f = tmp_path / "dry.yaml"
    f.write_text(HEAD + data + TAIL + extra)
    return f


def _dry(capsys, f: Path, tmp_path: Path, *more: str) -> tuple[int, str, str]:
    rc = main([str(f), "--dry-run", "--storage", str(tmp_path / "res"), *more])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_good_study_passes_the_preflight_and_prints_the_plan(capsys, tmp_path):
    rc, out, _ = _dry(capsys, _study(tmp_path), tmp_path)
    assert rc == 0
    assert "preflight (" in out and "nothing was started" in out


def test_a_data_option_typo_fails_the_dry_run_with_exit_2(capsys, tmp_path):
    f = _study(tmp_path, SYNTHETIC.replace("image_size: [32, 32]", "image_sise: [32, 32]"))
    rc, out, err = _dry(capsys, f, tmp_path)
    assert rc == EXIT_BAD_INPUT
    line = _error_line(err)
    assert "data.options" in line and "image_sise" in line and f"{f}:4:" in line
    assert "nothing was started" not in out  # no plan after a failed check


def test_no_preflight_skips_it(capsys, tmp_path):
    f = _study(tmp_path, SYNTHETIC.replace("image_size: [32, 32]", "image_sise: [32, 32]"))
    rc, out, _ = _dry(capsys, f, tmp_path, "--no-preflight")
    assert rc == 0 and "preflight (" not in out and "nothing was started" in out


def test_a_bad_weights_file_fails_the_dry_run(capsys, tmp_path):
    w = tmp_path / "weights.pt"
    w.write_text("not weights\n")
    f = _study(tmp_path, extra="")
    f.write_text(f.read_text().replace("model: {backbone: tiny}", f"model: {{backbone: tiny, backbone_weights: {w}}}"))
    rc, _, err = _dry(capsys, f, tmp_path)
    assert rc == EXIT_BAD_INPUT and "model.backbone_weights" in _error_line(err)


def test_a_missing_label_folder_fails_the_dry_run(capsys, tmp_path):
    root = tmp_path / "d"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / split / "a.png")
    data = (f"data:\n  name: folder\n  root: {root}\n  options: {{class_names: [a, b]}}\n  loader_workers: 0\n")
    rc, _, err = _dry(capsys, _study(tmp_path, data), tmp_path)
    line = _error_line(err)
    assert rc == EXIT_BAD_INPUT and "data.root" in line and "labels" in line


def test_the_folder_data_sets_missing_root_hint_names_its_own_layout(tmp_path):
    with pytest.raises(ConfigError) as ei:
        parse_config({"name": "x", "data": {"name": "folder", "root": str(tmp_path / "nowhere"),
                                            "options": {"class_names": ["a"]}}, "search": {"num_samples": 1}})
    text = str(ei.value)
    assert "images/<split>/ and labels/<split>/" in text and "annot" not in text
    assert "data.options.image_dir" in text
