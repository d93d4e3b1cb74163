"""A run's latest training step between its reports, for the study's progress lines [Ray].

A trial reports to Tune only when it evaluates (every ``train.eval_every`` steps, 2,000 in
the Cityscapes study), so Tune's callbacks hear nothing in between. Rank 0 of each run
publishes its step and the time into Ray's cluster-wide key-value store (the GCS; a few
bytes, at most every :data:`PUBLISH_EVERY_S`), and the driver's progress callback reads it
for each running trial (:func:`read_step`) to print a "running ... step k/N" line with
rate and ETA. Everything here is best effort: a store that cannot be reached costs a
progress line, never a step.
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = ["PUBLISH_EVERY_S", "StepPublisher", "read_step", "clear_step"]

PUBLISH_EVERY_S = 5.0
"""Rank 0 writes its step at most this often (seconds)."""
_NAMESPACE = "tce_ray_progress"


def _kv() -> Any:
    from ray.experimental import internal_kv

    return internal_kv if internal_kv._internal_kv_initialized() else None


class StepPublisher:
    """Publishes one run's step (call :meth:`update` after each step; cheap when throttled)."""

    def __init__(self, run_name: str, every_s: float = PUBLISH_EVERY_S) -> None:
        self._key = run_name.encode()
        self._every = float(every_s)
        self._last = -float("inf")
        self._broken = False

    def update(self, step: int) -> None:
        now = time.time()
        if self._broken or now - self._last < self._every:
            return
        self._last = now
        try:
            kv = _kv()
            if kv is None:
                return
            kv._internal_kv_put(self._key, json.dumps({"step": int(step), "t": now}).encode(), overwrite=True,
                                namespace=_NAMESPACE)
        except Exception:  # noqa: BLE001 - progress lines are optional; stop trying
            self._broken = True


def read_step(run_name: str) -> tuple[int, float] | None:
    """The latest ``(step, unix time)`` a run published, or None."""
    try:
        kv = _kv()
        raw = kv._internal_kv_get(run_name.encode(), namespace=_NAMESPACE) if kv is not None else None
        if not raw:
            return None
        obj = json.loads(raw)
        return int(obj["step"]), float(obj["t"])
    except Exception:  # noqa: BLE001 - no line rather than a failed study
        return None


def clear_step(run_name: str) -> None:
    """Forget a run's step (at the run's end)."""
    try:
        kv = _kv()
        if kv is not None:
            kv._internal_kv_del(run_name.encode(), namespace=_NAMESPACE)
    except Exception:  # noqa: BLE001
        pass
