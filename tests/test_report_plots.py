"""The report's plots and tables as a reader sees them (issue 24 item 6): percent everywhere,
IoU axes within 0..100, per-class IoU as bars, integer step ticks, distinct series styles,
Pareto labels that do not overprint."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from matplotlib.text import Text

from tce_ray.results import report as R
from tce_ray.results.tables import StudyTables, read_tables
from test_report import OBJECTIVES, _write_paper_study, _write_seed_study



@pytest.fixture()
def figures(monkeypatch):
    """Keep each figure a plot function draws (instead of saving and closing it)."""
    kept: dict[str, object] = {}

    def keep(plt, fig, path, dpi=120):
        fig.tight_layout()  # as _save does, so the labels are checked where the PNG has them
        fig.canvas.draw()
        kept[path.name] = fig
        return True

    monkeypatch.setattr(R, "_save", keep)
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept.values():
        plt.close(fig)


def test_percent_helpers_by_hand() -> None:
    assert R.in_percent("worst_iou") and R.in_percent("iou_std") and R.in_percent("miou")
    assert R.in_percent("iou/road") and not R.in_percent("train_loss") and not R.in_percent("hypervolume")
    assert R.metric_header("worst_iou") == "worst_iou (%)" and R.metric_header("train_loss") == "train_loss"
    assert R.fmt_metric("worst_iou", 0.48456) == "48.46"
    assert R.fmt_metric("train_loss", 0.48456) == "0.4846"
    assert R.fmt_metric_pm("iou_std", 0.2707, 0.0604) == "27.07 ± 6.04"
    assert R.fmt_metric("worst_iou", float("nan")) == "–"


def test_tables_are_in_percent(tmp_path) -> None:
    d = _write_paper_study(tmp_path)
    R.build_report(d)
    text = (d / "report.md").read_text()
    assert "| worst_iou (%) | iou_std (%) | mIoU (%) | Pareto rank |" in text
    assert "| 0 | a_00000 | mcce [#0] | completed | 48.46 | 14.96 | 75.79 | 2 |" in text
    # no objective cell is a fraction any more
    trials = text.split("## Trials")[1].split("## Pareto front")[0]
    assert "0.4846" not in trials and "0.7579" not in trials


def test_series_styles_are_distinct() -> None:
    colours = [R.series_style(j)["color"] for j in range(len(R.PALETTE))]
    assert len(set(colours)) == len(R.PALETTE) == 10
    styles = {tuple(sorted(R.series_style(j).items())) for j in range(len(R.PALETTE) * len(R.MARKERS))}
    assert len(styles) == len(R.PALETTE) * len(R.MARKERS)


def test_per_class_iou_is_bars_from_zero(tmp_path, figures) -> None:
    from matplotlib.container import BarContainer

    d = _write_paper_study(tmp_path)
    t = read_tables(d)
    assert R.plot_per_class(t, d / "per_class_iou.png")
    ax = figures["per_class_iou.png"].axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    completed_or_partial = int(t.trials["worst_iou"].notna().sum())
    assert len(bars) == completed_or_partial and all(len(b) == 19 for b in bars)
    # the bars hold the IoU in percent: MCCE's wall is 48.46, its road 98.06 (the paper's Table 3)
    heights = [round(p.get_height(), 2) for b in bars for p in b]
    assert 48.46 in heights and 98.06 in heights and max(heights) <= 100.0
    lo, hi = ax.get_ylim()
    assert lo == 0.0 and hi <= 100.0
    assert len({b.patches[0].get_facecolor() for b in bars}) == len(bars)  # one colour per trial


def test_group_bars_have_error_bars_and_no_negative_axis(tmp_path, figures) -> None:
    from matplotlib.container import BarContainer, ErrorbarContainer

    d = _write_seed_study(tmp_path)
    t = read_tables(d)
    R.build_report(d)
    groups = pd.read_parquet(d / "groups.parquet")
    assert R.plot_per_class_groups(t, groups, d / "g.png")
    ax = figures["g.png"].axes[0]
    assert sum(isinstance(c, BarContainer) for c in ax.containers) == 3
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    # mcce's class d is 20 ± 13.2 (would not go negative) but the axis is pinned at 0 anyway
    assert ax.get_ylim()[0] == 0.0
    assert R.plot_pareto_groups(t, groups, d / "pg.png")
    ax = figures["pg.png"].axes[0]
    assert ax.get_xlim()[0] >= 0.0 and ax.get_ylim()[0] >= 0.0


def test_steps_are_integer_ticks(tmp_path, figures) -> None:
    d = _write_paper_study(tmp_path)
    t = read_tables(d)
    assert R.plot_curves(t, d / "curves.png") and R.plot_weights(t, d / "weights.png")
    for name in ("curves.png", "weights.png"):
        for ax in figures[name].axes:
            lo, hi = ax.get_xlim()
            ticks = [x for x in ax.get_xticks() if lo <= x <= hi]
            assert ticks and all(float(x).is_integer() for x in ticks), (name, ticks)
    miou_ax = figures["curves.png"].axes[1]
    assert miou_ax.get_ylabel() == "mIoU (%)"
    assert miou_ax.get_ylim()[1] > 70  # percent, not a fraction
    assert len(miou_ax.get_legend().get_texts()) == 5


def _crowded_front(n: int) -> StudyTables:
    """n trials on the front (higher worst IoU costs a higher std) within 2 x 1 points, and one
    dominated trial far off (worst IoU 0) that stretches the axes: the front's labels crowd."""
    worst = np.r_[np.linspace(0.50, 0.52, n), 0.0]
    std = np.r_[np.linspace(0.30, 0.31, n), 0.9]
    trials = pd.DataFrame({
        "trial_id": [f"t{i}" for i in range(n + 1)],
        "label": [f"tce_stochastic t={i} γ=0.1 [#{i}]" for i in range(n)] + ["mcce [#9]"],
        "status": "completed", "worst_iou": worst, "iou_std": std, "pareto_rank": [0] * n + [1],
    })
    meta = {"objectives": [{"name": k, "mode": v} for k, v in OBJECTIVES.items()]}
    return StudyTables(trials, pd.DataFrame(), trials[trials["pareto_rank"] == 0], meta)


def test_pareto_labels_do_not_overprint_and_axes_are_not_negative(tmp_path, figures) -> None:
    t = _crowded_front(6)
    assert R.plot_pareto(t, tmp_path / "pareto.png")
    fig = figures["pareto.png"]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in ax.texts]  # the text, not its line
    assert len(boxes) == 6
    for a, b in itertools.combinations(boxes, 2):
        assert R._overlap(a, b) == 0.0, (a, b)
    frame = ax.get_window_extent(renderer)  # and inside the axes (not over the tick labels)
    assert all(R._overlap(b, frame) == pytest.approx(b.width * b.height) for b in boxes)
    # a worst IoU of 0: autoscale would run below 0; the axis stops at 0
    assert ax.get_xlim()[0] == 0.0 and ax.get_ylim()[0] >= 0.0
    assert ax.get_xlabel().startswith("worst_iou (%)")


def test_label_points_by_hand(figures) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    fig.canvas.draw()
    # three points on top of each other: three labels, none over another
    out = R._label_points(ax, [5, 5, 5], [5, 5, 5], ["first label", "second label", "third label"])
    r = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, r) for a in out]
    assert all(R._overlap(a, b) == 0.0 for a, b in itertools.combinations(boxes, 2))
    plt.close(fig)
