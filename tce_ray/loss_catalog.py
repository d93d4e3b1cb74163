"""The built-in losses and their settings, as entries of ``tce_ray.registry``.

No torch here: the loss classes are named ``"tce_ray.losses:Class"`` and imported when a
loss is built, so that a study file is validated without torch. Each setting is stated
once (type, bounds, default, how it is searched and labelled) and listed by name by the
losses that take it. A new built-in loss is one ``register_loss`` call here plus its class
(``losses.py``, or ``baseline_losses.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from tce_ray.registry import LossContext, Setting, register_loss, register_setting

__all__ = ["STOCHASTIC"]

register_setting(Setting(
    "t", float, 1.0, "Tilt of the TCE losses (negative: robust, down-weights the hardest terms).",
    finite=True, search="tilt", label="t"))
register_setting(Setting(
    "gamma", float, 0.1, "Rate of stochastic TCE's running tilted loss, in (0, 1].",
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
    from tce_ray.losses import focal_alpha_from_frequencies

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

register_loss("mcce", factory="tce_ray.losses:MCCE", doc="Mean cross-entropy over the labelled pixels (eq. 1).")
register_loss(
    "focal", factory="tce_ray.losses:FocalLoss", settings=("focal_gamma", "focal_alpha"),
    params={"focal_gamma": "gamma", "focal_alpha": "alpha"}, needs_class_index=_focal_needs_index,
    prepare=_focal_alpha, doc="Softmax focal loss.",
)
register_loss("tce_image", factory="tce_ray.losses:TiltedCrossEntropy", settings=("t",), fixed={"level": "image"},
              doc="Image-level tilted CE (eq. 2).")
register_loss("tce_class", factory="tce_ray.losses:TiltedCrossEntropy", settings=("t",), fixed={"level": "class"},
              doc="Class-level tilted CE (eq. 3).")
register_loss(
    STOCHASTIC, factory="tce_ray.losses:MCCE", settings=("t", "gamma", "tilt_signal", "weight_floor", "min_pixels"),
    params={}, needs_weight_actor=True, doc="Stochastic TCE: MCCE on batches drawn by the tilted class weights.",
)
