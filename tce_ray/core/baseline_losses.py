"""Baseline losses a fairness study is judged against (no Ray; any PyTorch loop).

Every loss is an ``nn.Module`` with ``forward(logits [B,K,H,W], target [B,H,W]) -> scalar``
and the conventions of :mod:`tce_ray.core.losses`: pixels labelled ``ignore_index`` (255 by
default) count nowhere and get an exactly zero gradient; a batch without any labelled
pixel gives 0, still connected to the graph; half/bfloat16 logits are cast to float32
first (float32/float64 keep their dtype); bad shapes, dtypes and labels are rejected.

* :class:`WeightedCrossEntropy`: ``sum_i w_{y_i} CE_i`` over the labelled pixels, divided
  by ``sum_i w_{y_i}`` (``divide_by="weights"``, the default: torch's weighted mean, so
  the baseline is the ``nn.CrossEntropyLoss(weight=w)`` people actually run and the loss
  stays on MCCE's scale whatever the weights' scale; a batch whose labelled pixels all
  have weight 0 gives 0, where torch gives NaN) or by the number of labelled pixels
  (``divide_by="pixels"``: the weighted per-pixel risk, the convention of
  :class:`~tce_ray.core.losses.FocalLoss`; then the weights' scale acts as a learning-rate
  factor). The weights come from :func:`inverse_frequency_weights`,
  :func:`median_frequency_weights`, :func:`effective_number_weights` (all normalised to
  average 1 over the classes present in the training set, absent classes 0) or an
  explicit list (used as given); :func:`resolve_class_weights` picks one by name.
* :class:`ClassBalancedCrossEntropy`: per image, the mean over the classes PRESENT in it
  of each class's mean CE, then the mean over the images with labelled pixels
  (``scope="image"``, the default). This is exactly class-level tilted CE (eq. 3,
  :class:`~tce_ray.core.losses.TiltedCrossEntropy` with ``level="class"``) in the limit
  t -> 0. ``scope="batch"``: the mean over the classes present in the batch of each
  class's mean CE over the whole batch. (Not Cui et al.'s "class-balanced loss", which is
  :func:`effective_number_weights` here.)
* :class:`LovaszSoftmax` (Berman, Rannen Triki, Blaschko, CVPR 2018): for each class c,
  the Lovász extension of the Jaccard loss evaluated at the errors ``|1[y=c] - p_c|``
  of the softmax probabilities; averaged over the classes present (``classes="present"``,
  the default, as the authors' reference) or all K classes (``"all"``), per batch
  (``per_image=False``, the default, as the reference) or per image and then averaged
  over the images with labelled pixels (the reference is undefined for a fully ignored
  image; here it is skipped). Ignored pixels are excluded exactly as in the reference.
* :class:`SoftDiceLoss`: ``1 - mean_c (2 I_c + s) / (P_c + Y_c + s)`` with, over the
  batch's labelled pixels, ``I_c = sum p_c 1[y=c]``, ``P_c = sum p_c`` and
  ``Y_c = sum 1[y=c]`` (the linear "Sørensen" denominator, not squares), ``s = smooth``
  (1 by default), classes present in the batch (default) or all K; plus ``ce_weight``
  times MCCE (``ce_weight=0``, the default, is pure Dice; nnU-Net's Dice + CE is 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tce_ray.core.losses import _check_inputs, _pixel_ce

__all__ = [
    "WEIGHT_SCHEMES",
    "ClassBalancedCrossEntropy",
    "LovaszSoftmax",
    "SoftDiceLoss",
    "WeightedCrossEntropy",
    "effective_number_weights",
    "explicit_weights",
    "inverse_frequency_weights",
    "make_weighted_ce",
    "median_frequency_weights",
    "resolve_class_weights",
]

WEIGHT_SCHEMES: tuple[str, ...] = ("inverse_frequency", "median_frequency", "effective_number")


# --------------------------------------------------------------------------- settings checks
def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_nonneg(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- weights
def _counts_1d(class_pixels: Any, what: str = "class_pixels") -> np.ndarray:
    c = np.asarray(class_pixels, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"{what} must be a 1-D sequence of K per-class pixel counts, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"{what} must be finite and >= 0, got {c.tolist()}")
    if not np.any(c > 0):
        raise ValueError(f"{what} has no class with a pixel; at least one class must be present")
    return c


def _image_counts(counts: Any) -> np.ndarray:
    """``counts[m, c]`` from a ClassIndex (its ``.counts``) or an [M, K] array."""
    arr = np.asarray(getattr(counts, "counts", counts), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(
            f"per-image class counts must be an [M, K] array (or a ClassIndex), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("per-image class counts must be finite and >= 0")
    if not np.any(arr > 0):
        raise ValueError("per-image class counts hold no labelled pixel; at least one is needed")
    return arr


def _mean_one(raw: np.ndarray, present: np.ndarray) -> Tensor:
    """Scale ``raw`` so it averages 1 over ``present`` classes; absent classes get 0."""
    w = np.where(present, raw, 0.0)
    w = w * (present.sum() / w.sum())
    return torch.as_tensor(w, dtype=torch.float32)


def inverse_frequency_weights(class_pixels: Sequence[float] | np.ndarray) -> Tensor:
    """``w_c ∝ 1 / n_c`` from the training set's pixel count (or frequency) per class [K].

    Normalised to average 1 over the classes present (``n_c > 0``); classes absent from
    the training set get weight 0. Same values as
    :func:`tce_ray.core.losses.focal_alpha_from_frequencies`. Returns float32 [K].
    """
    n = _counts_1d(class_pixels)
    present = n > 0
    return _mean_one(1.0 / np.where(present, n, 1.0), present)


def median_frequency_weights(image_counts: Any, normalize: bool = True) -> Tensor:
    """Median-frequency balancing (SegNet; Eigen & Fergus 2015): ``w_c = median(f) / f_c``.

    ``f_c`` = pixels of class c / total labelled pixels of the images where c is present,
    from per-image counts ``counts[m, c]`` (a ClassIndex or an [M, K] array); the median
    is numpy's (the mean of the two middle values for an even count) over the classes
    present. ``normalize=True`` (default) rescales the weights to average 1 over the
    classes present, like the other schemes: the median is then only a constant factor
    (which the default ``divide_by="weights"`` cancels anyway), and what sets this scheme
    apart from inverse frequency is the image-wise ``f_c``. ``normalize=False`` gives
    SegNet's raw weights (the median class gets 1). Classes absent from the training set
    get 0.
    """
    counts = _image_counts(image_counts)
    per_image = counts.sum(axis=1)  # labelled pixels of each image
    class_pixels = counts.sum(axis=0)
    present = class_pixels > 0
    images_total = (per_image[:, None] * (counts > 0)).sum(axis=0)  # pixels of images containing c
    freq = np.where(present, class_pixels / np.where(present, images_total, 1.0), 0.0)
    med = float(np.median(freq[present]))
    raw = np.where(present, med / np.where(present, freq, 1.0), 0.0)
    if _check_bool("normalize", normalize):
        return _mean_one(raw, present)
    return torch.as_tensor(raw, dtype=torch.float32)


def _check_beta(beta: Any) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (
        math.isfinite(beta) and 0.0 <= beta < 1.0
    ):
        raise ValueError(f"effective-number beta must be a number in [0, 1), got {beta!r}")
    return float(beta)


def effective_number_weights(class_pixels: Sequence[float] | np.ndarray, beta: float) -> Tensor:
    """Effective number of samples (Cui et al. 2019): ``w_c ∝ (1 - beta) / (1 - beta ** n_c)``.

    ``n_c`` = training pixels of class c [K]; ``beta`` in [0, 1): 0 gives equal weights,
    beta -> 1 tends to inverse frequency. With pixel counts in the millions, beta must be
    within about ``1 / n_c`` of 1 to differ from equal weights (search ``1 - beta`` on a
    log scale). ``1 - beta ** n`` is evaluated as ``-expm1(n log beta)``. Normalised to
    average 1 over the classes present; absent classes get 0. Returns float32 [K].
    """
    b = _check_beta(beta)
    n = _counts_1d(class_pixels)
    present = n > 0
    if b == 0.0:
        return _mean_one(np.ones_like(n), present)
    effective = -np.expm1(np.where(present, n, 1.0) * math.log(b))  # 1 - beta ** n, > 0
    return _mean_one((1.0 - b) / effective, present)


def explicit_weights(values: Sequence[float] | np.ndarray | Tensor, num_classes: int | None = None) -> Tensor:
    """An explicit list of K class weights, validated (finite, >= 0, one > 0), NOT rescaled."""
    w = torch.as_tensor(values, dtype=torch.float32).detach().clone()
    if w.dim() != 1 or w.numel() == 0:
        raise ValueError(f"class weights must be a 1-D sequence of K numbers, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"class weights must be finite and >= 0, got {w.tolist()}")
    if not bool((w > 0).any()):
        raise ValueError("class weights are all 0; at least one class needs a positive weight")
    if num_classes is not None and w.numel() != num_classes:
        raise ValueError(f"got {w.numel()} class weights for {num_classes} classes")
    return w


def resolve_class_weights(
    scheme: str | Sequence[float] | np.ndarray | Tensor,
    counts: Any = None,
    beta: float | None = None,
) -> Tensor:
    """Class weights [K] float32 by scheme name (:data:`WEIGHT_SCHEMES`) or an explicit list.

    ``counts``: the training set's ClassIndex (or its [M, K] ``counts`` array); needed by
    every named scheme, unused for a list. ``beta``: only for ``"effective_number"``.
    """
    if isinstance(scheme, str):
        if scheme not in WEIGHT_SCHEMES:
            raise ValueError(
                f"unknown class-weight scheme {scheme!r}; valid: {', '.join(WEIGHT_SCHEMES)} "
                "or a list of K numbers"
            )
        if (beta is None) != (scheme != "effective_number"):
            raise ValueError(
                "beta is required by class_weights='effective_number' and used by no other scheme"
                f" (got scheme {scheme!r}, beta={beta!r})"
            )
        if counts is None:
            raise ValueError(f"class_weights={scheme!r} needs the training set's class index (counts)")
        per_image = _image_counts(counts)
        if scheme == "median_frequency":
            return median_frequency_weights(per_image)
        totals = per_image.sum(axis=0)
        if scheme == "inverse_frequency":
            return inverse_frequency_weights(totals)
        return effective_number_weights(totals, beta)  # type: ignore[arg-type]
    if beta is not None:
        raise ValueError("beta is only used by class_weights='effective_number', not by an explicit list")
    k = None if counts is None else _image_counts(counts).shape[1]
    return explicit_weights(scheme, k)


# --------------------------------------------------------------------------- tensor helpers
def _masked_mean(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``values`` over ``mask`` along ``dim``; 0 (with a grad path) where empty."""
    n = mask.sum(dim=dim).clamp(min=1).to(values.dtype)
    return torch.where(mask, values, 0.0).sum(dim=dim) / n


def _class_sums(
    ce: Tensor, labelled: Tensor, target: Tensor, k: int, groups: Tensor, g: int
) -> tuple[Tensor, Tensor]:
    """Per (group, class) CE sums [G, K] and labelled-pixel counts [G, K] (int64)."""
    cls = torch.where(labelled, target, 0)
    flat = (cls + k * groups).reshape(-1)
    sums = ce.new_zeros(g * k).scatter_add(0, flat, ce.reshape(-1)).view(g, k)
    counts = torch.zeros(g * k, dtype=torch.long, device=ce.device)
    counts = counts.scatter_add(0, flat, labelled.reshape(-1).long()).view(g, k)
    return sums, counts


# --------------------------------------------------------------------------- losses
class WeightedCrossEntropy(nn.Module):
    """CE with per-class weights: ``sum w_{y_i} CE_i / sum w_{y_i}`` (or ``/ #pixels``).

    ``weight``: K finite weights >= 0 (see :func:`resolve_class_weights`). ``divide_by``:
    ``"weights"`` (default, torch's ``nn.CrossEntropyLoss(weight=w)``; 0 instead of NaN
    when every labelled pixel has weight 0) or ``"pixels"`` (the number of labelled pixels).
    """

    weight: Tensor

    def __init__(
        self,
        weight: Tensor | Sequence[float] | np.ndarray,
        divide_by: Literal["weights", "pixels"] = "weights",
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", explicit_weights(weight))
        self.divide_by: Literal["weights", "pixels"] = _check_choice(
            "divide_by", divide_by, ("weights", "pixels")
        )
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        ce, labelled = _pixel_ce(logits, target, self.ignore_index)
        k = logits.shape[1]
        if self.weight.numel() != k:
            raise ValueError(f"the loss has {self.weight.numel()} class weights but the logits have K={k} classes")
        cls = torch.where(labelled, target.long(), 0)
        w = torch.where(labelled, self.weight.to(device=ce.device, dtype=ce.dtype)[cls], 0.0)
        total = (w * ce).sum()
        if self.divide_by == "pixels":
            return total / labelled.sum().clamp(min=1).to(ce.dtype)
        den = w.sum()
        return total / torch.where(den > 0, den, 1.0)

    def extra_repr(self) -> str:
        w = [round(x, 4) for x in self.weight.tolist()]
        return f"weight={w}, divide_by={self.divide_by!r}, ignore_index={self.ignore_index}"


def make_weighted_ce(
    class_weights: str | Sequence[float] = "median_frequency",
    beta: float | None = None,
    index: Any = None,
    divide_by: Literal["weights", "pixels"] = "weights",
    ignore_index: int = 255,
) -> WeightedCrossEntropy:
    """:class:`WeightedCrossEntropy` from settings: a scheme name (needs ``index``, the
    training set's ClassIndex or its [M, K] counts) or an explicit list; ``beta`` only for
    ``"effective_number"``."""
    w = resolve_class_weights(class_weights, counts=index, beta=beta)
    return WeightedCrossEntropy(w, divide_by=divide_by, ignore_index=ignore_index)


class ClassBalancedCrossEntropy(nn.Module):
    """Mean over classes present of each class's mean CE (class-level TCE's t -> 0 limit).

    ``scope="image"`` (default): per image over its present classes, then the mean over
    the images with labelled pixels (= ``TiltedCrossEntropy(t -> 0, level="class")``).
    ``scope="batch"``: each class's mean CE over the batch, averaged over the classes
    present in the batch.
    """

    def __init__(self, scope: Literal["image", "batch"] = "image", ignore_index: int = 255) -> None:
        super().__init__()
        self.scope: Literal["image", "batch"] = _check_choice("scope", scope, ("image", "batch"))
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        ce, labelled = _pixel_ce(logits, target, self.ignore_index)
        b, k = logits.shape[:2]
        if self.scope == "image":
            g, groups = b, torch.arange(b, device=ce.device).view(b, 1, 1).expand_as(target)
        else:
            g, groups = 1, torch.zeros_like(target, dtype=torch.long)
        sums, counts = _class_sums(ce, labelled, target.long(), k, groups, g)
        present = counts > 0
        per_group = _masked_mean(sums / counts.clamp(min=1).to(ce.dtype), present, dim=1)
        return _masked_mean(per_group, present.any(dim=1), dim=0)

    def extra_repr(self) -> str:
        return f"scope={self.scope!r}, ignore_index={self.ignore_index}"


def lovasz_class_terms(
    logits: Tensor, target: Tensor, ignore_index: int = 255, per_image: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Lovász-softmax's per-class terms [G, K] (G = B per image, else 1), which classes are
    present in each group [G, K] (bool) and which groups have a labelled pixel [G]."""
    logits, target = _check_inputs(logits, target, ignore_index)
    b, k = logits.shape[:2]
    labelled = target != ignore_index
    prob = torch.softmax(logits, dim=1)
    g = b if per_image else 1
    # [G, K, P]: per group (image or batch) and class, a row over the group's pixels
    if not per_image:
        prob, target, labelled = prob.transpose(0, 1).unsqueeze(0), target.unsqueeze(0), labelled.unsqueeze(0)
    prob = prob.reshape(g, k, -1)
    valid = labelled.reshape(g, 1, -1)
    classes = torch.arange(k, device=target.device).view(1, k, 1)
    fg = (target.reshape(g, 1, -1) == classes) & valid
    errors = torch.where(valid, (fg.to(prob.dtype) - prob).abs(), 0.0)
    # ignored pixels sort strictly last (key -1 < any error), so each class's order of
    # labelled pixels is the reference's; their error is 0 and their Lovász weight 0
    key = torch.where(valid, errors.detach(), -1.0)
    perm = torch.sort(key, dim=2, descending=True, stable=True).indices
    errors_sorted = errors.gather(2, perm)
    with torch.no_grad():
        fg_sorted = fg.gather(2, perm).double()
        n_valid = valid.sum(dim=2, keepdim=True)  # the first n_valid sorted entries
        valid_sorted = torch.arange(perm.shape[2], device=perm.device) < n_valid
        gts = fg_sorted.sum(dim=2, keepdim=True)
        intersection = gts - fg_sorted.cumsum(dim=2)
        union = gts + ((1.0 - fg_sorted) * valid_sorted).cumsum(dim=2)
        jaccard = 1.0 - intersection / union.clamp(min=1.0)  # union 0 only if no pixel yet
        grad = torch.diff(jaccard, dim=2, prepend=torch.zeros_like(jaccard[..., :1]))
    per_class = (errors_sorted * grad.to(errors.dtype)).sum(dim=2)  # [G, K]
    return per_class, gts.squeeze(2) > 0, n_valid.reshape(g) > 0


class LovaszSoftmax(nn.Module):
    """Lovász-softmax loss (Berman et al. 2018) on ``softmax(logits)``.

    ``per_image``: one loss per image, averaged over the images with labelled pixels
    (default False: one loss over the batch's labelled pixels). ``classes``:
    ``"present"`` (default; classes with a labelled pixel in the image / batch) or
    ``"all"``. The Lovász gradient weights are computed in float64 (exact prefix counts
    for any image size) and cast to the working dtype.
    """

    def __init__(
        self,
        per_image: bool = False,
        classes: Literal["present", "all"] = "present",
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.per_image = _check_bool("per_image", per_image)
        self.classes: Literal["present", "all"] = _check_choice("classes", classes, ("present", "all"))
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        per_class, present, has_pixels = lovasz_class_terms(logits, target, self.ignore_index, self.per_image)
        g, k = per_class.shape
        chosen = present if self.classes == "present" else has_pixels.unsqueeze(1).expand(g, k)
        per_group = _masked_mean(per_class, chosen, dim=1)
        return _masked_mean(per_group, has_pixels, dim=0)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}, classes={self.classes!r}, ignore_index={self.ignore_index}"


class SoftDiceLoss(nn.Module):
    """Soft multi-class Dice on ``softmax(logits)``, per batch, plus ``ce_weight`` * MCCE.

    ``1 - mean_c (2 I_c + smooth) / (P_c + Y_c + smooth)`` over the batch's labelled
    pixels (see the module docstring), over the classes present in the batch
    (``classes="present"``, default) or all K. ``smooth`` >= 0 (default 1; must be > 0
    with ``classes="all"``, where an absent class with no predicted mass would be 0/0).
    ``ce_weight`` >= 0 (default 0: pure Dice).
    """

    def __init__(
        self,
        smooth: float = 1.0,
        classes: Literal["present", "all"] = "present",
        ce_weight: float = 0.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.smooth = _check_nonneg("dice smooth", smooth)
        self.classes: Literal["present", "all"] = _check_choice("classes", classes, ("present", "all"))
        if self.classes == "all" and self.smooth == 0.0:
            raise ValueError("dice smooth must be > 0 with classes='all' (an absent class would give 0/0)")
        self.ce_weight = _check_nonneg("ce_weight", ce_weight)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target = _check_inputs(logits, target, self.ignore_index)
        k = logits.shape[1]
        labelled = target != self.ignore_index
        cls = torch.where(labelled, target, 0)
        mask = labelled.unsqueeze(1)
        prob = torch.where(mask, torch.softmax(logits, dim=1), 0.0)
        classes = torch.arange(k, device=cls.device).view(1, k, 1, 1)
        onehot = ((cls.unsqueeze(1) == classes) & mask).to(prob.dtype)
        inter = (prob * onehot).sum(dim=(0, 2, 3))
        n_true = onehot.sum(dim=(0, 2, 3))
        denom = prob.sum(dim=(0, 2, 3)) + n_true + self.smooth
        chosen = n_true > 0 if self.classes == "present" else labelled.any().expand(k)
        # denominators of chosen classes are >= 1 (present) or >= smooth > 0 (all)
        dice = (2.0 * inter + self.smooth) / torch.where(chosen, denom, 1.0)
        loss = _masked_mean(1.0 - dice, chosen, dim=0)
        if self.ce_weight > 0:
            ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
            loss = loss + self.ce_weight * ce / labelled.sum().clamp(min=1).to(prob.dtype)
        return loss

    def extra_repr(self) -> str:
        return (
            f"smooth={self.smooth}, classes={self.classes!r}, ce_weight={self.ce_weight}, "
            f"ignore_index={self.ignore_index}"
        )
