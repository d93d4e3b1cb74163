"""Ray Tune's ``OptunaSearch`` with the study's front guard (:mod:`tce_ray.core.front_guard`). [Ray]

Optuna's samplers (NSGA-II, TPE) and ``study.best_trials`` read a trial's constraints
(``Trial.set_constraint``); Ray's ``OptunaSearch.on_trial_complete`` tells the trial with
its objectives only. This subclass sets the front guard's constraint (and stores the
guarded metric) on the Optuna trial first (:func:`record_guard`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from tce_ray.core.front_guard import GUARD_CONSTRAINT, GUARD_METRIC_ATTR, UNVERIFIED, FrontGuard, _finite, constraint_value

__all__ = ["GuardedOptunaSearch", "record_guard"]

logger = logging.getLogger(__name__)


class GuardedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records the front guard's constraint before each tell
    (``guard`` None: plain ``OptunaSearch``). ``configuration_attr`` is the Optuna user
    attribute holding an enqueued trial's configuration index."""

    def __init__(self, *args: Any, guard: FrontGuard | None = None, configuration_attr: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self._configuration_attr = configuration_attr

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if self._guard is not None and ot_trial is not None and trial_id not in self._completed_trials:
            value = (result or {}).get(self._guard.metric)
            try:
                record_guard(self._ot_study, ot_trial, value, self._guard, configuration_attr=self._configuration_attr)
            except Exception as e:  # noqa: BLE001 - the tell below must happen: mark the trial unverified
                logger.warning("front guard: could not compute the constraint of trial %s (%s)", trial_id, e)
                try:
                    ot_trial.set_constraint(GUARD_CONSTRAINT, UNVERIFIED)
                except Exception:  # noqa: BLE001 - already set, or the storage is gone: tell anyway
                    pass
        super().on_trial_complete(trial_id, result=result, error=error)


def record_guard(study: Any, trial: Any, value: Any, guard: FrontGuard, *, configuration_attr: str) -> float:
    """Store ``value`` (the trial's guarded metric, a user attribute) and set the trial's
    :data:`GUARD_CONSTRAINT` on the running Optuna ``trial`` of ``study``, before it is told. The bound averages the metric of the
    study's COMPLETE trials of the reference configuration (user attribute
    ``configuration_attr``), this trial included when it is one. Returns the constraint."""
    import optuna

    v = float(value) if _finite(value) else math.nan
    trial.set_user_attr(GUARD_METRIC_ATTR, v if math.isfinite(v) else None)
    refs = [
        t.user_attrs.get(GUARD_METRIC_ATTR)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get(configuration_attr) == guard.reference and t.number != trial.number
    ]
    if trial.user_attrs.get(configuration_attr) == guard.reference:
        refs.append(v)
    c = constraint_value(v, refs, guard.max_drop)
    trial.set_constraint(GUARD_CONSTRAINT, c)
    return c
