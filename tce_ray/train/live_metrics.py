"""Live training gauges for the Ray dashboard (``ray.util.metrics``).

Ray exports them in Prometheus text format on each node's metrics port, prefixed
``ray_``: ``ray_tce_class_weight{run,class}``, ``ray_tce_class_iou{run,class}``,
``ray_tce_step_time_seconds{run,rank}``, ``ray_tce_images_per_second{run,rank}`` and
``ray_tce_step{run,rank}``. The dashboard's charts need Prometheus + Grafana to scrape
that endpoint.

The gauges are created lazily, once per process (:func:`gauges`); a
:class:`LiveMetrics` precomputes its tag dicts, so a step costs a few ``Gauge.set`` calls.
Rank 0 also publishes its step for the study's progress lines between reports
(:mod:`tce_ray.train.step_progress`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from tce_ray.train.step_progress import StepPublisher

_CLASS_TAGS = ("run", "class")
_RANK_TAGS = ("run", "rank")
# key -> (gauge name, description, tag keys)
GAUGE_SPECS: dict[str, tuple[str, str, tuple[str, str]]] = {
    "weight": (
        "tce_class_weight",
        "Stochastic TCE: sampling weight of each class (sums to 1 over classes).",
        _CLASS_TAGS,
    ),
    "iou": ("tce_class_iou", "Per-class IoU (fraction) at the latest evaluation.", _CLASS_TAGS),
    "step_time": ("tce_step_time_seconds", "Wall time of the latest training step, data wait included.", _RANK_TAGS),
    "images_per_s": ("tce_images_per_second", "Training images per second of one worker at the latest step.", _RANK_TAGS),
    "step": ("tce_step", "The latest finished training step.", _RANK_TAGS),
}
_GAUGES: dict | None = None


def gauges() -> dict:
    """The process's gauges, created on first use (keys: those of :data:`GAUGE_SPECS`)."""
    global _GAUGES
    if _GAUGES is None:
        from ray.util.metrics import Gauge

        _GAUGES = {
            key: Gauge(name, description=description, tag_keys=tags)
            for key, (name, description, tags) in GAUGE_SPECS.items()
        }
    return _GAUGES


class LiveMetrics:
    """Gauges of one worker of one run: ``set_step`` per step, ``set_weights`` / ``set_iou`` when they change."""

    def __init__(self, run_name: str, rank: int, class_names: Sequence[str]) -> None:
        if not run_name:
            raise ValueError("run_name must be a non-empty string")
        self._g = gauges()
        self._rank_tags = {"run": run_name, "rank": str(int(rank))}
        self._class_tags = [{"run": run_name, "class": str(c)} for c in class_names]
        self._progress = StepPublisher(run_name) if int(rank) == 0 else None

    def set_step(self, step: int, step_time_s: float, images_per_s: float) -> None:
        """Record one finished step (cheap: three ``set`` calls)."""
        self._g["step"].set(step, tags=self._rank_tags)
        self._g["step_time"].set(step_time_s, tags=self._rank_tags)
        self._g["images_per_s"].set(images_per_s, tags=self._rank_tags)
        if self._progress is not None:
            self._progress.update(step)

    def set_weights(self, weights: np.ndarray) -> None:
        """Record the class weights (one ``set`` per class)."""
        self._check_len(weights, "weights")
        gauge = self._g["weight"]
        for tags, w in zip(self._class_tags, weights):
            gauge.set(float(w), tags=tags)

    def set_iou(self, iou: np.ndarray) -> None:
        """Record per-class IoU; classes absent from the evaluation data (NaN) are skipped."""
        self._check_len(iou, "iou")
        gauge = self._g["iou"]
        for tags, v in zip(self._class_tags, iou):
            if not math.isnan(float(v)):
                gauge.set(float(v), tags=tags)

    def _check_len(self, values: np.ndarray, what: str) -> None:
        if len(values) != len(self._class_tags):
            raise ValueError(f"{what} has {len(values)} entries but the run has {len(self._class_tags)} classes")
