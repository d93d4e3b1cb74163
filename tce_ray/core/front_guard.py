"""The front guard: no trial whose mIoU falls well below the reference's is Pareto-optimal.

The shipped studies optimise ``[worst_iou, iou_std]``. A model that predicts one class
everywhere scores worst 0 and std ~0 and would dominate most honest trials on those two
objectives. The guard (``front_guard:`` in a study file) is a constraint beside them:

    bound = mean(metric of the reference configuration's completed trials) - max_drop

and a trial whose ``metric`` (``miou``) lies below ``bound`` *violates* it. The reference
is an explicit configuration (``search.configurations[reference]``; default: the first
``mcce`` one), averaged over its seeds.

Where it applies:

- the result tables (:mod:`tce_ray.results.tables`): violating trials are never ranked on the
  Pareto front (``pareto_rank = -1``, ``front_guard`` says why); the bound is computed
  from the final tables, so it is the mean over every completed reference seed. While the
  reference has no completed trial (an interrupted study), NO trial is ranked: none can
  be shown to satisfy the guard; they are ranked once it has finished (``--resume``, or
  ``python -m tce_ray.results.report`` on the final tables).
- Optuna (a trial constraint, Optuna 5's ``Trial.set_constraint``, which replaces the
  samplers' deprecated ``constraints_func``): when a trial completes, :func:`tce_ray.study.guarded_search.record_guard`
  stores its metric (user attribute) and sets its constraint ``front_guard`` =
  ``bound - metric`` (feasible when <= 0) BEFORE the trial is told;
  the bound is the mean over the reference trials completed *by then* (the trial itself
  included when it is one). A trial that completes before any reference trial is stored
  as infeasible (:data:`UNVERIFIED`): Optuna's values are fixed at ``tell`` and cannot be
  revised later. The explicit configurations run first (the reference is queued first
  when listed first), so this concerns at most the trials running beside the first
  reference trial; the report, computed at the end, re-checks every trial against the
  final bound. NSGA-II and TPE use the constraint (feasible trials dominate infeasible
  ones; ``study.best_trials`` lists only feasible ones); the random sampler ignores it.

No Ray, no torch, no pandas, no Optuna here: the Optuna side is
:mod:`tce_ray.study.guarded_search`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "FrontGuard",
    "GUARD_METRIC_ATTR",
    "GUARD_CONSTRAINT",
    "UNVERIFIED",
    "guard_bound",
    "constraint_value",
    "METRIC_LABELS",
]

GUARD_METRIC_ATTR = "tce_guard_metric"
"""Optuna user attribute: the guarded metric of a completed trial (its last report)."""
GUARD_CONSTRAINT = "front_guard"
"""Name of the Optuna trial constraint (``FrozenTrial.constraints["front_guard"]``): the
trial's ``bound - metric`` (<= 0 feasible)."""
UNVERIFIED = 1.0
"""Constraint value of a trial that cannot be checked (no completed reference trial yet,
or no finite metric): infeasible."""
METRIC_LABELS = {"miou": "mIoU"}
"""How the report names a guarded metric."""


@dataclass(frozen=True)
class FrontGuard:
    """A resolved guard: ``metric`` (a key every run reports; ``miou``), ``max_drop`` (in the
    metric's units: 0.05 = 5 points of mIoU) below the mean of explicit configuration
    ``reference`` over its completed trials."""

    reference: int
    max_drop: float = 0.05
    metric: str = "miou"

    def __post_init__(self) -> None:
        if isinstance(self.reference, bool) or not isinstance(self.reference, int) or self.reference < 0:
            raise ValueError(f"front guard reference must be a configuration index >= 0, got {self.reference!r}")
        if isinstance(self.max_drop, bool) or not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop <= 1):
            raise ValueError(f"front guard max_drop must be a number in [0, 1], got {self.max_drop!r}")
        if self.metric not in METRIC_LABELS:
            raise ValueError(f"front guard metric must be one of {sorted(METRIC_LABELS)}, got {self.metric!r}")

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    def to_meta(self) -> dict[str, Any]:
        """JSON-safe form (``study.json``'s ``front_guard``)."""
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> FrontGuard | None:
        """The guard a ``study.json`` records (None when it has none)."""
        if not meta:
            return None
        return cls(reference=int(meta["reference"]), max_drop=float(meta["max_drop"]), metric=str(meta.get("metric", "miou")))

    def describe(self, bound: float, n_reference: int) -> str:
        """One sentence for the report (IoU in percent, as every figure there)."""
        head = (f"Front guard: a trial is ranked on the Pareto front only if its {self.metric_label} is at least the "
                f"mean {self.metric_label} of explicit configuration #{self.reference} minus "
                f"{100.0 * self.max_drop:g} points (max_drop {self.max_drop:g})")
        if n_reference == 0 or not math.isfinite(bound):
            return head + (f"; configuration #{self.reference} has no completed trial yet, so no trial can be "
                           "checked and none is ranked (resume the study to rank them).")
        return head + f" (bound {100.0 * bound:.2f} %, from {n_reference} completed reference trial{'s' if n_reference != 1 else ''})."


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def guard_bound(reference_values: Iterable[Any], max_drop: float) -> tuple[float, int]:
    """(bound, n): the mean of the finite ``reference_values`` minus ``max_drop``, and how
    many values it averages; (NaN, 0) without any."""
    vals = [float(v) for v in reference_values if _finite(v)]
    if not vals:
        return math.nan, 0
    return math.fsum(vals) / len(vals) - float(max_drop), len(vals)


def constraint_value(value: Any, reference_values: Iterable[Any], max_drop: float) -> float:
    """``bound - value`` (feasible when <= 0); :data:`UNVERIFIED` without a reference
    value or without a finite ``value``."""
    bound, n = guard_bound(reference_values, max_drop)
    if n == 0 or not _finite(value):
        return UNVERIFIED
    return bound - float(value)
