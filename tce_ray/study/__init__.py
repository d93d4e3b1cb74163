"""The study: the study file (``config``, ``overrides``, ``yaml_load``), the search
(``search_space``, ``samplers``, ``optuna_store``, ``guarded_search``), the Tune side
(``runner``: ``run_study``; ``tune_callbacks``, ``trial_history``), and what keeps a study
safe to stop and resume (``resume``, ``study_lock``, ``preflight``, ``plan``).
``python -m tce_ray.study`` runs the command line (``tce_ray.cli``).

The names of the 0.1 module ``tce_ray.study`` (``run_study``, ``StudyResult``,
``StudyError``, ...) are importable from the package; they load on first use (Ray with
``run_study``).
"""

from __future__ import annotations

import importlib
from typing import Any

_RUNNER_NAMES = ("run_study", "StudyResult", "resolve_objectives", "build_scheduler", "write_study_results", "RUNS_DIR")


def __getattr__(name: str) -> Any:
    if name in ("StudyError", "ConfigError"):
        return getattr(importlib.import_module("tce_ray.study.errors"), name)
    if name in _RUNNER_NAMES:
        return getattr(importlib.import_module("tce_ray.study.runner"), name)
    raise AttributeError(f"module 'tce_ray.study' has no attribute {name!r}")
