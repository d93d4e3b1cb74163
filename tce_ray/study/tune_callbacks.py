"""What the study hooks into Ray: the Train-to-Tune report callback (which adds the
objectives the workers cannot compute) and the progress lines of a study."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tce_ray.train.step_progress import clear_step, read_step

if TYPE_CHECKING:  # pragma: no cover
    from tce_ray.core.objectives import Objective

__all__ = ["with_objectives", "make_report_callback", "progress_callback", "finite", "RUNNING_LINE_EVERY_S"]

RUNNING_LINE_EVERY_S = 60.0
"""Between a trial's reports, a "running" line with its step at most this often (seconds)."""


def finite(v: Any) -> bool:
    """Whether ``v`` is a finite number."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def with_objectives(metrics: dict[str, Any], objectives: Sequence[Objective]) -> dict[str, Any]:
    """``metrics`` plus the objectives it lacks (by ``Objective.key``), from its
    ``iou/<class>`` values (in the order reported); an objective that fails gives NaN (the
    trial is then marked failed)."""
    import numpy as np

    iou = np.array([v for k, v in metrics.items() if k.startswith("iou/")], dtype=np.float64)
    for obj in objectives:
        if obj.key not in metrics and iou.size:
            try:
                metrics[obj.key] = obj(iou)
            except ValueError:
                metrics[obj.key] = float("nan")
    return metrics


def make_report_callback(objectives: Sequence[Objective]) -> Any:
    """A ``TuneReportCallback`` (Ray Train reports -> the Tune trial) that also computes the
    objectives a report lacks (those registered only in the driver, unknown to the
    workers) from its ``iou/<class>`` values."""
    from ray.tune.integration.ray_train import TuneReportCallback

    if not objectives:
        return TuneReportCallback()

    class ObjectiveReportCallback(TuneReportCallback):
        def __init__(self, objs: Sequence[Objective]):
            super().__init__()
            self._objectives = list(objs)

        def after_report(self, run_context, metrics, checkpoint):  # noqa: ANN001
            if metrics:
                metrics = [with_objectives(dict(metrics[0]), self._objectives), *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ObjectiveReportCallback(objectives)


def progress_callback(
    keys: Sequence[str], total: int, show_seed: bool = False, *, modes: dict[str, str] | None = None,
    steps: int | None = None, terse: bool = False, experiment_path: str | None = None,
) -> Any:
    """A Tune callback printing the study's progress as plain lines (no control codes, so a
    log file reads like the terminal). ``keys``: the objectives' metric keys, ``total``: the
    study's trials, ``modes``: key -> "max"/"min" (for the best so far), ``steps``: a run's
    training steps (for step progress and ETA).

    ``terse``: one line per trial event (start, every report, end). Otherwise also: where
    the logs are (at the start), each report's step progress with its rate and the trial's
    ETA, every :data:`RUNNING_LINE_EVERY_S` between reports a "running" line with each
    running trial's step, rate and ETA (the step rank 0 published,
    :mod:`tce_ray.train.step_progress`), and after each finished trial the study's trials done/total with an ETA and the
    best value so far of each objective."""
    # Long because it defines the Callback class inside (Ray Tune is imported only when a study runs).
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.t0 = time.time()
            self.seen: dict[str, tuple[float, int]] = {}  # trial id -> (time, step) of its last report
            self.best: dict[str, tuple[float, str]] = {}  # objective -> (value, trial id)
            self.finished_here = 0
            self.last_beat = time.time()
            self.published: dict[str, tuple[int, float]] = {}  # trial id -> (step, time) last read from the store

        def setup(self, **info):  # noqa: ANN003 - a new (or resumed) experiment starts
            self.t0 = time.time()
            if not terse:
                self._say(f"logs: {_log_locations(experiment_path or '<storage>/<name>')}")

        @staticmethod
        def _done(trials, trial) -> int:  # noqa: ANN001 - counts a resumed study's earlier trials too
            return 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)

        def _label(self, trial) -> str:  # noqa: ANN001
            return f"{trial.trial_id} [{_settings_text(trial.config or {}, show_seed)}]"

        def _say(self, msg: str) -> None:
            print(f"[{time.time() - self.t0:6.0f}s] {msg}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.seen[trial.trial_id] = (time.time(), 0)
            self._say(f"start    {self._label(trial)}")

        def on_step_end(self, iteration, trials, **info):  # noqa: ANN001 - Tune's loop, many times a second
            now = time.time()
            if terse or not steps or now - self.last_beat < RUNNING_LINE_EVERY_S:
                return
            self.last_beat = now
            for trial in trials:
                if trial.status == "RUNNING":
                    self._running_line(trial)

        def _running_line(self, trial) -> None:  # noqa: ANN001 - between reports: the step rank 0 published
            got = read_step(trial.trial_id)
            if got is None:
                return
            step, t = got
            prev = self.published.get(trial.trial_id)
            self.published[trial.trial_id] = got
            if step <= self.seen.get(trial.trial_id, (self.t0, 0))[1]:
                return  # nothing new since the last report or line
            self.seen[trial.trial_id] = (t, step)
            where = f"step {step}/{steps} ({100 * step / steps:.0f}%)"
            if prev is not None and step > prev[0] and t > prev[1]:  # both times the worker's clock
                rate = (step - prev[0]) / (t - prev[1])
                where += f", {_rate(rate)}, ETA {_duration(max(0.0, steps - step) / rate)}"
            self._say(f"running  {trial.trial_id} {where}")

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            vals = " ".join(f"{n}={result[n]:.4f}" for n in keys if finite(result.get(n)))
            step = result.get("step")
            where = f"step {step}"
            if not terse and steps and isinstance(step, (int, float)):
                now = time.time()
                t_prev, s_prev = self.seen.get(trial.trial_id, (self.t0, 0))
                self.seen[trial.trial_id] = (now, int(step))
                where = f"step {int(step)}/{steps} ({100 * step / steps:.0f}%)"
                if step > s_prev and now > t_prev:
                    rate = (step - s_prev) / (now - t_prev)
                    where += f", {_rate(rate)}, ETA {_duration(max(0.0, steps - step) / rate)}"
            self._say(f"report   {trial.trial_id} {where}: {vals} miou={result.get('miou', float('nan')):.4f}")

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            clear_step(trial.trial_id)
            self._say(f"finished {self._label(trial)} ({self._done(trials, trial)}/{total})")
            self._study_line(trials, trial, ok=True)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            clear_step(trial.trial_id)
            self._say(f"FAILED   {self._label(trial)} ({self._done(trials, trial)}/{total}); the study goes on")
            self._study_line(trials, trial, ok=False)

        def _study_line(self, trials, trial, ok: bool) -> None:  # noqa: ANN001
            if terse:
                return
            self.finished_here += 1
            last = trial.last_result or {}
            if ok and modes:
                for k in keys:
                    v = last.get(k)
                    if finite(v) and k in modes:
                        better = self.best.get(k) is None or (v > self.best[k][0] if modes[k] == "max" else v < self.best[k][0])
                        if better:
                            self.best[k] = (float(v), trial.trial_id)
            done = self._done(trials, trial)
            failed = sum(t.status == "ERROR" for t in trials if t is not trial) + (not ok)
            running = sum(t.status == "RUNNING" for t in trials if t is not trial)
            elapsed = time.time() - self.t0
            eta = elapsed / self.finished_here * max(0, total - done)
            best = ", ".join(f"{k}={v:.4f} ({tid})" for k, (v, tid) in self.best.items()) or "none yet"
            self._say(f"study    {done}/{total} trials done ({failed} failed, {running} running), "
                      f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}; best so far: {best}")

    return Progress()


def _rate(steps_per_second: float) -> str:
    return f"{steps_per_second:.2f} steps/s" if steps_per_second >= 1 else f"{1 / steps_per_second:.1f} s/step"


def _duration(seconds: float) -> str:
    """``42s``, ``7m05s``, ``2h03m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _log_locations(experiment_path: str) -> str:
    """Where worker output goes: Ray's session log folder on this machine (worker-*.out/.err,
    Ray Train's in logs/train/; on a cluster each node has its own), and each trial's folder."""
    try:
        import ray

        session = ray._private.worker._global_node.get_logs_dir_path()  # noqa: SLF001 - no public API for it
    except Exception:  # noqa: BLE001 - a client connection has no local node
        session = "the Ray session's logs/ folder on each node (/tmp/ray/session_latest/logs)"
    return (f"Ray workers' stdout/stderr in {session} (worker-*.out/.err, Ray Train in train/); "
            f"each trial's results and TensorBoard events in {experiment_path}/trial_<id>/")


def _settings_text(config: dict[str, Any], show_seed: bool) -> str:
    """``tce_stochastic t=0.518 gamma=0.386 ...`` (and ``seed=s``) from a trial's config."""
    loss = config.get("loss", {})
    parts = [str(loss.get("name", "?"))] + [
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in loss.items() if k != "name"
    ]
    for section, values in config.items():  # other searched run sections: sampling.image_power=1
        if section not in ("loss", "study", "search") and isinstance(values, dict):
            parts += [f"{section}.{k}={v:.3g}" if isinstance(v, float) else f"{section}.{k}={v}"
                      for k, v in values.items()]
    study = config.get("study", {})
    if show_seed and isinstance(study, dict) and study.get("seed") is not None:
        parts.append(f"seed={study['seed']}")
    return " ".join(parts)
