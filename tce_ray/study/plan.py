"""The trial plan of a validated study, for ``--dry-run``: what would run, on what, how long.

No Ray: the plan reads the :class:`~tce_ray.study.config.StudyConfig`; the wall-time
figure is :func:`tce_ray.study.time_estimate.estimate_study`'s (the one source of time
figures: ``--step-seconds``, a previous run's history, a few timed steps of this study on
this machine, or a table), printed with what it measured.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from tce_ray.study.config import StudyConfig
from tce_ray.study.time_estimate import (  # re-exported: the names were plan's
    MEASURED_STEP_SECONDS,
    TRIAL_STARTUP_SECONDS,
    TimeEstimate,
    estimate_study,
    format_duration,
)

__all__ = ["TrialPlan", "make_plan", "format_plan", "plan_time", "MEASURED_STEP_SECONDS", "TRIAL_STARTUP_SECONDS"]



@dataclass
class TrialPlan:
    """The numbers behind the printed plan."""

    explicit: list[tuple[str, int | None]]
    """(configuration label, seed or None) in queue order."""
    sampled: int
    workers: int
    cpus_per_trial: float
    gpus_per_trial: float
    at_once: int
    at_once_source: str
    step_seconds: float | None
    step_seconds_source: str

    @property
    def total(self) -> int:
        return len(self.explicit) + self.sampled

    def estimate_seconds(self, steps: int) -> float | None:
        """``ceil(total / at_once) x (TRIAL_STARTUP_SECONDS + steps x step_seconds)`` (the
        table or ``--step-seconds`` figure; ``--dry-run`` prints :meth:`time_estimate`'s)."""
        if self.step_seconds is None:
            return None
        rounds = math.ceil(self.total / self.at_once)
        return rounds * (TRIAL_STARTUP_SECONDS + steps * self.step_seconds)


def _configuration_label(settings: dict[str, Any]) -> str:
    parts = [str(settings.get("name"))]
    for k, v in settings.items():
        if k == "name":
            continue
        if isinstance(v, dict):
            parts += [f"{k}.{kk}={vv:g}" if isinstance(vv, float) else f"{k}.{kk}={vv}" for kk, vv in v.items()]
        else:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def make_plan(cfg: StudyConfig, *, step_seconds: float | None = None, cpus: int | None = None) -> TrialPlan:
    """The plan of ``cfg``. ``cpus``: the CPUs a local run would have (default: this
    machine's), used when ``resources.max_concurrent_trials`` is not set."""
    t = cfg.run.train
    labels = [_configuration_label(c.model_dump(exclude_none=True)) for c in cfg.search.configurations]
    explicit = [(labels[i], seed) for i, seed in cfg.search.configuration_runs()]
    gpus_each = float(getattr(t, "gpus_per_worker", 1.0) or 1.0) if t.use_gpu else 0.0
    cpus_per_trial = t.num_workers * t.cpus_per_worker
    if cfg.resources.max_concurrent_trials:
        at_once, source = cfg.resources.max_concurrent_trials, "resources.max_concurrent_trials"
    elif t.use_gpu:
        at_once, source = 1, "assumed: the cluster's GPUs decide (set resources.max_concurrent_trials)"
    else:
        n = cpus if cpus is not None else (os.cpu_count() or 1)
        at_once = max(1, int(n // cpus_per_trial))
        source = f"what this machine's {n} CPUs fit; a cluster fits more"
    if step_seconds is not None:
        sps, sps_source = step_seconds, "--step-seconds"
    else:
        sps = MEASURED_STEP_SECONDS.get((cfg.run.model.backbone, t.use_gpu))
        sps_source = ("measured for this backbone (benchmarks/RESULTS.md); the data, image size and batch "
                      "change it: --step-seconds S") if sps is not None else "unknown: give --step-seconds S"
    return TrialPlan(explicit, cfg.search.num_samples, t.num_workers, cpus_per_trial, t.num_workers * gpus_each,
                     at_once, source, sps, sps_source)


def _searched(cfg: StudyConfig) -> list[str]:
    """``t: log [0.1, 2]``, ``tilt_signal: [batch, class]``, ``gamma = 0.2`` (fixed)."""
    from tce_ray.core.registry import search_params

    out = []
    if cfg.search.param("losses"):
        out.append(f"losses: [{', '.join(cfg.search.param('losses'))}]")
    for p in search_params():
        v = cfg.search.param(p.key)
        if v is None:
            continue
        if hasattr(v, "low"):
            out.append(f"{p.key}: {'log ' if v.log else ''}[{v.low:g}, {v.high:g}]")
        elif isinstance(v, list):
            out.append(f"{p.key}: [{', '.join(str(x) for x in v)}]")
        else:
            out.append(f"{p.key} = {v}")
    return out


PLAN_HEAD, PLAN_TAIL = 10, 3
"""A plan with more explicit trials than ``PLAN_HEAD + PLAN_TAIL`` prints the first
``PLAN_HEAD`` and the last ``PLAN_TAIL`` of them and a count of the rest."""


def _short_list(values: list[Any], head: int = 5, tail: int = 2) -> str:
    """``[0, 1, 2]``; a long list as ``[0, 1, 2, 3, 4, ... (9993 more) ..., 9998, 9999]``."""
    if len(values) <= head + tail:
        return str(list(values))
    inner = ", ".join(str(v) for v in values[:head])
    end = ", ".join(str(v) for v in values[-tail:])
    return f"[{inner}, ... ({len(values) - head - tail} more) ..., {end}]"


def _trial_lines(explicit: list[tuple[str, int | None]]) -> list[str]:
    """One line per explicit trial, or the first and last few and a count of those left out."""
    def line(i: int) -> str:
        label, seed = explicit[i]
        return f"    {i + 1:3d}. {label}" + (f"  seed={seed}" if seed is not None else "")

    n = len(explicit)
    if n <= PLAN_HEAD + PLAN_TAIL:
        return [line(i) for i in range(n)]
    skipped = n - PLAN_HEAD - PLAN_TAIL
    return ([line(i) for i in range(PLAN_HEAD)] + [f"    ... {skipped} more trials ..."]
            + [line(i) for i in range(n - PLAN_TAIL, n)])


def plan_time(cfg: StudyConfig, plan: TrialPlan, *, step_seconds: float | None = None, measure: bool = True,
              history: bool = True, cpus: int | None = None) -> TimeEstimate:
    """The wall-time estimate of ``plan`` (:func:`~tce_ray.study.time_estimate.estimate_study`);
    a measurement that fails (data not there yet) falls back to the table, saying why."""
    kw = dict(total_trials=plan.total, at_once=plan.at_once, step_seconds=step_seconds, cpus=cpus)
    try:
        return estimate_study(cfg, measure=measure, history=history, **kw)
    except Exception as exc:  # noqa: BLE001 - the estimate must not fail the dry run
        est = estimate_study(cfg, measure=False, history=False, **kw)
        est.lines.insert(0, f"could not measure this study here ({type(exc).__name__}: {exc})")
        return est


def format_plan(cfg: StudyConfig, *, step_seconds: float | None = None, cpus: int | None = None,
                measure: bool = True, history: bool = True) -> str:
    """The plan as text (what ``--dry-run`` prints). ``measure``: time a few training steps of
    the study here (seconds, no Ray); ``history``: use a previous run of it first."""
    plan = make_plan(cfg, step_seconds=step_seconds, cpus=cpus)
    t = cfg.run.train
    objectives = ", ".join(cfg.run.objectives)
    from tce_ray.study.search_space import sampler_kind

    sampler = sampler_kind(cfg.search, len(cfg.run.objectives))
    lines = [
        f"study {cfg.name}: {plan.total} trials -> {cfg.experiment_path()}",
        f"  objectives: {objectives}",
    ]
    seeds = cfg.search.seeds
    n_conf = len(cfg.search.configurations)
    if n_conf:
        seed_text = f"{len(seeds)} seeds {_short_list(seeds)}" if seeds else f"train.seed {t.seed}"
        lines.append(f"  explicit: {n_conf} configurations x {seed_text} = {len(plan.explicit)} trials, in order:")
        lines += _trial_lines(plan.explicit)
    if plan.sampled:
        space = "; ".join(_searched(cfg)) or f"the base loss {cfg.run.loss.name} (nothing searched)"
        lines.append(f"  sampled: {plan.sampled} trials by {sampler} (seed {cfg.search.seed}) over {space}")
    gpu = f" + {plan.gpus_per_trial:g} GPUs" if plan.gpus_per_trial else ", no GPU"
    lines.append(f"  each trial: {plan.workers} Ray Train workers x {t.cpus_per_worker:g} CPU = "
                 f"{plan.cpus_per_trial:g} CPUs{gpu}; {cfg.run.model.backbone}, {cfg.run.data.name}, "
                 f"batch {t.batch_size} per worker, {t.steps} steps, evaluated every {t.eval_every} "
                 f"({cfg.evaluations_per_run()} evaluations)")
    lines.append(f"  at once: {plan.at_once} trial(s) ({plan.at_once_source})")
    total_steps = plan.total * t.steps
    est = plan_time(cfg, plan, step_seconds=step_seconds, measure=measure, history=history, cpus=cpus)
    if est.seconds is None:
        lines.append(f"  wall time: {total_steps} training steps in all; unknown")
    else:
        lines.append(f"  wall time: ~{format_duration(est.seconds)} = {est.rounds} round(s) x "
                     f"{format_duration(est.trial_seconds or 0.0)} per trial + Ray start-up (source: {est.source})")
    lines += [f"    {ln}" for ln in est.lines]
    return "\n".join(lines)
