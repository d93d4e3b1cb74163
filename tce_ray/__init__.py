"""tce-ray: Tilted Cross-Entropy for fair semantic segmentation, with studies on Ray.

The package is in layers, each a folder; a module imports only from its own layer or the
layers below it (``tests/test_layers.py`` checks it):

- ``core/``: the losses, the stochastic-TCE state, the metrics, objectives and statistics
  (no Ray, no I/O): what a plain PyTorch loop imports;
- ``data/``, ``models/``: data sets, the class index and tilted batch sampler; DeepLabv3+;
- ``train/``: one training run on Ray Train (driver, worker loop, weight actor, checkpoints);
- ``results/``: a study's tables, report and ``load_study`` (no Ray);
- ``study/``: the study file, the Optuna search on Ray Tune, resume, preflight;
- ``cli.py``: ``python -m tce_ray.study``.

Public names are re-exported here and imported on first use, so ``import tce_ray`` stays
cheap. The module paths of 0.1 (``tce_ray.losses``, ``tce_ray.config``, ...) still import,
with a ``DeprecationWarning`` (:mod:`tce_ray._moved`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from tce_ray import _moved  # noqa: E402 - the 0.1 module paths, for one release

_moved.install()

_EXPORTS: dict[str, str] = {
    # losses
    "MCCE": "tce_ray.core.losses",
    "TiltedCrossEntropy": "tce_ray.core.losses",
    "FocalLoss": "tce_ray.core.losses",
    "focal_alpha_from_frequencies": "tce_ray.core.losses",
    "build_loss": "tce_ray.core.losses",
    "per_class_ce": "tce_ray.core.losses",
    "LOSS_NAMES": "tce_ray.core.losses",
    # the registries (what a run can name), see ARCHITECTURE.md
    "register_loss": "tce_ray.core.registry",
    "register_dataset": "tce_ray.core.registry",
    "Setting": "tce_ray.core.registry",
    "list_losses": "tce_ray.core.registry",
    # baseline losses
    "WeightedCrossEntropy": "tce_ray.core.baseline_losses",
    "ClassBalancedCrossEntropy": "tce_ray.core.baseline_losses",
    "LovaszSoftmax": "tce_ray.core.baseline_losses",
    "SoftDiceLoss": "tce_ray.core.baseline_losses",
    "resolve_class_weights": "tce_ray.core.baseline_losses",
    # stochastic TCE state
    "TiltState": "tce_ray.core.tilt",
    # metrics and objectives
    "confusion_matrix": "tce_ray.core.metrics",
    "per_class_iou": "tce_ray.core.metrics",
    "fairness_report": "tce_ray.core.metrics",
    "Objective": "tce_ray.core.objectives",
    "register_objective": "tce_ray.core.objectives",
    "get_objective": "tce_ray.core.objectives",
    "list_objectives": "tce_ray.core.objectives",
    # data, model, sampling
    "build_dataset": "tce_ray.data",
    "list_datasets": "tce_ray.data",
    "deeplabv3plus": "tce_ray.models",
    "ClassIndex": "tce_ray.data.sampling",
    "TiltedBatchSampler": "tce_ray.data.sampling",
    # one training run, and the study (these import Ray)
    "RunSpec": "tce_ray.train.runspec",
    "run_training": "tce_ray.train.trainer",
    "run_study": "tce_ray.study.runner",
    "load_config": "tce_ray.study.config",
    # a finished study's results (no Ray)
    "load_study": "tce_ray.results.study_data",
    "StudyData": "tce_ray.results.study_data",
    "build_report": "tce_ray.results.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tce_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from tce_ray.core.baseline_losses import (
        ClassBalancedCrossEntropy,
        LovaszSoftmax,
        SoftDiceLoss,
        WeightedCrossEntropy,
        resolve_class_weights,
    )
    from tce_ray.study.config import load_config
    from tce_ray.data import build_dataset, list_datasets
    from tce_ray.core.losses import (
        LOSS_NAMES,
        MCCE,
        FocalLoss,
        TiltedCrossEntropy,
        build_loss,
        focal_alpha_from_frequencies,
        per_class_ce,
    )
    from tce_ray.core.metrics import confusion_matrix, fairness_report, per_class_iou
    from tce_ray.models import deeplabv3plus
    from tce_ray.core.objectives import Objective, get_objective, list_objectives, register_objective
    from tce_ray.core.registry import Setting, list_losses, register_dataset, register_loss
    from tce_ray.train.runspec import RunSpec
    from tce_ray.data.sampling import ClassIndex, TiltedBatchSampler
    from tce_ray.results.report import build_report
    from tce_ray.study.runner import run_study
    from tce_ray.results.study_data import StudyData, load_study
    from tce_ray.core.tilt import TiltState
    from tce_ray.train.trainer import run_training
