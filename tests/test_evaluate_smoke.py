"""Issue 24, item 4 on a real study (the session's smoke study, tests/conftest.py): the trained
network back from ``load_study(dir).model("best:worst_iou")``, and ``tce-evaluate`` on the
study's val split (the IoU the trial reported at its last step, from the same checkpoint)
and on a folder of images (``python -m tce_ray.results.evaluate`` in a subprocess)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _best(trials, objective: str, mode: str) -> str:
    done = trials[(trials["status"] == "completed") & (trials["front_guard"].fillna("") == "")]
    i = done[objective].idxmax() if mode == "max" else done[objective].idxmin()
    return str(done.loc[i, "trial_id"])


def test_load_study_model_best_worst_iou(smoke) -> None:
    from tce_ray import load_study
    from tce_ray.models import DeepLabV3Plus
    from tce_ray.train.checkpointing import load_training_state

    s = load_study(smoke["dir"])
    net = s.model("best:worst_iou")
    tid = _best(s.trials, "worst_iou", "max")
    assert isinstance(net, DeepLabV3Plus) and not net.training and net.num_classes == len(s.class_names)
    ckpt = s.trials.loc[s.trials["trial_id"] == tid, "checkpoint"].iloc[0]
    saved = load_training_state(ckpt)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    other = s.model(_best(s.trials, "iou_std", "min"))
    with torch.no_grad():
        x = torch.randn(1, 3, 48, 64)
        assert net(x).shape == other(x).shape == (1, len(s.class_names), 48, 64)
    with pytest.raises(KeyError, match="no trial"):
        s.model("not-a-trial")


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tce_ray.results.evaluate", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def test_tce_evaluate_on_the_val_split_and_a_folder(smoke, tmp_path) -> None:
    from PIL import Image

    from tce_ray import load_study

    s = load_study(smoke["dir"])
    tid = _best(s.trials, "worst_iou", "max")
    proc = _evaluate(str(smoke["dir"]), "--trial", "best:worst_iou", "--out", str(tmp_path / "val"))
    assert proc.returncode == 0, proc.stderr
    assert f"trial {tid}" in proc.stdout and "Table 3 criteria" in proc.stdout and "IoU %" in proc.stdout
    m = json.loads((tmp_path / "val" / "metrics.json").read_text())
    row = s.trials[s.trials["trial_id"] == tid].iloc[0]
    assert m["trial_id"] == tid and m["split"] == "val" and m["step"] == int(row["step"])
    for c in s.class_names:  # the trial's last report was computed on this split with these weights
        want = row[f"iou/{c}"]
        assert (m["iou"][c] is None) if not math.isfinite(want) else m["iou"][c] == pytest.approx(want, abs=1e-9), c
    assert m["criteria"]["miou"] == pytest.approx(row["miou"], abs=1e-9)
    assert m["objectives"]["worst_iou"] == pytest.approx(row["worst_iou"], abs=1e-9)
    assert np.array_equal(np.array(m["confusion"]), s.confusion(tid).to_numpy())

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(photos / "p.png")
    proc = _evaluate(str(smoke["dir"]), "--images", str(photos), "--out", str(tmp_path / "labels"))
    assert proc.returncode == 0, proc.stderr
    labels = np.array(Image.open(tmp_path / "labels" / "p.png"))
    assert labels.shape == (30, 40) and labels.max() < len(s.class_names)
    assert json.loads((tmp_path / "labels" / "predictions.json").read_text())["images"][0]["width"] == 40
