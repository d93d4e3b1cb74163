"""A study's result tables: one row per trial, each trial's report history, the Pareto front.

Files in ``<storage>/<name>/`` (a local folder or a URI pyarrow can write to):

- ``trials.parquet``: one row per trial: ``trial_id``, ``label``, ``status`` (completed,
  failed, stopped [by the scheduler], interrupted, pending), ``error`` (one line: the
  root exception's type and message), ``error_detail`` (its end, up to 20000 characters)
  and ``error_file`` (the full traceback's file, ``trial_<id>/error.txt``),
  ``configuration`` (index of the explicit configuration, -1 sampled),
  ``number`` (the Optuna trial number: creation order), ``seed`` (the trial's
  ``train.seed``), ``group`` (the key of its group, see below),
  the trial config flattened (``config/loss/name``, ``config/loss/t``, ...), the final
  ``step``, ``train_loss``, ``miou``, every objective by name, ``iou/<class>`` (fractions),
  ``pareto_rank`` (0 = on the front; -1 not ranked), ``front_guard`` (with a front guard:
  why a completed trial is not ranked, else "") and ``path``.
- ``history.parquet``: every report of every trial (``trial_id``, ``step``, ``train_loss``,
  ``miou``, objectives, ``iou/<class>``, ``weights/<class>`` of stochastic TCE).
- ``pareto.parquet``: the rows of ``trials`` on the front (rank 0), objectives first.
- ``study.json``: name, objectives with modes, class names, the validated config.
- ``groups.parquet`` (written with the report, from ``trials.parquet`` alone): one row per
  group (:func:`group_table`).

A *group* is the trials that share their loss settings, the seed aside: the seeds of one
explicit configuration (``search.seeds``), or a sampled trial on its own. Its key
(:func:`group_key`) is the loss name and every loss setting the trial config holds
(``config/loss/*``) at full precision; two configurations listed with identical settings
therefore fall into one group.

The Pareto front is computed here from the trials' final objectives (non-dominated
sorting, each objective in its own direction) over the ``completed`` trials only: trials
a scheduler stopped early carry partial values and would distort it. With a front guard
(``front_guard`` in the study, :mod:`tce_ray.core.front_guard`) a completed trial whose mIoU
falls more than ``max_drop`` below the reference configuration's mean is not ranked
either (``pareto_rank`` -1, the ``front_guard`` column says why); no trial is ranked
while the reference has no completed trial.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tce_ray.core.front_guard import FrontGuard, guard_bound
from tce_ray.core.redact import redact, redact_obj

__all__ = [
    "non_dominated_ranks",
    "pareto_front",
    "rank_trials",
    "FrontGuard",
    "GUARD_COLUMN",
    "trials_guard_bound",
    "flatten_config",
    "summarize_error",
    "trial_label",
    "settings_label",
    "group_key",
    "group_label",
    "group_table",
    "mean_std",
    "mean_iou_percent",
    "reference_group",
    "reference_comparisons",
    "CRITERIA",
    "SIGNIFICANCE_CRITERIA",
    "collect_trials",
    "StudyTables",
    "write_tables",
    "read_tables",
    "study_fs",
    "DamagedResultsError",
    "read_json_lines",
]

_METRIC_RENAME = {"loss": "train_loss"}
_HISTORY_KEEP = re.compile(r"^(step|loss|miou|images_per_s|training_iteration|time_total_s|iou/.+|weights/.+)$")


# --------------------------------------------------------------------------- Pareto


def non_dominated_ranks(values: np.ndarray | Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front of the rest, ...

    ``values`` is [N, M]; ``modes[j]`` is "max" or "min" for column j. A row dominates
    another when it is at least as good in every objective and better in one. Rows with a
    NaN (or inf) get rank -1.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be [trials, objectives], got shape {v.shape}")
    if len(modes) != v.shape[1]:
        raise ValueError(f"{len(modes)} modes for {v.shape[1]} objectives")
    bad = [m for m in modes if m not in ("max", "min")]
    if bad:
        raise ValueError(f"modes must be 'max' or 'min', got {bad}")
    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    cost = v * sign  # minimise every column
    ranks = np.full(v.shape[0], -1, dtype=np.int64)
    remaining = [i for i in range(v.shape[0]) if np.all(np.isfinite(cost[i]))]
    rank = 0
    while remaining:
        sub = cost[remaining]
        front = []
        for a, i in enumerate(remaining):
            dominated = np.any(np.all(sub <= sub[a], axis=1) & np.any(sub < sub[a], axis=1))
            if not dominated:
                front.append(i)
        ranks[front] = rank
        remaining = [i for i in remaining if i not in set(front)]
        rank += 1
    return ranks


def pareto_front(trials: pd.DataFrame, objectives: Mapping[str, str], guard: FrontGuard | None = None) -> pd.DataFrame:
    """The completed trials on the front (``pareto_rank == 0``), sorted by the first
    objective (best first). ``objectives`` maps name -> mode. With ``guard`` (or a table
    that already has a ``front_guard`` column) a trial that violates the front guard is
    never on it (:func:`rank_trials`)."""
    if "pareto_rank" not in trials or guard is not None:
        trials = rank_trials(trials, objectives, guard)
    front = trials[trials["pareto_rank"] == 0]
    first, mode = next(iter(objectives.items()))
    return front.sort_values(first, ascending=(mode == "min")).reset_index(drop=True)


GUARD_COLUMN = "front_guard"
"""Column of ``trials`` (and ``groups``): why the front guard keeps a completed trial (group)
off the front; empty when it does not (or without a guard)."""


def reference_rows(trials: pd.DataFrame, guard: FrontGuard) -> pd.DataFrame:
    """The completed trials of the guard's reference configuration."""
    if not len(trials) or "configuration" not in trials:
        return trials.iloc[0:0]
    conf = pd.to_numeric(trials["configuration"], errors="coerce")
    return trials[(conf == guard.reference) & (trials["status"] == "completed")]


def trials_guard_bound(trials: pd.DataFrame, guard: FrontGuard) -> tuple[float, int]:
    """(bound, n): the reference configuration's mean ``guard.metric`` over its completed
    trials minus ``guard.max_drop``, and n; (NaN, 0) without a completed reference trial."""
    ref = reference_rows(trials, guard)
    vals = ref[guard.metric].to_numpy(dtype=np.float64) if guard.metric in ref else np.array([])
    return guard_bound(vals, guard.max_drop)


def guard_notes(values: Sequence[float] | np.ndarray, eligible: Sequence[bool] | np.ndarray, guard: FrontGuard,
                bound: float) -> list[str]:
    """Why each eligible row (a completed trial, a group with a completed trial) is kept off
    the front: ``violates front guard (mIoU 4.12 % < bound 41.30 %)`` (percent, as the report), or that the
    reference has not finished; "" for rows the guard lets through and ineligible rows."""
    out = []
    for v, ok in zip(np.asarray(values, dtype=np.float64), eligible):
        if not ok:
            out.append("")
        elif not math.isfinite(bound):
            out.append(f"front guard: reference configuration #{guard.reference} not finished (no bound yet)")
        elif not math.isfinite(v):
            out.append(f"front guard: no {guard.metric_label}")
        elif v < bound:
            out.append(f"violates front guard ({guard.metric_label} {100.0 * v:.2f} % < bound {100.0 * bound:.2f} %)")
        else:
            out.append("")
    return out


def rank_trials(trials: pd.DataFrame, objectives: Mapping[str, str], guard: FrontGuard | None = None) -> pd.DataFrame:
    """``trials`` with a ``pareto_rank`` column: non-dominated ranks of the completed trials
    that the front guard lets through; every other trial -1. With ``guard`` the
    ``front_guard`` column is (re)computed; without one an existing column is respected."""
    out = trials.copy()
    out["pareto_rank"] = -1
    if not len(out):
        if guard is not None:
            out[GUARD_COLUMN] = pd.Series([], dtype=str)
        return out
    completed = (out["status"] == "completed").to_numpy()
    if guard is not None:
        bound, _ = trials_guard_bound(out, guard)
        vals = out[guard.metric].to_numpy(dtype=np.float64) if guard.metric in out else np.full(len(out), np.nan)
        out[GUARD_COLUMN] = guard_notes(vals, completed, guard, bound)
    ok = completed.copy()
    if GUARD_COLUMN in out:
        ok &= (out[GUARD_COLUMN].fillna("") == "").to_numpy()
    done = out.index[ok]
    names = list(objectives)
    missing = [n for n in names if n not in out]
    if len(done) and not missing:
        vals = out.loc[done, names].to_numpy(dtype=np.float64)
        out.loc[done, "pareto_rank"] = non_dominated_ranks(vals, [objectives[n] for n in names])
    return out


# --------------------------------------------------------------------------- trials


def flatten_config(config: Mapping[str, Any], prefix: str = "config/") -> dict[str, Any]:
    """``{"loss": {"t": 1}}`` -> ``{"config/loss/t": 1}``; lists become JSON strings."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_config(v, key + "/"))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out


def summarize_error(error: BaseException | str | None) -> str:
    """One line naming the root error (``ValueError: ...``) from a (Ray-wrapped) error."""
    if error is None:
        return ""
    text = str(error) if isinstance(error, BaseException) else error
    if isinstance(error, BaseException):
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        if root is not error and str(root).strip():
            text = f"{type(root).__name__}: {root}\n" + text
    # the last "SomeError: message" line of a traceback text is the root cause
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pattern = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt)|RuntimeError)\b.*:")
    hits = [ln for ln in lines if pattern.match(ln) and not ln.startswith(("ray.exceptions.RayTaskError", "RayTaskError"))]
    line = hits[-1] if hits else (lines[-1] if lines else type(error).__name__)
    return line[:500]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


_NOT_RUN = ("study", "search")  # sections of a trial config that are not the run's


def _run_items(row: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(section, key, value) of every run value the row's trial config holds (``config/loss/t``,
    ``config/sampling/image_power``), the loss name excluded."""
    out = []
    for k, v in row.items():
        parts = str(k).split("/")
        if len(parts) == 3 and parts[0] == "config" and parts[1] not in _NOT_RUN and k != "config/loss/name":
            if not _missing(v):
                out.append((parts[1], parts[2], v))
    return out


def _loss_items(row: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(setting, value) of every loss setting the row's trial config holds, name excluded."""
    return [(key, v) for section, key, v in _run_items(row) if section == "loss"]


def settings_label(row: Mapping[str, Any]) -> str:
    """Short label of a trial's settings: ``tce_stochastic t=0.1 γ=0.2 signal=class``. The
    loss settings with a short label in the registry come first, in its order, each left
    out at a value its ``label_omit`` names (the default tilt signal ``batch``, a zero
    weight floor); other settings follow by full name (``focal_alpha=...``, then values of
    other run sections such as ``sampling``)."""
    from tce_ray.core.registry import list_settings  # the built-in settings live in tce_ray.core.losses

    name = row.get("config/loss/name")
    parts = [str(name if not _missing(name) else "?")]
    labelled = [s for s in list_settings() if s.label is not None]
    for s in labelled:
        v = row.get(f"config/loss/{s.name}")
        if not _missing(v) and not any(v == x for x in s.label_omit):
            parts.append(f"{s.label}={_g(v)}")
    known = {s.name for s in labelled}
    parts += [f"{k}={_g(v)}" for k, v in sorted(_loss_items(row)) if k not in known]
    parts += [f"{k}={_g(v)}" for sec, k, v in sorted(_run_items(row)) if sec != "loss"]
    return " ".join(parts)


def trial_label(row: Mapping[str, Any], *, with_seed: bool = False) -> str:
    """Short label of a trial: its :func:`settings_label`, ``[#i]`` for explicit
    configuration i and, with ``with_seed``, ``seed=s``."""
    parts = [settings_label(row)]
    cfg = row.get("configuration")
    if not _missing(cfg) and int(cfg) >= 0:
        parts.append(f"[#{int(cfg)}]")
    seed = row.get("seed")
    if with_seed and not _missing(seed) and int(seed) >= 0:
        parts.append(f"seed={int(seed)}")
    return " ".join(parts)


def group_key(row: Mapping[str, Any]) -> str:
    """The key of a trial's group: its loss name and every run value of its trial config
    (loss settings by name, other sections as ``section.key``; sorted, numbers at full
    precision), the seed ignored: ``tce_stochastic gamma=0.1 t=0.1 tilt_signal=batch``."""
    name = row.get("config/loss/name")
    parts = [str(name if not _missing(name) else "?")]
    items = [(k if sec == "loss" else f"{sec}.{k}", v) for sec, k, v in _run_items(row)]
    for k, v in sorted(items):
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            v = repr(float(v))  # 1 and 1.0 (an int column after a Parquet round trip) agree
        parts.append(f"{k}={v}")
    return " ".join(parts)


def _g(v: Any) -> str:
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return str(v)


@dataclass
class TrialRecord:
    """What :func:`collect_trials` needs of one trial (a Tune ``Result`` adapts to it)."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: pd.DataFrame | None = None
    error: BaseException | str | None = None
    path: str = ""
    error_file: str = ""
    """Where the full error (traceback) of a failed trial was written (``error.txt``)."""


def records_from_result_grid(grid: Any) -> list[TrialRecord]:
    """Adapt a ``ray.tune.ResultGrid`` (any iterable of ``Result``) to records."""
    records = []
    for i, r in enumerate(grid):
        metrics = dict(r.metrics or {})
        path = str(getattr(r, "path", "") or "")
        tid = metrics.get("trial_id") or _trial_id_from_path(path) or f"trial_{i:05d}"
        try:
            hist = r.metrics_dataframe
        except Exception:  # noqa: BLE001 - a missing progress file is "no history"
            hist = None
        records.append(TrialRecord(str(tid), dict(r.config or {}), metrics, hist, r.error, path))
    return records


def _trial_id_from_path(path: str) -> str | None:
    m = re.match(r"^trial_(\w+)$", os.path.basename(path.rstrip("/")))
    return m.group(1) if m else None


def collect_trials(
    records: Iterable[TrialRecord],
    objectives: Mapping[str, str],
    *,
    total_steps: int,
    stopped_status: str = "interrupted",
    default_seed: int = -1,
    guard: FrontGuard | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) DataFrames from the trials' records.

    Status: ``failed`` (an error, or a missing / non-finite objective at the end),
    ``completed`` (reached ``total_steps``), ``pending`` (never reported), else
    ``stopped_status`` ("stopped" when a scheduler may stop trials, "interrupted"
    otherwise). Rows are ordered explicit configurations first, then by creation order
    (the Optuna trial number in the config's ``study/number``), then trial id. ``seed`` is
    the config's ``study/seed`` (``default_seed`` when it has none); labels name the seed
    when the trials have more than one. ``guard``: the study's front guard (the
    ``front_guard`` column; violating trials are not ranked).
    """
    rows: list[dict[str, Any]] = []
    histories: list[pd.DataFrame] = []
    for rec in records:
        row = _trial_row(rec, objectives, default_seed)
        row.update(_trial_outcome(rec, row, objectives, total_steps, stopped_status))
        rows.append(row)
        if rec.history is not None and len(rec.history):
            histories.append(_trial_history(rec, objectives))
    trials = _order_label_rank(pd.DataFrame(rows), objectives, guard)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame({"trial_id": pd.Series([], dtype=str)})
    return trials, history


def _trial_row(rec: TrialRecord, objectives: Mapping[str, str], default_seed: int) -> dict[str, Any]:
    """A trial's id, flattened config, study bookkeeping and final metrics."""
    m = rec.metrics
    row: dict[str, Any] = {"trial_id": rec.trial_id}
    row.update(flatten_config(rec.config))
    study = rec.config.get("study") if isinstance(rec.config.get("study"), dict) else {}
    conf, number, seed = study.get("configuration"), study.get("number"), study.get("seed")
    row["configuration"] = int(conf) if conf is not None else -1
    row["number"] = int(number) if number is not None else -1
    row["seed"] = int(seed) if seed is not None else int(default_seed)
    row["step"] = _num(m.get("step"))
    row["train_loss"] = _num(m.get("loss"))
    row["miou"] = _num(m.get("miou"))
    row["checkpoint"] = str(m.get("checkpoint_path") or "")  # the last report's Train checkpoint (TuneReportCallback)
    for name in objectives:
        row[name] = _num(m.get(name))
    for k, v in m.items():
        if k.startswith("iou/"):
            row[k] = _num(v)
    return row


def _trial_outcome(
    rec: TrialRecord, row: Mapping[str, Any], objectives: Mapping[str, str], total_steps: int, stopped_status: str
) -> dict[str, Any]:
    """``status``, ``error``, ``error_detail`` and ``path`` of a trial (see :func:`collect_trials`)."""
    error = summarize_error(rec.error) if rec.error is not None else ""
    detail = str(rec.error)[-20000:] if rec.error is not None else ""
    if not error and rec.metrics:
        bad = [n for n in objectives if not math.isfinite(row[n])]
        if bad and (row["step"] >= total_steps):
            error = f"objective(s) {', '.join(bad)} missing or not finite at the last report"
    if error:
        status = "failed"
    elif not rec.metrics or math.isnan(row["step"]):
        status = "pending"
    elif row["step"] >= total_steps:
        status = "completed"
    else:
        status = stopped_status
    return {"status": status, "error": error, "error_detail": detail, "error_file": rec.error_file if error else "",
            "path": rec.path}


def _trial_history(rec: TrialRecord, objectives: Mapping[str, str]) -> pd.DataFrame:
    """The kept columns of a trial's reports (``_HISTORY_KEEP`` and the objectives), with its id."""
    h = rec.history[[c for c in rec.history.columns if _HISTORY_KEEP.match(str(c)) or c in objectives]].copy()
    h = h.rename(columns=_METRIC_RENAME)
    h.insert(0, "trial_id", rec.trial_id)
    return h


def _order_label_rank(trials: pd.DataFrame, objectives: Mapping[str, str], guard: FrontGuard | None = None) -> pd.DataFrame:
    """Rows in report order, with ``label``, ``group`` and ``pareto_rank`` columns."""
    if not len(trials):
        return trials
    trials = trials.sort_values(
        ["configuration", "number", "trial_id"],
        key=lambda s: s.map(_sort_key) if s.name in ("configuration", "number") else s,
    ).reset_index(drop=True)
    records = trials.to_dict("records")
    with_seed = trials["seed"].nunique() > 1
    trials.insert(1, "label", [trial_label(r, with_seed=with_seed) for r in records])
    trials.insert(2, "group", [group_key(r) for r in records])
    return rank_trials(trials, objectives, guard)


def _sort_key(c: Any) -> int:
    c = int(c)
    return c if c >= 0 else 1 << 30


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------- groups

CRITERIA: tuple[tuple[str, str], ...] = (
    ("miou", "mIoU"),
    ("sorted_bottom25", "sorted bottom 25%"),
    ("sorted_top25", "sorted top 25%"),
    ("p25", "p25"),
    ("p25_mean", "mean ≤ p25"),
    ("p75", "p75"),
    ("p75_mean", "mean ≥ p75"),
    ("worst", "worst"),
    ("std", "std"),
)
"""The paper's Table 3 criteria (keys of ``tce_ray.core.metrics.fairness_report``) and their
column titles; ``sorted_*`` need the MCCE reference."""


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """(mean, sample std with ddof = 1, count) of the finite values; NaN mean without
    any, NaN std with fewer than two."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else math.nan), int(v.size)


def _groups_in_order(trials: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    keys = [group_key(r) for r in trials.to_dict("records")]
    t = trials.assign(_group=keys)
    return [(k, g.drop(columns="_group")) for k, g in t.groupby("_group", sort=False)]


def group_label(group: pd.DataFrame) -> tuple[str, int]:
    """(label, configuration) of a group's trials: its settings label with ``[#i]`` when
    all are explicit configuration i (configuration i, else -1)."""
    confs = {int(c) for c in group["configuration"]} if "configuration" in group else {-1}
    conf = confs.pop() if len(confs) == 1 else -1
    return settings_label(group.iloc[0].to_dict()) + (f" [#{conf}]" if conf >= 0 else ""), conf


def reference_group(trials: pd.DataFrame) -> str | None:
    """The key of the MCCE reference group: the MCCE group with the most completed trials
    (ties: the first in ``trials``' order, i.e. the first explicit configuration); None
    without a completed MCCE trial."""
    if not len(trials) or "config/loss/name" not in trials:
        return None
    best, best_n = None, 0
    for key, g in _groups_in_order(trials):
        n = int(((g["config/loss/name"] == "mcce") & (g["status"] == "completed")).sum())
        if n > best_n:
            best, best_n = key, n
    return best


def group_table(trials: pd.DataFrame, objectives: Mapping[str, str], guard: FrontGuard | None = None) -> pd.DataFrame:
    """One row per group (:func:`group_key`), in the order of ``trials``: ``group``,
    ``label`` (settings label, ``[#i]`` when all its trials are explicit configuration i),
    ``configuration`` (that i, else -1), the loss settings (``config/loss/*``), ``n``
    (completed trials), ``n_trials`` (all), ``seeds`` (JSON list of the completed trials'
    seeds), ``trial_ids`` (JSON list of all its trials), ``reference`` (the MCCE
    reference group), and over its completed trials the mean and sample std (ddof = 1;
    NaN with fewer than two) of:

    - ``miou`` and every objective: ``<name>/mean``, ``<name>/std`` (as reported: fractions);
    - the per-class IoU: ``iou/<class>/mean``, ``iou/<class>/std`` (fractions; a class
      absent in a trial is left out of that class's values);
    - the Table 3 criteria of each trial in percent, the sorted bottom/top 25% with the
      reference group's MEAN per-class IoU as the reference: ``table3/<criterion>/mean``,
      ``table3/<criterion>/std`` (criteria in :data:`CRITERIA`, e.g. ``table3/p25_mean/std``
      is the std over seeds of the mean IoU at or below p25; the sorted ones NaN without a
      reference);
    - ``pareto_rank``: non-dominated rank of the groups' objective means (groups with a
      completed trial whose mean ``guard.metric`` is not below the front guard's bound;
      others -1); with ``guard``, ``front_guard`` says why a group is not ranked.

    Only ``completed`` trials count (stopped or interrupted ones hold partial values).
    """
    cols = [c for c in trials.columns if str(c).startswith("iou/")]
    loss_cols = [c for c in trials.columns if str(c).startswith("config/loss/")]
    ref_key = reference_group(trials)
    groups = _groups_in_order(trials) if len(trials) else []
    ref_vec = mean_iou_percent(dict(groups)[ref_key], cols) if ref_key is not None and cols else None
    metric_names = ["miou"] + [n for n in objectives if n != "miou"]
    rows = []
    for key, g in groups:
        done = g[g["status"] == "completed"]
        row = _group_identity(key, g, done, loss_cols, reference=key == ref_key)
        for name in metric_names + cols:
            vals = done[name].to_numpy(dtype=np.float64) if name in done else np.array([])
            row[f"{name}/mean"], row[f"{name}/std"], _ = mean_std(vals)
        row.update(_table3_columns(done, cols, ref_vec))
        rows.append(row)
    return _rank_groups(_unique_labels(pd.DataFrame(rows)), objectives, guard, trials)


def mean_iou_percent(trials: pd.DataFrame, cols: Sequence[str]) -> np.ndarray | None:
    """The mean per-class IoU in percent over the ``completed`` rows of ``trials`` (columns
    ``cols``; NaN for a class absent from all of them), or None when every class is NaN."""
    done = trials[trials["status"] == "completed"]
    vec = np.array([mean_std(done[c].to_numpy(dtype=np.float64))[0] for c in cols]) * 100.0
    return None if np.all(np.isnan(vec)) else vec


def _group_identity(key: str, g: pd.DataFrame, done: pd.DataFrame, loss_cols: Sequence[str], *, reference: bool) -> dict[str, Any]:
    """A group's key, label, configuration, loss settings, counts, seeds, trial ids and reference flag."""
    label, conf = group_label(g)
    first = g.iloc[0]
    row: dict[str, Any] = {"group": key, "label": label, "configuration": conf}
    row.update({c: first[c] for c in loss_cols})
    row["n"] = int(len(done))
    row["n_trials"] = int(len(g))
    row["seeds"] = json.dumps([int(x) for x in done["seed"]] if "seed" in done else [])
    row["trial_ids"] = json.dumps([str(x) for x in g["trial_id"]])
    row["reference"] = reference
    return row


def _trial_criteria(row: Mapping[str, Any], cols: Sequence[str], names: Sequence[str], ref_vec: np.ndarray | None) -> dict[str, float] | None:
    """The Table 3 criteria of one trial in percent (the sorted bottom/top 25% against
    ``ref_vec``); None when it has no IoU."""
    from tce_ray.core.metrics import fairness_report  # numpy (+ torch) only

    u = np.array([row[c] for c in cols], dtype=np.float64) * 100.0
    if not u.size or np.all(np.isnan(u)):
        return None
    try:
        rep = fairness_report(u, reference=ref_vec, class_names=list(names))
    except ValueError:  # no class present in both: no sorted criteria for this trial
        rep = fairness_report(u, class_names=list(names))
    return {k: float(rep.get(k, math.nan)) for k, _ in CRITERIA}


def _table3_columns(done: pd.DataFrame, cols: Sequence[str], ref_vec: np.ndarray | None) -> dict[str, float]:
    """``table3/<criterion>/mean`` and ``/std`` over the completed trials (each in percent,
    the sorted bottom/top 25% against ``ref_vec``)."""
    names = [c[len("iou/"):] for c in cols]
    per_trial: dict[str, list[float]] = {k: [] for k, _ in CRITERIA}
    for r in done.to_dict("records"):
        crit = _trial_criteria(r, cols, names, ref_vec)
        for k, _ in CRITERIA:
            if crit is not None:
                per_trial[k].append(crit[k])
    out: dict[str, float] = {}
    for k, _ in CRITERIA:
        out[f"table3/{k}/mean"], out[f"table3/{k}/std"], _ = mean_std(per_trial[k])
    return out


SIGNIFICANCE_CRITERIA: tuple[tuple[str, str], ...] = (
    ("miou", "mIoU"), ("worst", "worst"), ("sorted_bottom25", "sorted bottom 25%"), ("std", "std"),
)
"""The criteria each configuration is compared on against the MCCE reference (keys of
:data:`CRITERIA`; std: lower is better)."""


def reference_comparisons(
    trials: pd.DataFrame, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> pd.DataFrame:
    """Each group against the MCCE reference group (:func:`reference_group`) over their
    completed seeds, one row per (group, criterion of :data:`SIGNIFICANCE_CRITERIA`):
    ``group``, ``label``, ``criterion``, ``n`` and ``n_ref`` (seeds), ``mean``, ``ref_mean``,
    ``diff`` (mean - ref_mean, percentage points), ``p_welch`` (Welch's two-sided t-test)
    and ``ci_low`` / ``ci_high`` (percentile bootstrap interval of ``diff`` at
    ``confidence``; :func:`tce_ray.core.stats.compare`). Criteria per trial as in
    :func:`group_table` (percent; the sorted bottom 25% with the reference group's mean
    per-class IoU). ``p`` and the interval are NaN with fewer than two seeds on a side.
    Empty without a reference group or per-class IoU."""
    from tce_ray.core.stats import compare

    columns = ["group", "label", "criterion", "n", "n_ref", "mean", "ref_mean", "diff", "p_welch", "ci_low", "ci_high"]
    cols = [c for c in trials.columns if str(c).startswith("iou/")]
    ref_key = reference_group(trials)
    if ref_key is None or not cols:
        return pd.DataFrame(columns=columns)
    groups = _groups_in_order(trials)
    ref_vec = mean_iou_percent(dict(groups)[ref_key], cols)
    names = [c[len("iou/"):] for c in cols]

    def values(g: pd.DataFrame) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {k: [] for k, _ in SIGNIFICANCE_CRITERIA}
        for r in g[g["status"] == "completed"].to_dict("records"):
            crit = _trial_criteria(r, cols, names, ref_vec)
            for k, _ in SIGNIFICANCE_CRITERIA:
                if crit is not None and math.isfinite(crit[k]):
                    out[k].append(crit[k])
        return out

    ref_vals = values(dict(groups)[ref_key])
    rows = []
    for key, g in groups:
        if key == ref_key:
            continue
        label = group_label(g)[0]
        vals = values(g)
        for k, _ in SIGNIFICANCE_CRITERIA:
            a, b = vals[k], ref_vals[k]
            if not a or not b:
                continue
            c = compare(a, b, confidence=confidence, n_resamples=n_resamples, seed=seed)
            rows.append({"group": key, "label": label, "criterion": k, "n": c.n_a, "n_ref": c.n_b, "mean": c.mean_a,
                         "ref_mean": c.mean_b, "diff": c.diff, "p_welch": c.p_welch, "ci_low": c.ci_low,
                         "ci_high": c.ci_high})
    return pd.DataFrame(rows, columns=columns)


def _unique_labels(groups: pd.DataFrame) -> pd.DataFrame:
    """Labels that coincide (e.g. sampled t=0.1234 and t=0.12341 print alike with .3g) get
    their first trial id appended."""
    if not len(groups):
        return groups
    dup = groups["label"].duplicated(keep=False)
    for i in groups.index[dup]:
        ids = json.loads(groups.at[i, "trial_ids"]) or [groups.at[i, "group"]]
        groups.at[i, "label"] = f"{groups.at[i, 'label']} ({ids[0]})"
    return groups


def _rank_groups(groups: pd.DataFrame, objectives: Mapping[str, str], guard: FrontGuard | None = None,
                 trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """A ``pareto_rank`` column: non-dominated ranks of the groups' objective means (-1 for
    groups without a completed trial, and for groups whose mean metric violates ``guard``,
    whose bound comes from ``trials``)."""
    if not len(groups):
        return groups
    groups["pareto_rank"] = -1
    eligible = (groups["n"] > 0).to_numpy()
    if guard is not None and trials is not None:
        bound, _ = trials_guard_bound(trials, guard)
        col = f"{guard.metric}/mean"
        vals = groups[col].to_numpy(dtype=np.float64) if col in groups else np.full(len(groups), np.nan)
        groups[GUARD_COLUMN] = guard_notes(vals, eligible, guard, bound)
        eligible = eligible & (groups[GUARD_COLUMN] == "").to_numpy()
    obj = list(objectives)
    ok = groups.index[eligible]
    if obj and len(ok) and all(f"{n}/mean" in groups for n in obj):
        vals = groups.loc[ok, [f"{n}/mean" for n in obj]].to_numpy(dtype=np.float64)
        groups.loc[ok, "pareto_rank"] = non_dominated_ranks(vals, [objectives[n] for n in obj])
    return groups


# --------------------------------------------------------------------------- files


def study_fs(study_dir: str | os.PathLike[str]) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a local folder or a URI (s3://, gs://, file://)."""
    import pyarrow.fs as pafs

    s = str(study_dir)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", s):
        return pafs.FileSystem.from_uri(s)
    return pafs.LocalFileSystem(), os.path.abspath(s)


@dataclass
class StudyTables:
    """The result tables of a study and its metadata (study.json)."""

    trials: pd.DataFrame
    history: pd.DataFrame
    pareto: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def objectives(self) -> dict[str, str]:
        return {o["name"]: o["mode"] for o in self.meta.get("objectives", [])}

    @property
    def front_guard(self) -> FrontGuard | None:
        """The study's front guard (``study.json``'s ``front_guard``), or None."""
        return FrontGuard.from_meta(self.meta.get("front_guard"))


class DamagedResultsError(ValueError):
    """A results file (or folder) is damaged or of the wrong kind. ``path`` names the file;
    the message is one line saying what is wrong and what to do (the CLIs exit 2 on it)."""

    def __init__(self, path: str, problem: str, fix: str = "") -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem}" + (f"; {fix}" if fix else ""))


REBUILD_HINT = "rebuild the results with `python -m tce_ray.study <study.yaml> --resume` (they are written again from the Tune experiment)"


def write_tables(study_dir: str | os.PathLike[str], tables: StudyTables) -> dict[str, str]:
    """Write trials/history/pareto Parquet files and study.json; returns their paths.

    Each file is replaced atomically (written to a temporary file, then renamed; one write
    on object stores): a crash leaves either the old file or the new one, never a part."""
    fs, base = study_fs(study_dir)
    fs.create_dir(base, recursive=True)
    paths = {}
    for name, df in (("trials", tables.trials), ("history", tables.history), ("pareto", tables.pareto)):
        p = f"{base}/{name}.parquet"
        _write_parquet(_redacted(df), fs, p)
        paths[name] = p
    p = f"{base}/study.json"
    atomic_write(fs, p, redact(json.dumps(redact_obj(tables.meta), indent=2, default=str)).encode())
    paths["meta"] = p
    return paths


def _redacted(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the credentials of any URI in its text columns (trial errors, paths) redacted."""
    text = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c].dtype)]
    if not text:
        return df
    out = df.copy()
    for c in text:
        out[c] = [redact(v) if isinstance(v, str) else v for v in out[c]]
    return out


def atomic_write(fs: Any, path: str, data: bytes) -> None:
    """Replace the file ``path`` on the pyarrow filesystem ``fs`` with ``data`` atomically
    (:meth:`tce_ray.train.run_state.RunState.write_bytes`: a temporary file then a rename; a
    single write call on object stores)."""
    from tce_ray.train.run_state import RunState

    parent, _, name = path.rstrip("/").rpartition("/")
    RunState(parent or "/", filesystem=fs).write_bytes(name, data)


def _write_parquet(df: pd.DataFrame, fs: Any, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write(fs, path, buf.getvalue().to_pybytes())


_REQUIRED_COLUMNS = {"trials": ("trial_id", "status"), "history": ("trial_id",), "pareto": ()}


def _read_parquet(fs: Any, path: str, name: str) -> pd.DataFrame:
    """One result table; :class:`DamagedResultsError` naming the file when it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = fs.get_file_info(path).size
    if not size:
        raise DamagedResultsError(path, "the file is empty (a crash while it was written?)", REBUILD_HINT)
    try:
        df = pq.read_table(path, filesystem=fs).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DamagedResultsError(path, f"not a readable Parquet file ({first})", REBUILD_HINT) from None
    missing = [c for c in _REQUIRED_COLUMNS[name] if c not in df.columns]
    if missing and len(df.columns):
        raise DamagedResultsError(path, f"not a {name} table of a study (no column {', '.join(missing)})", REBUILD_HINT)
    return df


def read_tables(study_dir: str | os.PathLike[str]) -> StudyTables:
    """Read what :func:`write_tables` wrote.

    FileNotFoundError naming the folder when it is not a study's result folder;
    :class:`DamagedResultsError` naming the file when one is empty, truncated, not Parquet
    or JSON, or lacks its key columns."""
    fs, base = study_fs(study_dir)
    kind = fs.get_file_info(base).type.name
    if kind == "File":
        raise DamagedResultsError(base, "is a file, not a study result folder",
                                  "give the folder <storage>/<name> that `python -m tce_ray.study` wrote")
    out = {}
    for name in ("trials", "history", "pareto"):
        p = f"{base}/{name}.parquet"
        if fs.get_file_info(p).type.name == "NotFound":
            raise FileNotFoundError(_not_a_results_folder(fs, base, study_dir, p))
        out[name] = _read_parquet(fs, p, name)
    meta: dict[str, Any] = {}
    p = f"{base}/study.json"
    if fs.get_file_info(p).type.name != "NotFound":
        with fs.open_input_stream(p) as f:
            raw = f.read()
        try:
            meta = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedResultsError(p, f"not valid JSON ({exc})", REBUILD_HINT) from None
        if not isinstance(meta, dict):
            raise DamagedResultsError(p, f"holds a {type(meta).__name__}, not the study's metadata object", REBUILD_HINT)
    return StudyTables(out["trials"], out["history"], out["pareto"], meta)


def _not_a_results_folder(fs: Any, base: str, study_dir: Any, missing: str) -> str:
    """Why ``base`` holds no result tables, and what to do (one line)."""
    import pyarrow.fs as pafs

    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return f"{study_dir} not found (no trials.parquet): give the study's result folder <storage>/<name>"
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))}
    if any(n.startswith("experiment_state-") for n in names):
        return (f"{missing} not found: the study at {study_dir} has not written its results yet (interrupted?); "
                "finish it with `python -m tce_ray.study <study.yaml> --resume`")
    if "result.json" in names or "params.json" in names:
        return (f"{missing} not found: {study_dir} is the folder of one trial; give its parent, the study's "
                "result folder <storage>/<name>")
    return (f"{missing} not found: {study_dir} is not a study result folder (it needs trials.parquet, "
            "history.parquet, pareto.parquet from `python -m tce_ray.study`)")


def read_json_lines(text: str, source: str = "") -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines text (Tune's ``result.json``). A line that does not
    parse (the last one, cut by a crash) is skipped with a warning naming ``source``."""
    import warnings

    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{source or 'JSON lines'}: line {i} is not complete JSON (cut by a crash?); skipped",
                          stacklevel=2)
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def local_output_dir(study_dir: str | os.PathLike[str]) -> tuple[Path, Any]:
    """A local folder to write report files into, and a function that publishes it to
    ``study_dir`` (a no-op for a local ``study_dir``)."""
    s = str(study_dir)
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", s):
        return Path(s), lambda: None
    tmp = Path(tempfile.mkdtemp(prefix="tce_report_"))

    def publish() -> None:
        import pyarrow.fs as pafs

        fs, base = study_fs(s)
        pafs.copy_files(str(tmp), base, destination_filesystem=fs)

    return tmp, publish
