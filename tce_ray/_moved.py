"""The module paths of releases before the layer folders (0.1.x), kept for one release.

``tce_ray.config`` is now ``tce_ray.study.config``, ``tce_ray.losses`` is
``tce_ray.core.losses``, and so on (:data:`MOVED`). Importing an old path gives the new
module itself (the same object, so ``isinstance`` checks, monkeypatching and pickles of
classes made under the old path all work) with a ``DeprecationWarning`` naming the new path.
``python -m tce_ray.report`` runs the new module too. CHANGELOG.md lists the moves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED: dict[str, str] = {
    "tce_ray.registry": "tce_ray.core.registry",
    "tce_ray.loss_catalog": "tce_ray.core.loss_catalog",
    "tce_ray.losses": "tce_ray.core.losses",
    "tce_ray.baseline_losses": "tce_ray.core.baseline_losses",
    "tce_ray.tilt": "tce_ray.core.tilt",
    "tce_ray.metrics": "tce_ray.core.metrics",
    "tce_ray.objectives": "tce_ray.core.objectives",
    "tce_ray.stats": "tce_ray.core.stats",
    "tce_ray.gather": "tce_ray.core.gather",
    "tce_ray.front_guard": "tce_ray.core.front_guard",
    "tce_ray.sampling": "tce_ray.data.sampling",
    "tce_ray.runspec": "tce_ray.train.runspec",
    "tce_ray.run_state": "tce_ray.train.run_state",
    "tce_ray.ray_env": "tce_ray.train.ray_env",
    "tce_ray.checkpointing": "tce_ray.train.checkpointing",
    "tce_ray.confusion_io": "tce_ray.train.confusion_io",
    "tce_ray.evaluation": "tce_ray.train.evaluation",
    "tce_ray.live_metrics": "tce_ray.train.live_metrics",
    "tce_ray.step_progress": "tce_ray.train.step_progress",
    "tce_ray.weights_actor": "tce_ray.train.weights_actor",
    "tce_ray.worker_loop": "tce_ray.train.worker_loop",
    "tce_ray.report": "tce_ray.results.report",
    "tce_ray.study_data": "tce_ray.results.study_data",
    "tce_ray.config": "tce_ray.study.config",
    "tce_ray.yaml_load": "tce_ray.study.yaml_load",
    "tce_ray.overrides": "tce_ray.study.overrides",
    "tce_ray.plan": "tce_ray.study.plan",
    "tce_ray.preflight": "tce_ray.study.preflight",
    "tce_ray.search_space": "tce_ray.study.search_space",
    "tce_ray.samplers": "tce_ray.study.samplers",
    "tce_ray.guarded_search": "tce_ray.study.guarded_search",
    "tce_ray.optuna_store": "tce_ray.study.optuna_store",
    "tce_ray.tune_callbacks": "tce_ray.study.tune_callbacks",
    "tce_ray.trial_history": "tce_ray.study.trial_history",
    "tce_ray.resume": "tce_ray.study.resume",
    "tce_ray.study_lock": "tce_ray.study.study_lock",
}
"""Old module path -> new. ``tce_ray.train``, ``tce_ray.study`` and ``tce_ray.results`` are
packages now; their old modules' names stay importable from the package
(``from tce_ray.train import run_training``): see each package's ``__init__``."""


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path works until tce-ray 0.3", DeprecationWarning, stacklevel=3)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self.new)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:  # the new module is already executed
        return None

    def get_code(self, fullname: str) -> Any:  # ``python -m <old path>``
        spec = importlib.util.find_spec(self.new)
        assert spec is not None and spec.loader is not None
        return spec.loader.get_code(self.new)  # type: ignore[attr-defined]


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once (``import tce_ray`` does): an old path
    must never be found as a file (a stale copy, another checkout's editable install)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
