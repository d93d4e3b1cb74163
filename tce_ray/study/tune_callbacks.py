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

__all__ = ["with_objectives", "make_report_callback", "ProgressLines", "progress_callback", "finite", "RUNNING_LINE_EVERY_S"]

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


class ProgressLines:
    """The study's progress as plain lines (no control codes, so a log file reads like the
    terminal), from Tune's trial events; no Ray here (:func:`progress_callback` forwards
    Tune's callbacks to it). ``keys``: the objectives' metric keys, ``total``: the study's
    trials, ``modes``: key -> "max"/"min" (for the best so far), ``steps``: a run's training
    steps (for step progress and ETA).

    ``terse``: one line per trial event (start, every report, end). Otherwise also: where
    the logs are (at the start), each report's step progress with its rate and the trial's
    ETA, every :data:`RUNNING_LINE_EVERY_S` between reports a "running" line with each
    running trial's step, rate and ETA (the step rank 0 published,
    :mod:`tce_ray.train.step_progress`), and after each finished trial the study's trials
    done/total with an ETA and the best value so far of each objective."""

    def __init__(self, keys: Sequence[str], total: int, show_seed: bool = False, *, modes: dict[str, str] | None = None,
                 steps: int | None = None, terse: bool = False, experiment_path: str | None = None) -> None:
        self.keys, self.total, self.show_seed, self.modes = list(keys), total, show_seed, modes or {}
        self.steps, self.terse, self.experiment_path = steps, terse, experiment_path
        self.t0 = self.last_beat = time.time()
        self.seen: dict[str, tuple[float, int]] = {}  # trial id -> (time, step) of its last report
        self.best: dict[str, tuple[float, str]] = {}  # objective -> (value, trial id)
        self.finished_here = 0
        self.published: dict[str, tuple[int, float]] = {}  # trial id -> (step, time) last read from the store
        self.first: dict[str, tuple[float, int]] = {}  # trial id -> (time, step) first seen after its start

    def say(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:6.0f}s] {msg}", flush=True)

    def label(self, trial: Any) -> str:
        return f"{trial.trial_id} [{_settings_text(trial.config or {}, self.show_seed)}]"

    @staticmethod
    def done(trials: Sequence[Any], trial: Any) -> int:
        """Trials finished, this one included (a resumed study's earlier trials too)."""
        return 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)

    def _where(self, trial_id: str, step: float, t: float, since: tuple[float, float] | None) -> str:
        """``step s/N (p%)`` and, from ``since`` (time, step), the rate and the ETA. ``since`` is the
        first step seen of the trial (or its start), so the rate is the mean over the run so
        far, evaluations included in proportion: an evaluation between two lines no longer
        makes one step look like the whole evaluation (it printed 36.9 s/step, ETA 8h, for a
        trial at 0.6 s/step)."""
        where = f"step {int(step)}/{self.steps} ({100 * step / self.steps:.0f}%)"
        if since is not None and step > since[1] and t > since[0]:
            rate = (step - since[1]) / (t - since[0])
            where += f", {_rate(rate)}, ETA {_duration(max(0.0, self.steps - step) / rate)}"
        return where

    def start(self) -> None:
        self.t0 = time.time()
        if not self.terse:
            self.say(f"logs: {_log_locations(self.experiment_path or '<storage>/<name>')}")

    def trial_start(self, trial: Any) -> None:
        self.seen[trial.trial_id] = (time.time(), 0)
        self.say(f"start    {self.label(trial)}")

    def beat(self, trials: Sequence[Any]) -> None:
        """Tune's loop, many times a second: a "running" line per running trial, now and then."""
        now = time.time()
        if self.terse or not self.steps or now - self.last_beat < RUNNING_LINE_EVERY_S:
            return
        self.last_beat = now
        for trial in trials:
            if trial.status == "RUNNING":
                self.running_line(trial)

    def running_line(self, trial: Any) -> None:
        """Between reports: the step rank 0 published (both times on the worker's clock)."""
        got = read_step(trial.trial_id)
        if got is None:
            return
        step, t = got
        self.published[trial.trial_id] = got
        if step <= self.seen.get(trial.trial_id, (self.t0, 0))[1]:
            return  # nothing new since the last report or line
        self.seen[trial.trial_id] = (t, step)
        first = self.first.setdefault(trial.trial_id, (t, step))
        self.say(f"running  {trial.trial_id} {self._where(trial.trial_id, step, t, first)}")

    def trial_result(self, trial: Any, result: dict[str, Any]) -> None:
        vals = " ".join(f"{n}={result[n]:.4f}" for n in self.keys if finite(result.get(n)))
        step = result.get("step")
        where = f"step {step}"
        if not self.terse and self.steps and isinstance(step, (int, float)):
            now = time.time()
            since = self.first.get(trial.trial_id) or self.seen.get(trial.trial_id, (self.t0, 0))
            self.first.setdefault(trial.trial_id, (now, int(step)))
            self.seen[trial.trial_id] = (now, int(step))
            where = self._where(trial.trial_id, step, now, since)
        self.say(f"report   {trial.trial_id} {where}: {vals} miou={result.get('miou', float('nan')):.4f}")

    def trial_end(self, trials: Sequence[Any], trial: Any, ok: bool) -> None:
        clear_step(trial.trial_id)
        what = "finished" if ok else "FAILED  "
        tail = "" if ok else "; the study goes on"
        self.say(f"{what} {self.label(trial)} ({self.done(trials, trial)}/{self.total}){tail}")
        if not self.terse:
            self._update_best(trial, ok)
            self._study_line(trials, trial, ok)

    def _update_best(self, trial: Any, ok: bool) -> None:
        self.finished_here += 1
        last = trial.last_result or {}
        for k in self.keys if ok else ():
            v = last.get(k)
            if finite(v) and k in self.modes:
                old = self.best.get(k)
                if old is None or (v > old[0] if self.modes[k] == "max" else v < old[0]):
                    self.best[k] = (float(v), trial.trial_id)

    def _study_line(self, trials: Sequence[Any], trial: Any, ok: bool) -> None:
        done = self.done(trials, trial)
        failed = sum(t.status == "ERROR" for t in trials if t is not trial) + (not ok)
        running = sum(t.status == "RUNNING" for t in trials if t is not trial)
        elapsed = time.time() - self.t0
        # the work done here: finished trials plus the running ones' share of their steps (with
        # trials at once, counting finished trials alone over-counted: 2 at once, the first
        # done while the second is at 90 %, gave 3 trials' time for 1.1)
        part = sum(min(1.0, self.seen.get(t.trial_id, (0.0, 0))[1] / self.steps)
                   for t in trials if t is not trial and t.status == "RUNNING") if self.steps else 0.0
        eta = elapsed / (self.finished_here + part) * max(0.0, self.total - done - part)
        best = ", ".join(f"{k}={v:.4f} ({tid})" for k, (v, tid) in self.best.items()) or "none yet"
        self.say(f"study    {done}/{self.total} trials done ({failed} failed, {running} running), "
                 f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}; best so far: {best}")


def progress_callback(
    keys: Sequence[str], total: int, show_seed: bool = False, *, modes: dict[str, str] | None = None,
    steps: int | None = None, terse: bool = False, experiment_path: str | None = None,
) -> Any:
    """A Tune callback printing the study's progress: :class:`ProgressLines` (same arguments)
    fed by Tune's trial events (Ray Tune is imported only here, when a study runs)."""
    from ray import tune

    lines = ProgressLines(keys, total, show_seed, modes=modes, steps=steps, terse=terse, experiment_path=experiment_path)

    class Progress(tune.Callback):
        def __getattr__(self, name: str) -> Any:  # the state, for tests and callers: cb.best, cb.seen
            return getattr(lines, name)

        def setup(self, **info: Any) -> None:
            lines.start()

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            lines.trial_start(trial)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            lines.beat(trials)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            lines.trial_result(trial, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            lines.trial_end(trials, trial, ok=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            lines.trial_end(trials, trial, ok=False)

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
            f"each trial's results in {experiment_path}/trial_<id>/, TensorBoard events in {experiment_path}/tensorboard/")


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
