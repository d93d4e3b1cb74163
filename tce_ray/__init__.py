"""tce-ray: Tilted Cross-Entropy for fair semantic segmentation, with studies on Ray.

The losses, the stochastic-TCE state, the sampler and the metrics work in any PyTorch
loop without Ray; only ``tce_ray.weights_actor``, ``tce_ray.train``, ``tce_ray.study``,
``tce_ray.ray_env`` and ``tce_ray.tune_callbacks`` need it (see ARCHITECTURE.md). Public names are re-exported here and imported on first use,
so ``import tce_ray`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # losses
    "MCCE": "tce_ray.losses",
    "TiltedCrossEntropy": "tce_ray.losses",
    "FocalLoss": "tce_ray.losses",
    "focal_alpha_from_frequencies": "tce_ray.losses",
    "build_loss": "tce_ray.losses",
    "per_class_ce": "tce_ray.losses",
    "LOSS_NAMES": "tce_ray.losses",
    # the registries (what a run can name), see ARCHITECTURE.md
    "register_loss": "tce_ray.registry",
    "register_dataset": "tce_ray.registry",
    "Setting": "tce_ray.registry",
    "list_losses": "tce_ray.registry",
    # baseline losses
    "WeightedCrossEntropy": "tce_ray.baseline_losses",
    "ClassBalancedCrossEntropy": "tce_ray.baseline_losses",
    "LovaszSoftmax": "tce_ray.baseline_losses",
    "SoftDiceLoss": "tce_ray.baseline_losses",
    "resolve_class_weights": "tce_ray.baseline_losses",
    # stochastic TCE state
    "TiltState": "tce_ray.tilt",
    # metrics and objectives
    "confusion_matrix": "tce_ray.metrics",
    "per_class_iou": "tce_ray.metrics",
    "fairness_report": "tce_ray.metrics",
    "Objective": "tce_ray.objectives",
    "register_objective": "tce_ray.objectives",
    "get_objective": "tce_ray.objectives",
    "list_objectives": "tce_ray.objectives",
    # data, model, sampling
    "build_dataset": "tce_ray.data",
    "list_datasets": "tce_ray.data",
    "deeplabv3plus": "tce_ray.models",
    "ClassIndex": "tce_ray.sampling",
    "TiltedBatchSampler": "tce_ray.sampling",
    # one training run, and the study (these import Ray)
    "RunSpec": "tce_ray.runspec",
    "run_training": "tce_ray.train",
    "run_study": "tce_ray.study",
    "load_config": "tce_ray.config",
    # a finished study's results (no Ray)
    "load_study": "tce_ray.study_data",
    "StudyData": "tce_ray.study_data",
    "build_report": "tce_ray.report",
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
    from tce_ray.baseline_losses import (
        ClassBalancedCrossEntropy,
        LovaszSoftmax,
        SoftDiceLoss,
        WeightedCrossEntropy,
        resolve_class_weights,
    )
    from tce_ray.config import load_config
    from tce_ray.data import build_dataset, list_datasets
    from tce_ray.losses import (
        LOSS_NAMES,
        MCCE,
        FocalLoss,
        TiltedCrossEntropy,
        build_loss,
        focal_alpha_from_frequencies,
        per_class_ce,
    )
    from tce_ray.metrics import confusion_matrix, fairness_report, per_class_iou
    from tce_ray.models import deeplabv3plus
    from tce_ray.objectives import Objective, get_objective, list_objectives, register_objective
    from tce_ray.registry import Setting, list_losses, register_dataset, register_loss
    from tce_ray.runspec import RunSpec
    from tce_ray.sampling import ClassIndex, TiltedBatchSampler
    from tce_ray.report import build_report
    from tce_ray.study import run_study
    from tce_ray.study_data import StudyData, load_study
    from tce_ray.tilt import TiltState
    from tce_ray.train import run_training
