"""Models as results, without Ray: ``StudyData.model(trial | "best:<objective>")`` on a study
made by hand (tiny checkpoints written by ``save_training_state``), the choice of the best
trial against hand-picked answers, the errors, and ``tce-evaluate`` on the synthetic data
(IoU against a confusion matrix counted here with numpy) and on a folder of images."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tce_ray.core.objectives import get_objective
from tce_ray.models import deeplabv3plus
from tce_ray.results.study_data import StudyData
from tce_ray.results.trial_model import best_trial, load_trial_model
from tce_ray.train.checkpointing import CHECKPOINT_FORMAT, save_training_state

CLASSES = ["a", "b", "c", "d"]
DATA = {"name": "synthetic", "root": None, "train_split": "train", "val_split": "val",
        "options": {"num_images": 3, "image_size": [24, 32], "seed": 0}}


def _checkpoint(directory, seed: int, num_classes: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = deeplabv3plus(num_classes, "tiny")
    directory.mkdir(parents=True)
    run = {"data": DATA, "model": {"backbone": "tiny", "output_stride": 16, "backbone_weights": None}}
    save_training_state(directory, {"format": CHECKPOINT_FORMAT, "step": 7, "model": net.state_dict(), "optimizer": {},
                                    "scaler": None, "rng": {"seed": seed, "step": 7}, "weight_state": None,
                                    "weight_state_hash": "", "run": run})
    return net.state_dict()


def _study(tmp_path, classes=CLASSES) -> tuple[StudyData, dict[str, dict]]:
    """Five trials: t1..t3 completed, t4 failed (best values, no use), t5 kept off the front."""
    rows, saved = [], {}
    worst = {"t1": 0.10, "t2": 0.30, "t3": 0.20, "t4": 0.90, "t5": 0.80}
    std = {"t1": 0.05, "t2": 0.20, "t3": 0.10, "t4": 0.01, "t5": 0.01}
    ious = {"t1": [0.9, 0.1, 0.5, np.nan], "t2": [0.3, 0.3, 0.4, 0.5], "t3": [0.6, 0.2, 0.2, 0.7],
            "t4": [1.0, 1.0, 1.0, 1.0], "t5": [0.8, 0.8, 0.9, 0.9]}
    for i, tid in enumerate(worst):
        ckpt = tmp_path / f"trial_{tid}" / "checkpoint"
        if tid != "t4":
            saved[tid] = _checkpoint(ckpt, i, len(classes))
        rows.append({"trial_id": tid, "label": f"label {tid}", "status": "failed" if tid == "t4" else "completed",
                     "checkpoint": "" if tid == "t4" else str(ckpt), "worst_iou": worst[tid], "iou_std": std[tid],
                     "miou": float(np.nanmean(ious[tid])),
                     "front_guard": "violates front guard (mIoU 10.00 % < bound 20.00 %)" if tid == "t5" else "",
                     **{f"iou/{c}": v for c, v in zip(CLASSES, ious[tid])}})
    trials = pd.DataFrame(rows)
    study = StudyData("hand", str(tmp_path), trials, trials.iloc[0:0], pd.DataFrame(), "", {},
                      {"worst_iou": "max", "iou_std": "min"}, None, meta={"class_names": classes})
    return study, saved


def test_best_follows_the_objective_and_its_direction(tmp_path):
    study, _ = _study(tmp_path)
    assert best_trial(study, "worst_iou") == "t2"  # t4 failed, t5 violates the front guard
    assert best_trial(study, "iou_std") == "t1"  # minimised
    assert best_trial(study, "miou") == "t1"  # (0.9+0.1+0.5)/3: a column, registered direction (maximize)
    # bottom25_miou is no column: computed from iou/<class> (mean at or below the 25th percentile)
    def p25_mean(r):
        u = np.array([v for v in r if not math.isnan(v)])
        return u[u <= np.percentile(u, 25)].mean()

    expect = {t: p25_mean(r) for t, r in (("t1", [0.9, 0.1, 0.5, np.nan]), ("t2", [0.3, 0.3, 0.4, 0.5]),
                                          ("t3", [0.6, 0.2, 0.2, 0.7]))}
    assert expect == pytest.approx({"t1": 0.1, "t2": 0.3, "t3": 0.2})
    assert best_trial(study, "bottom25_miou") == max(expect, key=expect.get) == "t2"
    assert get_objective("bottom25_miou").direction == "maximize"


def test_model_returns_the_trained_network_in_eval_mode(tmp_path):
    study, saved = _study(tmp_path)
    for which, tid in (("best:worst_iou", "t2"), ("best", "t2"), ("t3", "t3"), ("best:iou_std", "t1")):
        net = study.model(which)
        assert not net.training and net.num_classes == 4
        got = net.state_dict()
        assert set(got) == set(saved[tid]) and all(torch.equal(got[k], saved[tid][k]) for k in got), which


@pytest.mark.parametrize("which, error, match", [
    ("nope", KeyError, "no trial 'nope' in study 'hand'"),
    ("best:no_such_objective", KeyError, "unknown objective 'no_such_objective'.*registered"),
    ("t4", FileNotFoundError, "t4 .*has no checkpoint"),
])
def test_model_errors_say_what_to_do(tmp_path, which, error, match):
    study, _ = _study(tmp_path)
    with pytest.raises(error, match=match):
        study.model(which)


def test_no_usable_trial_for_best(tmp_path):
    study, _ = _study(tmp_path)
    study.trials["status"] = "failed"
    with pytest.raises(FileNotFoundError, match="no completed trial with a checkpoint"):
        study.model("best:worst_iou")


def _numpy_confusion(net, ds, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            pred = net(x[None]).argmax(1)[0].numpy().ravel()
            y = y.numpy().ravel()
            keep = y != 255
            np.add.at(cm, (y[keep], pred[keep]), 1)
    return cm


def test_evaluate_split_scores_the_trial_on_its_val_split(tmp_path):
    from tce_ray.data import build_dataset
    from tce_ray.results.evaluate import evaluate_split, format_metrics

    classes = list(build_dataset("synthetic", "val", **DATA["options"]).class_names)
    study, _ = _study(tmp_path, classes)
    m = evaluate_split(study, "best:worst_iou", reference="t1")
    ds = build_dataset("synthetic", "val", augment=False, **DATA["options"])
    cm = _numpy_confusion(load_trial_model(study, "t2").network, ds, len(classes))
    assert m["trial_id"] == "t2" and m["split"] == "val" and m["images"] == 3 and m["step"] == 7
    assert np.array_equal(np.array(m["confusion"]), cm)
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    for c, t, u in zip(classes, tp, union):
        assert (m["iou"][c] is None) if u == 0 else m["iou"][c] == pytest.approx(t / u), c
    present = [v for v in m["iou"].values() if v is not None]
    assert m["criteria"]["miou"] == pytest.approx(np.mean(present)) and m["criteria"]["worst"] == min(present)
    assert m["objectives"]["worst_iou"] == pytest.approx(min(present)) and m["reference"] == "t1"
    assert "sorted_bottom25" in m["criteria"] and json.dumps(m)  # JSON-ready
    table = format_metrics(m)
    assert "Table 3 criteria (%, reference trial t1)" in table and f"{100 * m['criteria']['miou']:6.2f}" in table


def test_tce_evaluate_labels_a_folder_of_images(tmp_path, monkeypatch, capsys):
    from tce_ray.results import evaluate

    study, _ = _study(tmp_path)
    monkeypatch.setattr(evaluate, "_study", lambda s: study)
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(images / "one.jpg")
    Image.fromarray(rng.integers(0, 255, (17, 9, 3), dtype=np.uint8)).save(images / "two.png")
    (images / "readme.txt").write_text("not an image")
    out = tmp_path / "labels"
    assert evaluate.main(["study", "--trial", "t3", "--images", str(images), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "predictions.json", "two.png"]
    net = study.model("t3")
    from tce_ray.data.transforms import SegmentationTransform

    x, _ = SegmentationTransform(augment=False)(np.array(Image.open(images / "two.png").convert("RGB")), np.zeros((17, 9), np.uint8))
    with torch.no_grad():
        expect = net(x[None]).argmax(1)[0].numpy()
    got = np.array(Image.open(out / "two.png"))
    assert got.shape == (17, 9) and np.array_equal(got, expect)
    pred = json.loads((out / "predictions.json").read_text())
    assert pred["trial_id"] == "t3" and sum(pred["images"][1]["pixels"].values()) == 17 * 9
    assert "labelled 2 images" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--images", "/no/such/folder"], "is not a folder"),
    (["--trial", "zzz"], "no trial 'zzz'"),
    (["--trial", "best:nope"], "unknown objective 'nope'"),
])
def test_tce_evaluate_fails_with_one_line(tmp_path, monkeypatch, capsys, args, match):
    from tce_ray.results import evaluate

    study, _ = _study(tmp_path)
    monkeypatch.setattr(evaluate, "_study", lambda s: study)
    assert evaluate.main(["study", "--out", str(tmp_path / "o"), *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and __import__("re").search(match, err[0]), err


def test_tce_evaluate_is_a_console_script():
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tce-evaluate"] == "tce_ray.results.evaluate:main"
