"""One training run on Ray Train: the driver (``trainer``: ``run_training``, ``build_trainer``),
the per-worker loop (``worker_loop``), the run's class-weight actor (``weights_actor``),
evaluation, checkpoints, the run's settings (``runspec``) and its state on the storage
(``run_state``), Ray's set-up (``ray_env``) and the dashboard gauges (``live_metrics``).

The names of the 0.1 module ``tce_ray.train`` (``run_training``, ``build_trainer``, ...) are
importable from the package: ``from tce_ray.train import run_training``. Importing the
package imports no Ray; its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_TRAINER_NAMES = (
    "run_training", "build_trainer", "trainer_config", "start_weight_actor", "worker_resources",
    "run_state_dir", "class_index_cache_dir", "CACHE_FOLDER", "STATE_FOLDER", "WEIGHT_SNAPSHOT",
    "CHECKPOINTS_TO_KEEP", "CONTROLLER_FAILURE_LIMIT",
)


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        return getattr(importlib.import_module("tce_ray.train.trainer"), name)
    raise AttributeError(f"module 'tce_ray.train' has no attribute {name!r}")
