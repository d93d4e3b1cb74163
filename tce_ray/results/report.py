"""A study's report: ``report.md`` with the paper's tables, and plots, from the Parquet files.

``python -m tce_ray.results.report results/<study>`` rebuilds ``report.md`` and ``plots/`` from
``trials.parquet``, ``history.parquet``, ``pareto.parquet`` and ``study.json`` alone (no Ray).

The MCCE reference is the mean per-class IoU of the MCCE group (``results.reference_group``:
the MCCE loss settings with the most completed trials; with one MCCE trial, that trial).

When a group (trials with the same loss settings, the seed aside: ``results.group_key``)
has two or more completed trials (``search.seeds``), the report opens with the groups:
their objectives, their per-class IoU and the paper's Table 3 criteria as mean ± std
(sample std, ddof = 1) over the completed seeds. Each trial's criteria are computed on its
own IoU with the MCCE group's mean IoU as the reference of the sorted bottom/top 25%, then
averaged. ``groups.parquet`` (one row per group, ``results.group_table``) is written next
to the report, and ``plots/pareto_groups.png`` shows the group means with ± std bars.

When an MCCE reference group exists, each other configuration is compared with it over
seeds (``results.reference_comparisons``): the difference of the means of mIoU, worst,
sorted bottom 25 % and std in percentage points, Welch's two-sided t-test p and a 95 %
percentile-bootstrap interval (``tce_ray.core.stats``), n seeds on each side.

Then the per-trial tables: the trials (status, partial ones "interrupted at step s/S",
objectives, mIoU, Pareto rank and, with a front guard, why a completed trial is kept off
the front: ``tce_ray.core.front_guard``), the Pareto front, the per-class IoU of every trial in percent (columns sorted by the MCCE reference's
IoU, lowest first, when an MCCE trial completed) and the Table 3 criteria
(``tce_ray.core.metrics.fairness_report`` with that reference; partial trials labelled with
their step), failed trials with their errors.
Plots (matplotlib, Agg): ``plots/pareto.png``, ``plots/per_class_iou.png``,
``plots/weights.png`` (class-weight trajectories of the stochastic-TCE trials).
Numbers print rounded half up (as the paper: 64.595 -> 64.60).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tce_ray.core.redact import redact
from tce_ray.results.tables import (
    CRITERIA,
    GUARD_COLUMN,
    SIGNIFICANCE_CRITERIA,
    StudyTables,
    group_key,
    group_label,
    group_table,
    local_output_dir,
    mean_iou_percent,
    read_tables,
    reference_comparisons,
    reference_group,
    trials_guard_bound,
)

__all__ = [
    "build_report", "render_markdown", "reference_trial", "reference_iou", "class_columns", "fmt", "fmt_pm",
    "has_seed_groups", "partial_status", "main",
]


def fmt(x: Any, digits: int = 2) -> str:
    """Round half up to ``digits`` decimals (of the value rounded to 9 decimals, so float
    noise does not decide); NaN/None -> '–'."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    q = Decimal(1).scaleb(-digits)
    # 9 decimals first: float noise (67.63499999999 from a %/fraction round trip) must not
    # turn a half into a down-rounding
    return str(Decimal(f"{v:.9f}").quantize(q, rounding=ROUND_HALF_UP))


def fmt_pm(mean: Any, std: Any, digits: int = 2) -> str:
    """``mean ± std``, each rounded half up (:func:`fmt`); a NaN std (one value) prints '–'."""
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


PERCENT_OBJECTIVES = frozenset({"miou", "worst_iou", "iou_std", "bottom25_miou", "p25_iou", "iou_gap"})
"""Objectives reported as IoU fractions: the report shows them in percent (a std or a gap in
percentage points). A registered objective whose name has ``iou`` in it is taken as one too."""


def in_percent(name: str) -> bool:
    """Whether the report shows metric ``name`` (stored as a fraction) in percent."""
    return name in PERCENT_OBJECTIVES or "iou" in name.lower()


def metric_header(name: str) -> str:
    """``worst_iou (%)``; a metric not in percent keeps its name."""
    return f"{name} (%)" if in_percent(name) else name


def fmt_metric(name: str, x: Any) -> str:
    """A stored metric value as the report shows it: IoU metrics in percent (2 decimals), others 4."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return fmt(x)
    return fmt(100.0 * v, 2) if in_percent(name) else fmt(v, 4)


def fmt_metric_pm(name: str, mean: Any, std: Any) -> str:
    """:func:`fmt_metric` of ``mean ± std``."""
    return f"{fmt_metric(name, mean)} ± {fmt_metric(name, std)}"


def class_columns(trials: pd.DataFrame) -> list[str]:
    """The ``iou/<class>`` columns in the order the trainer reported them."""
    return [c for c in trials.columns if c.startswith("iou/")]


def reference_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The MCCE reference: the first completed MCCE trial (explicit configurations come
    first in ``trials``), or None."""
    if "config/loss/name" not in trials or not len(trials):
        return None
    mcce = trials[(trials["config/loss/name"] == "mcce") & (trials["status"] == "completed")]
    return None if mcce.empty else mcce.iloc[0]


def reference_iou(trials: pd.DataFrame) -> tuple[np.ndarray | None, str]:
    """The MCCE reference's per-class IoU in percent (the mean over the completed trials of
    the reference group, NaN for a class absent from all of them) and a description of it;
    (None, "") without a completed MCCE trial."""
    key = reference_group(trials)
    cols = class_columns(trials)
    if key is None or not cols:
        return None, ""
    g = trials[[group_key(r) == key for r in trials.to_dict("records")]]
    vec = mean_iou_percent(g, cols)
    if vec is None:
        return None, ""
    done = g[g["status"] == "completed"]
    label = group_label(g)[0]
    if len(done) == 1:
        desc = f"trial `{done.iloc[0]['trial_id']}` ({label})"
    else:
        desc = f"the mean of the {len(done)} completed trials of group `{label}`"
    return vec, desc


def has_seed_groups(groups: pd.DataFrame) -> bool:
    """Whether some group has two or more completed trials (the grouped tables apply)."""
    return bool(len(groups)) and "n" in groups and bool((groups["n"] >= 2).any())


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _with_iou(trials: pd.DataFrame) -> pd.DataFrame:
    cols = class_columns(trials)
    if not cols:
        return trials.iloc[0:0]
    has = trials[cols].notna().any(axis=1) & trials["status"].isin(["completed", "stopped", "interrupted"])
    return trials[has]


@dataclass(frozen=True)
class _Classes:
    """The report's per-class columns (``iou/<class>``), their names and display order
    (by the MCCE reference's IoU, lowest first, when there is a reference)."""

    cols: list[str]
    names: list[str]
    order: list[int]
    ref_vec: np.ndarray | None
    ref_desc: str

    @classmethod
    def of(cls, trials: pd.DataFrame) -> "_Classes":
        cols = class_columns(trials)
        ref_vec, ref_desc = reference_iou(trials)
        return cls(cols, [c[len("iou/"):] for c in cols], _sorted_order(ref_vec, len(cols)), ref_vec, ref_desc)

    @property
    def sorted_names(self) -> list[str]:
        return [self.names[i] for i in self.order]

    def sorted_by(self, what: str) -> list[str]:
        """The sentence saying how the columns are ordered (``what``: "IoU" or "mean IoU")."""
        if self.ref_vec is None:
            return ["No completed MCCE trial: columns in class order.", ""]
        return [f"Columns sorted by the MCCE reference's {what} ({self.ref_desc}), lowest first.", ""]


_NO_REFERENCE = "No completed MCCE trial, so the sorted bottom/top 25% criteria (which need a reference) are left out."


def render_markdown(tables: StudyTables, plots: Sequence[str] = (), groups: pd.DataFrame | None = None) -> str:
    """The report's Markdown text (``groups``: :func:`~tce_ray.results.tables.group_table` of the
    trials, computed when not given): one function per section, in this order."""
    trials = tables.trials
    objectives = tables.objectives or {}
    if groups is None:
        groups = group_table(trials, objectives, tables.front_guard) if len(trials) else pd.DataFrame()
    classes = _Classes.of(trials)
    total_steps = tables.meta.get("total_steps")
    out = _summary_section(tables, objectives)
    if has_seed_groups(groups):
        g = groups[groups["n"] > 0]
        out += _groups_section(g, objectives)
        if classes.cols:
            out += _groups_per_class_section(g, classes) + _groups_table3_section(g, classes)
    if classes.cols:
        out += _significance_section(trials, classes)
    out += _trials_section(trials, objectives, total_steps) + _pareto_section(tables.pareto, objectives, tables)
    with_iou = _with_partial_labels(_with_iou(trials), total_steps)
    if classes.cols and len(with_iou):
        out += _per_class_section(with_iou, classes) + _table3_section(with_iou, classes)
    out += _failures_section(trials) + _plots_section(plots)
    return "\n".join(out)


def _summary_section(tables: StudyTables, objectives: dict[str, str]) -> list[str]:
    """Title, trial counts by status, objectives, sampler and scheduler."""
    trials, meta = tables.trials, tables.meta
    out = [f"# Study `{meta.get('name', 'study')}`", ""]
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    out.append(
        f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."
        if counts else "No trials."
    )
    if objectives:
        out.append(
            "Objectives: " + ", ".join(f"`{n}` ({'higher' if m == 'max' else 'lower'} is better)" for n, m in objectives.items()) + "."
        )
    if meta.get("sampler"):
        out.append(f"Sampler: {meta['sampler']}; scheduler: {meta.get('scheduler') or 'none'}.")
    if meta.get("scheduler"):
        out.append(
            "Note: trials stopped early by the scheduler are told to Optuna as complete with "
            "their partial values; they are left out of the Pareto front below."
        )
    guard = tables.front_guard
    if guard is not None:
        out.append(guard.describe(*trials_guard_bound(trials, guard)))
    return out + [""]


def partial_status(r: dict[str, Any], total_steps: Any = None) -> str:
    """A trial's status; a partial (stopped, interrupted) trial with the step its values
    come from: ``interrupted at step 400/1200``."""
    status = str(r.get("status", ""))
    if status not in ("stopped", "interrupted"):
        return status
    step = r.get("step")
    try:
        step_text = str(int(step))
    except (TypeError, ValueError):
        return status
    total = f"/{int(total_steps)}" if isinstance(total_steps, (int, float)) and math.isfinite(total_steps) else ""
    return f"{status} at step {step_text}{total}"


def _with_partial_labels(trials: pd.DataFrame, total_steps: Any = None) -> pd.DataFrame:
    """``trials`` with the partial ones' labels suffixed ``(interrupted at step 400/1200)``."""
    if not len(trials) or "label" not in trials:
        return trials
    out = trials.copy()
    for i, r in zip(out.index, out.to_dict("records")):
        st = partial_status(r, total_steps)
        if st != r.get("status"):
            out.at[i, "label"] = f"{r['label']} ({st})"
    return out


def _trials_section(trials: pd.DataFrame, objectives: dict[str, str], total_steps: Any = None) -> list[str]:
    """Every trial: status (partial ones with their step), objectives, mIoU, Pareto rank
    and, with a front guard, why a completed trial is not ranked."""
    guarded = GUARD_COLUMN in trials and bool(trials[GUARD_COLUMN].fillna("").astype(bool).any())
    header = ["#", "trial", "settings", "status"] + [metric_header(n) for n in objectives] + ["mIoU (%)", "Pareto rank"]
    header += ["front guard"] if guarded else []
    rows = []
    for i, r in enumerate(trials.to_dict("records")):
        rows.append(
            [i, r["trial_id"], r.get("label", ""), partial_status(r, total_steps)]
            + [fmt_metric(n, r.get(n)) for n in objectives]
            + [fmt_metric("miou", r.get("miou")), r.get("pareto_rank", -1) if r.get("pareto_rank", -1) >= 0 else "–"]
            + ([r.get(GUARD_COLUMN) or ""] if guarded else [])
        )
    out = ["## Trials", ""]
    if trials["status"].isin(["stopped", "interrupted"]).any() if len(trials) else False:
        out += ["Stopped and interrupted trials hold the values of their last report (the step shown); "
                "they are never ranked.", ""]
    return out + [_md_table(header, rows), ""]


def _pareto_section(front: pd.DataFrame, objectives: dict[str, str], tables: StudyTables | None = None) -> list[str]:
    """The non-dominated completed trials (that the front guard lets through)."""
    out = ["## Pareto front", ""]
    guard = tables.front_guard if tables is not None else None
    if not len(front):
        if guard is not None:
            return out + ["No completed trial with finite objectives passes the front guard.", ""]
        return out + ["No completed trial with finite objectives.", ""]
    rows = [[r["trial_id"], r.get("label", "")] + [fmt_metric(n, r.get(n)) for n in objectives] for r in front.to_dict("records")]
    what = ("Non-dominated completed trials among those the front guard lets through"
            if guard is not None else "Non-dominated completed trials")
    return out + [
        f"{what} (each objective in its own direction):",
        "",
        _md_table(["trial", "settings"] + [metric_header(n) for n in objectives], rows),
        "",
    ]


def _per_class_section(with_iou: pd.DataFrame, classes: _Classes) -> list[str]:
    """Per-class IoU in percent of every trial that has one."""
    rows = [
        [r.get("label", r["trial_id"])] + [fmt(100.0 * r[classes.cols[i]]) for i in classes.order]
        for r in with_iou.to_dict("records")
    ]
    return ["## Per-class IoU (%)", ""] + classes.sorted_by("IoU") + [_md_table(["trial"] + classes.sorted_names, rows), ""]


def _table3_section(with_iou: pd.DataFrame, classes: _Classes) -> list[str]:
    """The paper's Table 3 criteria of every trial (``fairness_report`` with the MCCE reference)."""
    from tce_ray.core.metrics import fairness_report

    ref_vec = classes.ref_vec
    out = ["## Fairness criteria (the paper's Table 3)", ""]
    if ref_vec is None:
        out += [_NO_REFERENCE, ""]
    else:
        out += [f"Sorted bottom/top 25%: classes ordered by the MCCE reference's IoU ({classes.ref_desc}).", ""]
    header = ["trial", "mIoU"] + (["sorted bottom 25%", "sorted top 25%"] if ref_vec is not None else [])
    header += ["p25 (mean ≤)", "p75 (mean ≥)", "worst", "std"]
    rows, absent_notes = [], []
    for r in with_iou.to_dict("records"):
        u = np.array([r[c] for c in classes.cols], dtype=np.float64) * 100.0
        if np.all(np.isnan(u)):
            continue
        rep = fairness_report(u, reference=ref_vec, class_names=classes.names)
        label = r.get("label", r["trial_id"])
        row = [label, fmt(rep["miou"])]
        if ref_vec is not None:
            row += [fmt(rep["sorted_bottom25"]), fmt(rep["sorted_top25"])]
        row += [
            f"{fmt(rep['p25'])} ({fmt(rep['p25_mean'])})",
            f"{fmt(rep['p75'])} ({fmt(rep['p75_mean'])})",
            f"{fmt(rep['worst'])} ({rep['worst_class']})",
            fmt(rep["std"]),
        ]
        rows.append(row)
        if rep["absent"]:
            absent_notes.append(f"- {label}: {', '.join(map(str, rep['absent']))}")
    out += [_md_table(header, rows), ""]
    out.append("std is the sample standard deviation (ddof = 1); absent classes (union 0) are excluded everywhere.")
    if absent_notes:
        out += ["", "Classes absent from the evaluation (excluded):", *absent_notes]
    return out + [""]


def _failures_section(trials: pd.DataFrame) -> list[str]:
    """The failed trials with their one-line errors (nothing when none failed)."""
    failed = trials[trials["status"] == "failed"] if len(trials) else trials
    if not len(failed):
        return []
    rows = [[r["trial_id"], r.get("label", ""), r["error"]] for r in failed.to_dict("records")]
    return ["## Failed trials", "", _md_table(["trial", "settings", "error"], rows), ""]


def _plots_section(plots: Sequence[str]) -> list[str]:
    if not plots:
        return []
    return ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]


def _groups_section(g: pd.DataFrame, objectives: dict[str, str]) -> list[str]:
    """The groups (a configuration's seeds): objectives and mIoU as mean ± std, group Pareto rank."""
    out = [
        "## Configurations over seeds (mean ± std)",
        "",
        "A group is the trials with the same loss settings, the seed aside (the seeds of one "
        "explicit configuration; a sampled trial is a group of its own). Values are the mean ± "
        "sample std (ddof = 1) over the group's completed trials (n); '–': fewer than two. "
        "Group Pareto rank: non-dominated sorting of the groups' mean objectives. "
        "The per-trial tables follow further down.",
        "",
    ]
    guarded = GUARD_COLUMN in g and bool(g[GUARD_COLUMN].fillna("").astype(bool).any())
    header = ["group", "n", "seeds"] + [metric_header(n) for n in objectives] + ["mIoU (%)", "group Pareto rank"] + (["front guard"] if guarded else [])
    rows = []
    for r in g.to_dict("records"):
        rank = r.get("pareto_rank", -1)
        rows.append(
            [r["label"], r["n"], ", ".join(str(x) for x in json.loads(r["seeds"]))]
            + [fmt_metric_pm(n, r.get(f"{n}/mean"), r.get(f"{n}/std")) for n in objectives]
            + [fmt_metric_pm("miou", r.get("miou/mean"), r.get("miou/std")), rank if rank >= 0 else "–"]
            + ([r.get(GUARD_COLUMN) or ""] if guarded else [])
        )
    return out + [_md_table(header, rows), ""]


def _signed(x: float, digits: int = 2) -> str:
    s = fmt(x, digits)
    return s if s.startswith("-") or s == "–" else "+" + s


def _significance_section(trials: pd.DataFrame, classes: _Classes) -> list[str]:
    """Each configuration against the MCCE reference over seeds: difference of the means
    (percentage points), Welch's p and a 95 % bootstrap interval, n seeds on each side."""
    comp = reference_comparisons(trials)
    if not len(comp):
        return []
    out = [
        "## Against the MCCE reference, over seeds",
        "",
        f"Each configuration's mean minus the reference's ({classes.ref_desc}) over their completed seeds, in "
        "percentage points, with Welch's two-sided t-test p and a 95 % percentile-bootstrap interval of the "
        "difference (seeds resampled within each side; tce_ray.core.stats). n: the configuration's seeds, n ref: the "
        "reference's. std: lower is better. With 2-3 seeds these figures are weak (few degrees of freedom, a "
        "bootstrap over 3 values is too narrow); 'n/a': fewer than two seeds on a side.",
        "",
    ]
    titles = dict(SIGNIFICANCE_CRITERIA)
    header = ["configuration", "n", "n ref"] + [f"Δ {titles[k]}" for k, _ in SIGNIFICANCE_CRITERIA]
    rows = []
    for key, g in comp.groupby("group", sort=False):
        first = g.iloc[0]
        cells = {r["criterion"]: _cell(r) for r in g.to_dict("records")}
        rows.append([first["label"], int(first["n"]), int(first["n_ref"])]
                    + [cells.get(k, "–") for k, _ in SIGNIFICANCE_CRITERIA])
    return out + [_md_table(header, rows), ""]


def _cell(r: dict[str, Any]) -> str:
    """``+2.31 (p=0.081; [-0.52, 4.10])``; without a p: ``+2.31 (n/a)``."""
    d = _signed(r["diff"])
    if not math.isfinite(r["p_welch"]):
        return f"{d} (n/a)"
    return f"{d} (p={fmt(r['p_welch'], 3)}; [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}])"


def _groups_per_class_section(g: pd.DataFrame, classes: _Classes) -> list[str]:
    """Per-class IoU of the groups in percent, mean ± std over seeds."""
    cols = classes.cols
    rows = [
        [r["label"]] + [fmt_pm(100.0 * r[f"{cols[i]}/mean"], 100.0 * r[f"{cols[i]}/std"]) for i in classes.order]
        for r in g.to_dict("records")
    ]
    return (
        ["## Per-class IoU (%), mean ± std over seeds", ""]
        + classes.sorted_by("mean IoU")
        + [_md_table(["group"] + classes.sorted_names, rows), ""]
    )


def _groups_table3_section(g: pd.DataFrame, classes: _Classes) -> list[str]:
    """The groups' Table 3 criteria, mean ± std over seeds (from ``group_table``)."""
    out = ["## Fairness criteria (the paper's Table 3), mean ± std over seeds", ""]
    crit = [(k, title) for k, title in CRITERIA if classes.ref_vec is not None or not k.startswith("sorted_")]
    if classes.ref_vec is not None:
        out += [
            "Each seed's criteria are computed on its own per-class IoU; for the sorted bottom/top 25% "
            f"the classes are ordered by the MCCE group's MEAN per-class IoU ({classes.ref_desc}), the same "
            "reference for every trial (the MCCE seeds included). Then mean ± std over the seeds. "
            "p25/p75: percentiles of the trial's own IoU; mean ≤ p25 / mean ≥ p75: the mean over the "
            "classes at or below / above them. std (last column) is each trial's spread of the "
            "per-class IoU (ddof = 1).",
            "",
        ]
    else:
        out += [_NO_REFERENCE, ""]
    rows = [
        [r["label"], r["n"]] + [fmt_pm(r[f"table3/{k}/mean"], r[f"table3/{k}/std"]) for k, _ in crit]
        for r in g.to_dict("records")
    ]
    return out + [_md_table(["group", "n"] + [title for _, title in crit], rows), ""]


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path, dpi: int = 120) -> bool:
    """Lay out, write and close ``fig``; True (a plot was made)."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    _atomic_local(path, buf.getvalue())
    return True


PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442",
           "#8C564B", "#999999")
"""Ten clearly different colours (Okabe-Ito's eight, brown, grey); after ten, the markers and
line styles change too, so no two of the first ``len(PALETTE) x len(MARKERS)`` series look alike."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def series_style(j: int) -> dict[str, Any]:
    """Colour, marker and line style of the ``j``-th series of a plot (the one style source)."""
    k = j // len(PALETTE)
    return {"color": PALETTE[j % len(PALETTE)], "marker": MARKERS[k % len(MARKERS)],
            "linestyle": LINESTYLES[k % len(LINESTYLES)]}


def _percent_axis(ax: Any, axis: str = "y", from_zero: bool = True) -> None:
    """An IoU axis in percent stays within 0..100 (no negative IoU, e.g. from an error bar):
    bars start at 0; a scatter or a curve (``from_zero=False``) keeps its own lower limit
    where that is above 0."""
    get, put = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    lo, hi = get()
    lo = 0.0 if from_zero else max(0.0, lo)
    hi = min(100.0, max(hi, lo + 1.0))
    put(lo, hi)


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _label_points(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str]) -> list[Any]:
    """Label points without overprinting: each label tries offsets around its point, nearest
    first, and takes the first whose text box overlaps no point, no label placed before and
    nothing outside the axes (else the least-overlapping one). A label set off further than
    the first ring is joined to its point by a thin grey line. Call ``fig.canvas.draw()``
    (and set the limits) first: the boxes are measured in pixels."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    rings = [4, -10] + [v for k in range(14, 100, 10) for v in (k, -k - 6)]
    offsets = [(dx, dy) for dy in rings for dx in (6, -6)] + [(dx, dy) for dy in rings for dx in (40, -40)]
    # the points themselves are obstacles too (a label must not hide another point)
    pts = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)])) if len(xs) else []
    placed: list[Any] = [Bbox.from_extents(px - 5, py - 5, px + 5, py + 5) for px, py in pts]
    frame = ax.get_window_extent(renderer)
    out = []
    for x, y, text in zip(xs, ys, texts):
        best, best_box, best_overlap = None, None, None
        for dx, dy in offsets:
            far = abs(dy) > 14 or abs(dx) > 6
            a = ax.annotate(text, (x, y), fontsize=6, xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx > 0 else "right", va="bottom",
                            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 3}
                            if far else None)
            a.set_in_layout(False)  # placed in the final axes box: tight_layout must not move it
            a.update_positions(renderer)
            box = Text.get_window_extent(a, renderer)  # the text alone, not its line
            # overlap with what is placed, plus (ten times worse) the part outside the axes
            outside = box.width * box.height - _overlap(box, frame)
            overlap = sum(_overlap(box, b) for b in placed) + 10.0 * outside
            if best is None or overlap < best_overlap:
                if best is not None:
                    best.remove()
                best, best_box, best_overlap = a, box, overlap
            else:
                a.remove()
            if overlap == 0:
                break
        placed.append(best_box)
        out.append(best)
    return out


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, w) * max(0.0, h)


def _label_objective_axes(ax: Any, modes: dict[str, str], objectives: Sequence[str], suffix: str = "") -> None:
    """Label a Pareto plot's axes with the first two objectives, their directions and units;
    an IoU axis in percent starts at 0."""
    x, y = objectives[0], objectives[1]
    ax.set_xlabel(f"{metric_header(x)} ({'↑' if modes[x] == 'max' else '↓'}){suffix}")
    ax.set_ylabel(f"{metric_header(y)} ({'↑' if modes[y] == 'max' else '↓'}){suffix}")
    if in_percent(x):
        _percent_axis(ax, "x", from_zero=False)
    if in_percent(y):
        _percent_axis(ax, "y", from_zero=False)
    if len(objectives) > 2:
        ax.set_title(f"first two of {len(objectives)} objectives", fontsize=8)


def _class_axes(plt: Any, cols: list[str], n_series: int = 1) -> tuple[Any, Any]:
    """A figure wide enough for one group of ``n_series`` bars per class."""
    return plt.subplots(figsize=(min(40.0, max(6, (0.3 + 0.12 * n_series) * len(cols) + 2)), 4.5))


def _label_class_axes(ax: Any, cols: list[str], order: list[int], ylabel: str, title: str) -> None:
    ax.set_xticks(np.arange(len(cols)), [cols[i][4:] for i in order], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)


def plot_pareto(tables: StudyTables, path: Path) -> bool:
    """Scatter of the first two objectives (all trials grey, the front highlighted); one
    objective: a bar per trial. Returns False when nothing can be drawn."""
    objectives = list(tables.objectives)
    t = tables.trials
    if not objectives or not len(t) or any(o not in t for o in objectives):
        return False
    done = t[t["status"] == "completed"]
    if done.empty:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(objectives) == 1:
        o = objectives[0]
        ax.bar(range(len(done)), _shown(o, done[o]))
        ax.set_xticks(range(len(done)), done["label"], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(metric_header(o))
        if in_percent(o):
            _percent_axis(ax)
    else:
        x, y = objectives[0], objectives[1]
        ax.scatter(_shown(x, done[x]), _shown(y, done[y]), c="0.6", label="trials")
        front = done[done["pareto_rank"] == 0].sort_values(x)
        ax.plot(_shown(x, front[x]), _shown(y, front[y]), "o-", c=PALETTE[3], label="Pareto front")
        if GUARD_COLUMN in done:
            kept_off = done[done[GUARD_COLUMN].fillna("") != ""]
            if len(kept_off):
                ax.scatter(_shown(x, kept_off[x]), _shown(y, kept_off[y]), marker="x", c="k",
                           label="kept off by the front guard")
        _label_objective_axes(ax, tables.objectives, objectives)
        # the front's trials by name, placed so that no two labels overprint; the rest are grey dots
        ax.legend(fontsize=7)
        fig.tight_layout()  # the final axes box first (_save's tight_layout then changes nothing)
        fig.canvas.draw()
        _label_points(ax, list(_shown(x, front[x])), list(_shown(y, front[y])), list(front["label"]))
    return _save(plt, fig, path)


def _shown(name: str, values: Any) -> Any:
    """Stored values of metric ``name`` as plotted: IoU metrics in percent."""
    v = np.asarray(values, dtype=np.float64)
    return 100.0 * v if in_percent(name) else v


def _grouped_bars(ax: Any, n_classes: int, series: list[tuple[str, np.ndarray, np.ndarray | None]]) -> None:
    """One group of bars per class, one bar per series (with its error bar, if any)."""
    x = np.arange(n_classes)
    width = 0.8 / max(1, len(series))
    for j, (label, vals, err) in enumerate(series):
        st = series_style(j)
        ax.bar(x - 0.4 + width * (j + 0.5), vals, width, yerr=err, capsize=2 if err is not None else 0,
               color=st["color"], hatch=(None, "//", "..", "xx")[(j // len(PALETTE)) % 4],
               edgecolor="white" if j < len(PALETTE) else "k", linewidth=0.3, label=label,
               error_kw={"lw": 0.7})
    _percent_axis(ax)


def plot_per_class(tables: StudyTables, path: Path) -> bool:
    """Per-class IoU (%) of every trial, classes sorted by the MCCE reference."""
    t = _with_iou(tables.trials)
    cols = class_columns(tables.trials)
    if t.empty or not cols:
        return False
    ref, _ = reference_iou(tables.trials)
    order = _sorted_order(ref, len(cols))
    plt = _plt()
    fig, ax = _class_axes(plt, cols, len(t))
    _grouped_bars(ax, len(cols), [(r.get("label", r["trial_id"]), np.array([100.0 * r[cols[i]] for i in order]), None)
                                  for r in t.to_dict("records")])
    title = "per-class IoU" + (" (sorted by the MCCE reference)" if ref is not None else "")
    _label_class_axes(ax, cols, order, "IoU (%)", title)
    return _save(plt, fig, path)


def _sorted_order(ref_vec: np.ndarray | None, k: int) -> list[int]:
    """Class indices by the reference's IoU, lowest first, NaN last (class order without one)."""
    order = list(range(k))
    if ref_vec is not None:
        order = sorted(order, key=lambda i: (np.inf if math.isnan(ref_vec[i]) else ref_vec[i], i))
    return order


def plot_pareto_groups(tables: StudyTables, groups: pd.DataFrame, path: Path) -> bool:
    """The groups' mean of the first two objectives with ± std error bars (one objective:
    a bar per group with its error bar); the groups' Pareto front (of the means) joined.
    Returns False when nothing can be drawn."""
    objectives = list(tables.objectives)
    if not objectives or not has_seed_groups(groups) or any(f"{o}/mean" not in groups for o in objectives):
        return False
    g = groups[groups["n"] > 0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    if len(objectives) == 1:
        o = objectives[0]
        ax.bar(range(len(g)), _shown(o, g[f"{o}/mean"]), yerr=np.nan_to_num(_shown(o, g[f"{o}/std"])), capsize=3)
        ax.set_xticks(range(len(g)), [f"{lab} (n={n})" for lab, n in zip(g["label"], g["n"])],
                      rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(f"{metric_header(o)} (mean ± std over seeds)")
        if in_percent(o):
            _percent_axis(ax)
    else:
        x, y = objectives[0], objectives[1]
        for j, r in enumerate(g.to_dict("records")):
            st = series_style(j)
            ax.errorbar(_shown(x, r[f"{x}/mean"]), _shown(y, r[f"{y}/mean"]),
                        xerr=np.nan_to_num(_shown(x, r[f"{x}/std"])), yerr=np.nan_to_num(_shown(y, r[f"{y}/std"])),
                        fmt=st["marker"], ms=4, capsize=3, color=st["color"], label=f"{r['label']} (n={r['n']})")
        front = g[g["pareto_rank"] == 0].sort_values(f"{x}/mean")
        ax.plot(_shown(x, front[f"{x}/mean"]), _shown(y, front[f"{y}/mean"]), "-", c="0.3", lw=1, alpha=0.6,
                label="front of the means")
        _label_objective_axes(ax, tables.objectives, objectives, ", mean ± std over seeds")
        ax.legend(fontsize=6)
    return _save(plt, fig, path)


def plot_per_class_groups(tables: StudyTables, groups: pd.DataFrame, path: Path) -> bool:
    """Per-class IoU (%) of every group, mean ± std over seeds, classes sorted by the MCCE
    reference's mean IoU."""
    cols = class_columns(tables.trials)
    if not cols or not has_seed_groups(groups):
        return False
    g = groups[groups["n"] > 0]
    order = _sorted_order(reference_iou(tables.trials)[0], len(cols))
    plt = _plt()
    fig, ax = _class_axes(plt, cols, len(g))
    series = []
    for r in g.to_dict("records"):
        m = np.array([r[f"{cols[i]}/mean"] for i in order], dtype=np.float64) * 100.0
        e = np.nan_to_num(np.array([r[f"{cols[i]}/std"] for i in order], dtype=np.float64) * 100.0)
        series.append((f"{r['label']} (n={r['n']})", m, e))
    _grouped_bars(ax, len(cols), series)
    title = "per-class IoU of the groups (sorted by the MCCE reference)"
    _label_class_axes(ax, cols, order, "IoU (%), mean ± std over seeds", title)
    return _save(plt, fig, path)


def plot_weights(tables: StudyTables, path: Path) -> bool:
    """Class-weight trajectories (``weights/<class>`` vs step) of the stochastic-TCE trials."""
    h = tables.history
    wcols = [c for c in h.columns if str(c).startswith("weights/")]
    if h.empty or not wcols:
        return False
    ids = [tid for tid, g in h.groupby("trial_id", sort=False) if g[wcols].notna().any().any()]
    if not ids:
        return False
    labels = dict(zip(tables.trials["trial_id"], tables.trials["label"])) if len(tables.trials) else {}
    plt = _plt()
    fig, axes = plt.subplots(len(ids), 1, figsize=(8.5, 2.8 * len(ids)), squeeze=False)
    for ax, tid in zip(axes[:, 0], ids):
        g = h[h["trial_id"] == tid].sort_values("step")
        for j, c in enumerate(wcols):
            if g[c].notna().any():
                ax.plot(g["step"], g[c], label=c[len("weights/"):], ms=2, **series_style(j))
        ax.set_title(labels.get(tid, tid), fontsize=8)
        ax.set_xlabel("step")
        _integer_steps(ax)
        ax.set_ylabel("sampling weight")
        ax.legend(fontsize=5, ncol=1 if len(wcols) <= 12 else 2, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # beside the lines, not over them
    return _save(plt, fig, path, dpi=110)


def plot_curves(tables: StudyTables, path: Path) -> bool:
    """Training loss and mIoU against the step, one line per trial (from ``history.parquet``)."""
    h = tables.history
    panels = [c for c in ("train_loss", "miou") if c in h.columns and h[c].notna().any()]
    if h.empty or "step" not in h.columns or not panels:
        return False
    labels = dict(zip(tables.trials["trial_id"], tables.trials["label"])) if "label" in tables.trials.columns else {}
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    ids = list(dict.fromkeys(h["trial_id"]))
    for ax, col in zip(axes[0], panels):
        for j, tid in enumerate(ids):
            g = h[h["trial_id"] == tid].sort_values("step")
            g = g[g[col].notna()]
            if len(g):
                ys = g[col] if col == "train_loss" else _shown("miou", g[col])
                ax.plot(g["step"], ys, ms=2, label=labels.get(tid, tid), **series_style(j))
        ax.set_xlabel("step")
        _integer_steps(ax)
        ax.set_ylabel("training loss" if col == "train_loss" else "mIoU (%)")
        if col == "miou":
            _percent_axis(ax, from_zero=False)
        ax.set_title(f"{'training loss' if col == 'train_loss' else 'mIoU'} per trial", fontsize=9)
    # beside the plots, not over the lines (a study has tens of trials)
    axes[0][-1].legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                       ncol=1 if len(ids) <= 20 else 2)
    return _save(plt, fig, path, dpi=110)


def _confusion_trials(tables: StudyTables) -> list[tuple[str, pd.Series]]:
    """(title, trial) for the MCCE reference and the best completed trial on the first
    objective (once if they are the same trial), among trials with a ``checkpoint``."""
    t = tables.trials
    if "checkpoint" not in t.columns or not len(t):
        return []
    out = []
    ref = reference_trial(t)
    if ref is not None:
        out.append(("reference (MCCE)", ref))
    done = t[(t["status"] == "completed")] if "status" in t.columns else t
    objectives = [k for k in tables.objectives if k in done.columns]
    if objectives and len(done):
        key, mode = objectives[0], tables.objectives[objectives[0]]
        vals = pd.to_numeric(done[key], errors="coerce")
        if vals.notna().any():
            best = done.loc[vals.idxmax() if mode == "max" else vals.idxmin()]
            if ref is None or best["trial_id"] != ref["trial_id"]:
                out.append((f"best {key}", best))
    return out


def plot_confusion(tables: StudyTables, path: Path) -> bool:
    """Row-normalised confusion matrices (recall per true class) of the MCCE reference and
    the best trial, from the ``confusion.parquet`` of their last checkpoint (local only)."""
    from tce_ray.train.confusion_io import load_confusion

    mats = []
    for title, row in _confusion_trials(tables):
        try:
            cm = load_confusion(str(row["checkpoint"] or ""))
        except (FileNotFoundError, OSError):
            continue
        mats.append((f"{title}: {row.get('label', row['trial_id'])}", cm))
    if not mats:
        return False
    plt = _plt()
    k = len(mats[0][1])
    fig, axes = plt.subplots(1, len(mats), figsize=(max(4.5, 0.35 * k + 2.5) * len(mats), max(4, 0.35 * k + 2)),
                             squeeze=False)
    for ax, (title, cm) in zip(axes[0], mats):
        m = cm.to_numpy(dtype=np.float64)
        rows = m.sum(axis=1, keepdims=True)
        norm = np.divide(m, rows, out=np.full_like(m, np.nan), where=rows > 0)
        im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(np.arange(k), list(cm.columns), rotation=60, ha="right", fontsize=6)
        ax.set_yticks(np.arange(k), list(cm.index), fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true class")
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class's pixels")
    return _save(plt, fig, path, dpi=110)


def build_report(study_dir: str | Path) -> str:
    """Write ``report.md``, ``groups.parquet`` and ``plots/*.png`` into ``study_dir`` from its
    Parquet files (and study.json); returns the report's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = read_tables(study_dir)
    groups = (group_table(tables.trials, tables.objectives, tables.front_guard) if len(tables.trials)
              else pd.DataFrame({"group": pd.Series([], dtype=str)}))
    local, publish = local_output_dir(study_dir)
    plots_dir = local / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    buf = pa.BufferOutputStream()  # written whole, then renamed: a crash never leaves half a file
    pq.write_table(pa.Table.from_pandas(groups.reset_index(drop=True), preserve_index=False), buf)
    _atomic_local(local / "groups.parquet", buf.getvalue().to_pybytes())
    made = []
    for fn, fname in ((plot_pareto, "pareto.png"), (plot_per_class, "per_class_iou.png"), (plot_weights, "weights.png"),
                      (plot_curves, "curves.png"), (plot_confusion, "confusion.png")):
        if fn(tables, plots_dir / fname):
            made.append(f"plots/{fname}")
    for gfn, fname in ((plot_pareto_groups, "pareto_groups.png"), (plot_per_class_groups, "per_class_iou_groups.png")):
        if gfn(tables, groups, plots_dir / fname):
            made.append(f"plots/{fname}")
    text = render_markdown(tables, made, groups=groups)
    _atomic_local(local / "report.md", redact(text).encode("utf-8"))
    publish()
    return str(study_dir).rstrip("/") + "/report.md"


def _atomic_local(path: Path, data: bytes) -> None:
    from tce_ray.train.run_state import _atomic_local_write

    _atomic_local_write(path, data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tce_ray.results.report",
        description="Rebuild report.md, groups.parquet and plots/ of a study from its Parquet files (no Ray needed).",
    )
    parser.add_argument("study_dir", help="the study's result folder, <storage>/<name> (a local path or a URI)")
    args = parser.parse_args(argv)
    from tce_ray.results.tables import DamagedResultsError

    try:
        path = build_report(args.study_dir)
    except (FileNotFoundError, NotADirectoryError, DamagedResultsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
