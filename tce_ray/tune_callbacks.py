"""What the study hooks into Ray: the Train-to-Tune report callback (which adds the
objectives the workers cannot compute) and the progress lines of a study."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .objectives import Objective

__all__ = ["with_objectives", "make_report_callback", "progress_callback", "finite"]


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


def progress_callback(keys: Sequence[str], total: int, show_seed: bool = False) -> Any:
    """A Tune callback printing one line per trial event (start, every report, end);
    ``keys``: the objectives' metric keys, ``total``: the study's trials."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.t0 = time.time()

        def setup(self, **info):  # noqa: ANN003 - a new (or resumed) experiment starts
            self.t0 = time.time()

        @staticmethod
        def _done(trials, trial) -> int:  # noqa: ANN001 - counts a resumed study's earlier trials too
            return 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)

        def _label(self, trial) -> str:  # noqa: ANN001
            return f"{trial.trial_id} [{_settings_text(trial.config or {}, show_seed)}]"

        def _say(self, msg: str) -> None:
            print(f"[{time.time() - self.t0:6.0f}s] {msg}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
            self._say(f"start    {self._label(trial)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            vals = " ".join(f"{n}={result[n]:.4f}" for n in keys if finite(result.get(n)))
            self._say(f"report   {trial.trial_id} step {result.get('step')}: {vals} miou={result.get('miou', float('nan')):.4f}")

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            self._say(f"finished {self._label(trial)} ({self._done(trials, trial)}/{total})")

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            self._say(f"FAILED   {self._label(trial)} ({self._done(trials, trial)}/{total}); the study goes on")

    return Progress()


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
