"""The loss/mIoU curves plot (report.plot_curves) from history.parquet's columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tce_ray.results.report import plot_curves
from tce_ray.results.tables import StudyTables


def _tables(history: pd.DataFrame) -> StudyTables:
    trials = pd.DataFrame({"trial_id": ["a", "b"], "label": ["mcce", "tce_class t=1"]})
    return StudyTables(trials, history, trials.iloc[:0], {"objectives": [{"name": "worst_iou", "mode": "max"}]})


def test_curves_plot_is_written_from_the_history(tmp_path: Path) -> None:
    h = pd.DataFrame({"trial_id": ["a", "a", "b", "b"], "step": [2, 4, 2, 4],
                      "train_loss": [1.2, 0.9, 1.3, float("nan")], "miou": [0.1, 0.2, 0.15, 0.25]})
    out = tmp_path / "curves.png"
    assert plot_curves(_tables(h), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_curves_plot_skips_without_curves(tmp_path: Path) -> None:
    assert not plot_curves(_tables(pd.DataFrame({"trial_id": [], "step": []})), tmp_path / "x.png")
    no_metrics = pd.DataFrame({"trial_id": ["a"], "step": [2], "miou": [float("nan")]})
    assert not plot_curves(_tables(no_metrics), tmp_path / "y.png")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_confusion_plot_of_reference_and_best(tmp_path: Path) -> None:
    import numpy as np

    from tce_ray.train.confusion_io import save_confusion
    from tce_ray.results.report import _confusion_trials, plot_confusion

    dirs = []
    for i in range(3):
        d = tmp_path / f"ckpt{i}"
        d.mkdir()
        save_confusion(d, np.array([[5, 1], [i, 3]]), ["road", "pole"])
        dirs.append(str(d))
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "label": ["mcce", "x", "y"], "status": ["completed"] * 3,
                           "config/loss/name": ["mcce", "tce_class", "tce_class"], "worst_iou": [0.1, 0.3, 0.2],
                           "checkpoint": dirs})
    tables = StudyTables(trials, pd.DataFrame(), trials.iloc[:0], {"objectives": [{"name": "worst_iou", "mode": "max"}]})
    assert [(t, r["trial_id"]) for t, r in _confusion_trials(tables)] == [("reference (MCCE)", "a"), ("best worst_iou", "b")]
    out = tmp_path / "confusion.png"
    assert plot_confusion(tables, out) and out.stat().st_size > 5000
    # the reference is also the best: one matrix; no checkpoint files: no plot
    tables.trials.loc[0, "worst_iou"] = 0.9
    assert [r["trial_id"] for _, r in _confusion_trials(tables)] == ["a"]
    tables.trials["checkpoint"] = ["", "", ""]
    assert not plot_confusion(tables, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
