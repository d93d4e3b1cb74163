"""The built-in losses and their settings, as entries of ``tce_ray.core.registry``.

No torch here: the loss classes are named ``"tce_ray.core.losses:Class"`` and imported when a
loss is built, so that a study file is validated without torch. Each setting is stated
once (type, bounds, default, how it is searched and labelled) and listed by name by the
losses that take it. A new built-in loss is one ``register_loss`` call here plus its class
(``losses.py``, or ``baseline_losses.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from tce_ray.core.registry import LossContext, Setting, register_loss, register_setting

__all__ = ["CLASS_TILT_LOSSES", "STOCHASTIC"]

register_setting(Setting(
    "t", float, 1.0, "Tilt of the TCE losses (negative: robust, down-weights the hardest terms).",
    finite=True, search="tilt", label="t"))
register_setting(Setting(
    "gamma", float, 0.1, "Rate of the running per-class loss (stochastic TCE, class tilt), in (0, 1].",
    gt=0.0, le=1.0, search="range", label="γ"))
register_setting(Setting("focal_gamma", float, 2.0, "Focal loss focusing exponent.", ge=0.0, search="range", label="fγ"))
register_setting(Setting(
    "focal_alpha", Literal["inverse_frequency", "none"] | list[float], "inverse_frequency",
    "Focal class weights: from the training set's pixel frequencies, none, or K numbers."))
register_setting(Setting(
    "tilt_signal", Literal["batch", "class"], "batch",
    "What a worker reports for stochastic TCE: whole-batch MCCE (the paper) or the CE over the drawn "
    "class's pixels (the project's extension).", search="choice", label="signal", label_omit=("batch",)))
register_setting(Setting(
    "weight_floor", float, 0.0, "Mix the tilted weights with uniform so no drawable class is drawn below floor/K.",
    ge=0.0, le=1.0, search="range", label="floor", label_omit=(0.0,)))
register_setting(Setting(
    "min_pixels", int, 1, "Pixels of a class an image needs to count as containing it (the index D_c).", ge=1))


def _focal_needs_index(settings: Mapping[str, Any]) -> bool:
    return settings.get("focal_alpha") == "inverse_frequency"


def _focal_alpha(keywords: dict[str, Any], context: LossContext) -> dict[str, Any]:
    """``alpha`` from ``loss.focal_alpha``: inverse pixel frequencies, none, or K numbers."""
    from tce_ray.core.losses import focal_alpha_from_frequencies

    alpha = keywords["alpha"]
    if alpha == "inverse_frequency":
        alpha = focal_alpha_from_frequencies(context.pixel_frequencies("focal_alpha='inverse_frequency'"))
    elif alpha == "none":
        alpha = None
    elif len(alpha) != context.num_classes:
        raise ValueError(f"loss.focal_alpha has {len(alpha)} values; the data set has {context.num_classes} classes")
    else:
        alpha = list(alpha)
    return {**keywords, "alpha": alpha}


STOCHASTIC = "tce_stochastic"
"""Stochastic TCE (Algorithm 1): the loss is plain MCCE; the tilt lives in the class weights
that the run's weight actor keeps and the tilted batch sampler draws from."""

register_loss("mcce", factory="tce_ray.core.losses:MCCE", doc="Mean cross-entropy over the labelled pixels (eq. 1).")
register_loss(
    "focal", factory="tce_ray.core.losses:FocalLoss", settings=("focal_gamma", "focal_alpha"),
    params={"focal_gamma": "gamma", "focal_alpha": "alpha"}, needs_class_index=_focal_needs_index,
    prepare=_focal_alpha, doc="Softmax focal loss.",
)
register_setting(Setting(
    "tilt_scope", Literal["global", "local"], "global",
    "Image-level TCE with several workers: tilt over the images of the global batch (eq. 2, gathered across "
    "workers) or over each worker's own batch (then DDP averages: a different objective).",
    label="tilt_scope", label_omit=("global",)))
register_loss("tce_image", factory="tce_ray.core.losses:TiltedCrossEntropy", settings=("t", "tilt_scope"),
              fixed={"level": "image"}, doc="Image-level tilted CE (eq. 2).")
register_loss("tce_class", factory="tce_ray.core.losses:TiltedCrossEntropy", settings=("t",), fixed={"level": "class"},
              doc="Class-level tilted CE (eq. 3).")
def _keep_pixel_ce(keywords: dict[str, Any], context: LossContext) -> dict[str, Any]:
    """The class tilt signal reads the MCCE's per-pixel CE of the step (no second CE pass)."""
    return {"keep_pixel_ce": keywords["tilt_signal"] == "class"}


register_loss(
    STOCHASTIC, factory="tce_ray.core.losses:MCCE", settings=("t", "gamma", "tilt_signal", "weight_floor", "min_pixels"),
    params={"tilt_signal": "tilt_signal"}, prepare=_keep_pixel_ce, needs_weight_actor=True,
    doc="Stochastic TCE: MCCE on batches drawn by the tilted class weights.",
)

# --------------------------------------------------------------------------- baselines
# The remedies a fairness study is judged against (tce_ray.core.baseline_losses).

_WEIGHT_SCHEMES = ("inverse_frequency", "median_frequency", "effective_number")
register_setting(Setting(
    "class_weights", Literal["inverse_frequency", "median_frequency", "effective_number"] | list[float],
    "median_frequency",
    "Class-weighted CE: weights from the training set's class statistics (inverse pixel frequency, "
    "SegNet's median-frequency balancing, Cui et al.'s effective number of samples) or K numbers.",
    label="w"))
register_setting(Setting(
    "beta", float, 0.9999, "Effective number of samples: w_c ∝ (1 - beta) / (1 - beta^n_c) (class_weights: "
    "effective_number only).", ge=0.0, lt=1.0, search="range", label="β"))
register_setting(Setting(
    "divide_by", Literal["weights", "pixels"], "weights",
    "Class-weighted CE's denominator: the sum of the labelled pixels' weights (torch's weighted mean) or their count.",
    label="÷", label_omit=("weights",)))
register_setting(Setting(
    "scope", Literal["image", "batch"], "image",
    "Class-balanced CE: average each class's mean CE per image (class-level TCE's t -> 0 limit) or over the batch.",
    search="choice", label="scope", label_omit=("image",)))
register_setting(Setting(
    "per_image", bool, False, "Lovász-softmax per image (then averaged) instead of over the batch.",
    search="choice", label="per_image", label_omit=(False,)))
register_setting(Setting(
    "classes", Literal["present", "all"], "present",
    "Lovász / Dice: average over the classes present in the target, or over all classes.",
    label="classes", label_omit=("present",)))
register_setting(Setting("smooth", float, 1.0, "Soft Dice smoothing term (> 0 with classes: all).", ge=0.0, label="smooth",
                         label_omit=(1.0,)))
register_setting(Setting(
    "ce_weight", float, 0.0, "Soft Dice plus this weight times MCCE (0: pure Dice).", ge=0.0, search="range",
    label="ce", label_omit=(0.0,)))


def _weights_need_index(settings: Mapping[str, Any]) -> bool:
    return isinstance(settings.get("class_weights"), str)


def _class_weights(keywords: dict[str, Any], context: LossContext) -> dict[str, Any]:
    """``index`` for a weighting scheme; ``beta`` only for the effective number of samples."""
    scheme = keywords["class_weights"]
    out = dict(keywords)
    if scheme != "effective_number":
        out.pop("beta")
    if isinstance(scheme, str):
        if context.class_index is None:
            raise ValueError(f"loss.class_weights={scheme!r} needs the class index of the training set")
        out["index"] = context.class_index
    elif len(scheme) != context.num_classes:
        raise ValueError(f"loss.class_weights has {len(scheme)} values; the data set has {context.num_classes} classes")
    return out


register_loss(
    "ce_weighted", factory="tce_ray.core.baseline_losses:make_weighted_ce",
    settings=("class_weights", "beta", "divide_by"), needs_class_index=_weights_need_index, prepare=_class_weights,
    doc="Cross-entropy with per-class weights (inverse / median frequency, effective number, or a list).",
)
register_loss("ce_balanced", factory="tce_ray.core.baseline_losses:ClassBalancedCrossEntropy", settings=("scope",),
              doc="Class-balanced CE: each present class's mean CE, averaged (class-level TCE's t -> 0 limit).")
register_loss("lovasz", factory="tce_ray.core.baseline_losses:LovaszSoftmax", settings=("per_image", "classes"),
              doc="Lovász-softmax (Berman et al. 2018), over the batch or per image.")
register_loss("dice", factory="tce_ray.core.baseline_losses:SoftDiceLoss", settings=("smooth", "classes", "ce_weight"),
              doc="Soft multi-class Dice, optionally plus ce_weight x MCCE.")

# --------------------------------------------------------------------------- class tilt on the loss
register_setting(Setting(
    "class_signal", Literal["ce", "iou"], "ce",
    "What drives the class tilt's weights: each class's running mean CE (its misses) or 1 - IoU of a running "
    "confusion matrix (also its false positives).", search="choice", label="signal", label_omit=("ce",)))
register_setting(Setting(
    "weight_cap", float, 1.0, "The largest weight the class tilt gives any class, in (0, 1] (1: no cap).",
    gt=0.0, le=1.0, search="range", label="cap", label_omit=(1.0,)))

CLASS_TILT_LOSSES = ("class_tilt_ce", "class_tilt_lovasz")
"""The losses weighted per class by the run's class tilt (``tce_ray.core.class_tilt``): the
weight actor keeps the running per-class losses of all workers and serves the weights."""

_CLASS_TILT_SETTINGS = ("t", "gamma", "weight_floor", "class_signal", "weight_cap")
register_loss(
    "class_tilt_ce", factory="tce_ray.core.class_tilt_losses:ClassTiltCrossEntropy", settings=_CLASS_TILT_SETTINGS,
    params={"class_signal": "signal"}, needs_weight_actor=True,
    doc="Per-class mean CE weighted by softmax(t R) of the run's running class losses (online class-level TERM).",
)
register_loss(
    "class_tilt_lovasz", factory="tce_ray.core.class_tilt_losses:ClassTiltLovasz", settings=_CLASS_TILT_SETTINGS,
    params={"class_signal": "signal"}, needs_weight_actor=True,
    doc="Lovász-softmax's per-class terms weighted by the run's class tilt.",
)
