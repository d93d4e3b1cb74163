"""The study's wall-time estimate: the one place every time figure of a study comes from.

``--dry-run`` prints it (:func:`tce_ray.study.plan.format_plan`). The seconds per trial come
from the first source that has them:

1. ``--step-seconds S``: the user's figure;
2. the *history*: a previous run of the same study (``<storage>/<name>``): the median wall
   time of its finished trials (``time_total_s`` of their last report), scaled to this
   study's steps;
3. a *measurement* of this study on this machine, now (:mod:`tce_ray.train.step_timing`, a
   few seconds, no Ray): seconds per step, per validation image;
4. the table :data:`MEASURED_STEP_SECONDS` (a backbone measured in ``benchmarks/``), or none.

Then ``wall = RAY_START_SECONDS + rounds x trial``, ``rounds = ceil(trials / at once)``, and,
but for the history, ``trial = TRIAL_STARTUP_SECONDS + steps x step + evaluations x
(validation images / workers) x seconds per image``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tce_ray.study.config import StudyConfig
    from tce_ray.train.step_timing import StepTiming

__all__ = [
    "MEASURED_STEP_SECONDS", "TRIAL_STARTUP_SECONDS", "RAY_START_SECONDS", "TimeEstimate",
    "estimate_study", "history_trial_seconds", "format_duration",
]

MEASURED_STEP_SECONDS: dict[tuple[str, bool], float] = {
    ("tiny", False): 0.054,  # benchmarks/RESULTS.md: bench_train_throughput, 2 CPU workers, 96x128, batch 4
    ("resnet101", True): 0.074,  # one H100, 512x1024, batch 8, bf16 (bench_train_throughput --gpu)
}
"""Seconds per training step measured for (backbone, use_gpu), for ``--no-measure``."""

TRIAL_STARTUP_SECONDS = 30.0
"""A trial's fixed cost (Ray Train worker group start to first step), measured on a quiet
2-core machine (benchmarks/RESULTS.md, per-trial start-up)."""

RAY_START_SECONDS = 30.0
"""The study's own start-up and shut-down around its trials (Python and torch imports, the
preflight, ``ray.init``, the Tuner, the result tables), on a quiet 2-core machine: the smoke
study took 110 s, of which its trials 75 s (benchmarks/RESULTS.md section 7)."""


@dataclass
class TimeEstimate:
    """A study's estimated wall time and where its figures came from."""

    seconds: float | None
    """The whole study, or None (nothing to estimate from)."""
    trial_seconds: float | None
    rounds: int
    source: str
    """``--step-seconds``, ``history``, ``measured``, ``table`` or ``none``."""
    lines: list[str] = field(default_factory=list)
    """How it was reached, one line each (printed by ``--dry-run``)."""
    timing: StepTiming | None = None


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def history_trial_seconds(exp_path: str, steps: int) -> tuple[float, int] | None:
    """(median seconds per trial scaled to ``steps``, trials used) from the finished trials of
    the study run in ``exp_path`` (a local folder); None where it holds none."""
    base = Path(exp_path)
    if "://" in exp_path or not base.is_dir():
        return None
    lasts = []
    for d in sorted(base.glob("trial_*")):
        last = _last_report(d)
        step, total = (last or {}).get("step"), (last or {}).get("time_total_s")
        if isinstance(step, (int, float)) and isinstance(total, (int, float)) and step > 0 and total > 0:
            lasts.append((float(step), float(total)))
    if not lasts:
        return None
    full = max(st for st, _ in lasts)  # a finished trial reached the study's steps (the most any reached)
    # The start-up part does not scale with the steps; a trial shorter than the start-up constant
    # counts as all start-up (so at the same steps the estimate is the trial's own wall time).
    per_trial = [min(TRIAL_STARTUP_SECONDS, total) + (total - min(TRIAL_STARTUP_SECONDS, total)) * steps / st
                 for st, total in lasts if st == full]
    if not per_trial:
        return None
    s = sorted(per_trial)
    n = len(s)
    return (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])), n


def _last_report(trial_dir: Path) -> dict | None:
    for name in ("tce_history.jsonl", "result.json"):
        p = trial_dir / name
        if not p.is_file():
            continue
        lines = [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
        for ln in reversed(lines):
            try:
                r = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict):
                return r
    return None


def estimate_study(
    cfg: StudyConfig, *, total_trials: int, at_once: int, step_seconds: float | None = None,
    measure: bool = True, history: bool = True, cpus: int | None = None,
) -> TimeEstimate:
    """The wall-time estimate of ``cfg`` run as ``total_trials`` trials, ``at_once`` at a time
    (see the module docstring for the sources, in order)."""
    t = cfg.run.train
    rounds = math.ceil(total_trials / max(1, at_once)) if total_trials else 0
    evals = cfg.evaluations_per_run()
    if step_seconds is not None:
        trial = TRIAL_STARTUP_SECONDS + t.steps * step_seconds
        return _done(trial, rounds, "--step-seconds", [
            f"seconds per step {step_seconds:g} (--step-seconds); evaluations not counted"])
    if history:
        h = history_trial_seconds(cfg.experiment_path(), t.steps)
        if h is not None:
            sec, n = h
            return _done(sec, rounds, "history", [
                f"from the history: the median of {n} finished trial(s) in {cfg.experiment_path()}, "
                f"{format_duration(sec)} per trial at {t.steps} steps (--no-history to measure instead)"])
    if measure and not t.use_gpu:
        from tce_ray.train.step_timing import measure_run

        timing = measure_run(cfg.run)
        n_cpus = cpus if cpus is not None else (os.cpu_count() or 1)
        cpus_free = min(at_once, total_trials) * t.num_workers * t.cpus_per_worker < n_cpus
        step = timing.step_s(cfg.run.data.loader_workers, cpus_free)
        eval_s = evals * math.ceil(timing.val_images / t.num_workers) * timing.eval_image_s
        trial = TRIAL_STARTUP_SECONDS + t.steps * step + eval_s
        how = ("compute + data: the loader shares busy CPUs" if cfg.run.data.loader_workers == 0 or not cpus_free
               else "the slower of compute and data / loader workers")
        est = _done(trial, rounds, "measured", [
            f"measured here in {timing.seconds:.1f} s ({timing.steps} steps of batch {t.batch_size}, "
            f"{t.cpus_per_worker:g} thread(s), loss {timing.loss_timed}): {timing.compute_s:.3f} s compute + "
            f"{timing.data_s:.3f} s data per step -> {step:.3f} s per step ({how})",
            f"evaluation: {timing.eval_image_s:.3f} s per val image x {timing.val_images} images / "
            f"{t.num_workers} worker(s) x {evals} evaluations = {format_duration(eval_s)} per trial",
            f"per trial: {TRIAL_STARTUP_SECONDS:.0f} s start-up + {t.steps} x {step:.3f} s + evaluations = "
            f"{format_duration(trial)} (--no-measure for the table figure, --step-seconds S for yours)",
        ])
        est.timing = timing
        return est
    sps = MEASURED_STEP_SECONDS.get((cfg.run.model.backbone, t.use_gpu))
    if sps is None:
        return TimeEstimate(None, None, rounds, "none", [
            f"no figure for backbone {cfg.run.model.backbone} ({'GPU' if t.use_gpu else 'CPU'}): "
            "give --step-seconds S, or run once and --dry-run again (the history)"])
    trial = TRIAL_STARTUP_SECONDS + t.steps * sps
    return _done(trial, rounds, "table", [
        f"seconds per step {sps:g}, measured for this backbone at another size (benchmarks/RESULTS.md); "
        "evaluations not counted; the data, image size and batch change it"])


def _done(trial: float, rounds: int, source: str, lines: list[str]) -> TimeEstimate:
    return TimeEstimate(RAY_START_SECONDS + rounds * trial, trial, rounds, source, lines)
