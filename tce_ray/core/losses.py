"""Segmentation losses: MCCE, tilted cross-entropy (image / class level) and focal loss.

Every loss is an ``nn.Module`` whose ``forward(logits [B,K,H,W], target [B,H,W])`` returns
a scalar. Pixels labelled ``ignore_index`` (255 by default) count nowhere and receive an
exactly zero gradient. A batch without any labelled pixel gives a loss of 0 that is still
connected to the graph (``backward()`` works and yields zero gradients), never NaN.
Half-precision logits (e.g. under ``torch.autocast``) are cast to float32 before
``log_softmax``; float32/float64 logits keep their dtype. The code is device-agnostic.

Where the project resolves an ambiguity of the paper (see ``shared/SPEC.md``):

* Tilted losses are computed in log-sum-exp form, ``(logsumexp(t L) - log n) / t``,
  evaluated as ``c + log1p(mean(expm1(t (L - c)))) / t`` with ``c`` the entry maximising
  ``t L`` (a constant for autograd). This never exponentiates a loss, is exact for any
  ``c`` and keeps float32 accurate for small ``|t|`` (no cancellation). For
  ``|t| < 1e-8`` the loss is exactly the plain mean (its limit as t -> 0). Negative ``t``
  is allowed (it down-weights the hardest terms).
* Image level (eq. 2): ``L_m`` is the mean CE over image m's labelled pixels; the tilt
  runs over the images that have labelled pixels (others are skipped), so ``n`` is the
  number of such images, not ``B``.
* Image level across data-parallel workers (``tilt_scope``): eq. 2 is not a mean over
  images, so tilting each worker's local batch and averaging the gradients (DDP) is a
  different objective (with 2 workers the gradient was 45 % off). ``tilt_scope="global"``
  (the default) gathers every rank's per-image losses with autograd
  (:func:`tce_ray.core.gather.all_gather_rows`) and tilts over the GLOBAL batch; after DDP's
  gradient average the gradient equals the one-process gradient of eq. 2 over the global
  batch, and the loss value is the same on every rank. Every rank must then call the loss
  (and backward) together. ``tilt_scope="local"`` keeps the per-worker form: each rank
  tilts over its own images, i.e. the run minimises the mean over ranks of the local eq. 2.
  Outside torch.distributed (or with one rank) both are the same. Class level (eq. 3)
  and MCCE are means over images/pixels and need no gather (exact with equal local
  batches).
* Class level (eq. 3): the paper writes ``1/K``, but ``L_{m,c}`` is undefined for a class
  absent from image m, so per image the tilt runs over the classes PRESENT in it; the
  per-image values are then averaged over the images that have labelled pixels.
* Focal loss: ``-alpha_c (1 - p)^gamma log p`` averaged over the labelled pixels (divided
  by their count, not by the sum of their alphas), as torchvision's focal loss and the
  paper's reference use a plain mean. :func:`focal_alpha_from_frequencies` normalises
  the inverse frequencies so that they average to 1 over the classes present in the
  training set (absent classes get 0); with equal frequencies every alpha is 1 and the
  loss equals MCCE at ``gamma = 0``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tce_ray.core.registry import LossContext, Setting, get_loss, list_losses, register_loss
from tce_ray.core.gather import all_gather_rows, distributed_world_size

__all__ = [
    "LOSS_NAMES",
    "MCCE",
    "FocalLoss",
    "TiltedCrossEntropy",
    "build_loss",
    "focal_alpha_from_frequencies",
    "per_class_ce",
    "make_loss",
    "needs_class_index",
    "needs_weight_actor",
    "register_loss",
    "Setting",
    "class_ce",
]

T_ZERO: float = 1e-8
"""Tilts with ``|t|`` below this are treated as exactly 0 (the plain mean)."""


# --------------------------------------------------------------------------- helpers
def _check_inputs(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Validate shapes/dtypes/label range; return (logits in >= float32, int64 target)."""
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"logits and target must be torch.Tensors, got {type(logits).__name__} and "
            f"{type(target).__name__}"
        )
    if logits.dim() != 4:
        raise ValueError(
            f"logits must be 4-D [B,K,H,W], got shape {tuple(logits.shape)}; "
            "add a batch dimension with logits.unsqueeze(0) for a single image"
        )
    if target.dim() != 3:
        raise ValueError(
            f"target must be 3-D [B,H,W], got shape {tuple(target.shape)}; "
            "squeeze a channel dimension of size 1 with target.squeeze(1)"
        )
    b, k, h, w = logits.shape
    if target.shape[0] != b:
        raise ValueError(f"batch size mismatch: logits have B={b}, target has B={target.shape[0]}")
    if tuple(target.shape[1:]) != (h, w):
        raise ValueError(
            f"spatial size mismatch: logits are {h}x{w}, target is "
            f"{target.shape[1]}x{target.shape[2]}; upsample the logits to the label size"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor of class ids, got dtype {target.dtype}")
    if target.device != logits.device:
        raise ValueError(f"logits are on {logits.device} but target is on {target.device}")
    target = target.long()
    if target.numel() > 0:
        labelled = target != ignore_index
        lo, hi = torch.stack(torch.where(labelled, target, 0).aminmax()).tolist()
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"target contains class id {bad}, outside [0, {k}) for K={k} logits channels "
                f"and not the ignore_index {ignore_index}; remap the labels or set ignore_index"
            )
    return logits.to(torch.promote_types(logits.dtype, torch.float32)), target


def _pixel_ce(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Per-pixel CE [B,H,W] (0 at ignored pixels) and the labelled-pixel mask [B,H,W]."""
    logits, target = _check_inputs(logits, target, ignore_index)
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return ce, target != ignore_index


def _check_t(t: float) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"tilt t must be a finite real number, got {t!r}")
    return float(t)


def _tilted_rows(values: Tensor, mask: Tensor, t: float) -> Tensor:
    """Row-wise tilted mean ``(1/t) log(mean_{mask} exp(t v))`` of ``values`` [R,N].

    Entries where ``mask`` is False are excluded; a row with no entry gives 0 (finite,
    zero gradient), so callers mask empty rows out afterwards.
    """
    n = mask.sum(dim=-1).clamp(min=1).to(values.dtype)
    if abs(t) < T_ZERO:
        return torch.where(mask, values, 0.0).sum(dim=-1) / n
    tv = t * values
    with torch.no_grad():  # the shift c cancels exactly, so it is a constant for autograd
        shift = torch.where(mask, tv, -math.inf).amax(dim=-1, keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, 0.0)
    x = torch.where(mask, tv - shift, 0.0)  # <= 0 on the mask, 0 elsewhere (expm1(0) = 0)
    mean_expm1 = torch.expm1(x).sum(dim=-1) / n
    return (shift.squeeze(-1) + torch.log1p(mean_expm1)) / t


# --------------------------------------------------------------------------- losses
class MCCE(nn.Module):
    """Mean cross-entropy over every labelled pixel of the batch (paper eq. 1).

    ``keep_pixel_ce=True`` keeps the last forward's per-pixel CE, detached, in
    ``pixel_ce`` ([B,H,W], 0 at ignored pixels): stochastic TCE's class signal is read from
    it with :func:`class_ce` instead of computing the CE a second time.
    """

    def __init__(self, ignore_index: int = 255, keep_pixel_ce: bool = False) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.keep_pixel_ce = bool(keep_pixel_ce)
        self.pixel_ce: Tensor | None = None

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        ce, labelled = _pixel_ce(logits, target, self.ignore_index)
        if self.keep_pixel_ce:
            self.pixel_ce = ce.detach()
        return ce.sum() / labelled.sum().clamp(min=1).to(ce.dtype)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}" + (", keep_pixel_ce=True" if self.keep_pixel_ce else "")


TILT_SCOPES: tuple[str, ...] = ("global", "local")


class TiltedCrossEntropy(nn.Module):
    """Tilted CE at image level (eq. 2) or class level (eq. 3, over present classes).

    ``tilt_scope`` (image level only; see the module docstring): ``"global"`` (default)
    tilts over the images of every data-parallel rank, ``"local"`` over this rank's only.
    """

    def __init__(
        self,
        t: float,
        level: Literal["image", "class"] = "image",
        ignore_index: int = 255,
        tilt_scope: Literal["global", "local"] = "global",
    ) -> None:
        super().__init__()
        if level not in ("image", "class"):
            raise ValueError(f"level must be 'image' or 'class', got {level!r}")
        if tilt_scope not in TILT_SCOPES:
            raise ValueError(
                f"tilt_scope must be 'global' (eq. 2 over the global batch) or 'local' "
                f"(each worker's batch), got {tilt_scope!r}"
            )
        self.t = _check_t(t)
        self.level: Literal["image", "class"] = level
        self.ignore_index = int(ignore_index)
        self.tilt_scope: Literal["global", "local"] = tilt_scope

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        ce, labelled = _pixel_ce(logits, target, self.ignore_index)
        b, k = logits.shape[:2]
        if self.level == "image":
            counts = labelled.sum(dim=(1, 2))
            per_image = ce.sum(dim=(1, 2)) / counts.clamp(min=1).to(ce.dtype)
            if self.tilt_scope == "global" and distributed_world_size() > 1:
                per_image, counts = all_gather_rows(per_image), all_gather_rows(counts)
            return _tilted_rows(per_image.unsqueeze(0), (counts > 0).unsqueeze(0), self.t)[0]
        # class level: per-image, per-class sums via one scatter_add over b*K + class
        cls = torch.where(labelled, target.long(), 0)
        flat = (cls + k * torch.arange(b, device=ce.device).view(b, 1, 1)).reshape(-1)
        sums = ce.new_zeros(b * k).scatter_add(0, flat, ce.reshape(-1)).view(b, k)
        counts = torch.zeros(b * k, dtype=torch.long, device=ce.device)
        counts = counts.scatter_add(0, flat, labelled.reshape(-1).long()).view(b, k)
        present = counts > 0
        per_class = sums / counts.clamp(min=1).to(ce.dtype)
        per_image = _tilted_rows(per_class, present, self.t)
        has_pixels = present.any(dim=1)
        n_images = has_pixels.sum().clamp(min=1).to(ce.dtype)
        return torch.where(has_pixels, per_image, 0.0).sum() / n_images

    def extra_repr(self) -> str:
        scope = f", tilt_scope={self.tilt_scope!r}" if self.level == "image" else ""
        return f"t={self.t}, level={self.level!r}, ignore_index={self.ignore_index}{scope}"


class FocalLoss(nn.Module):
    """Softmax focal loss ``-alpha_c (1-p)^gamma log p``, mean over labelled pixels.

    Normalised by the NUMBER of labelled pixels (not by the sum of their alphas).
    ``alpha=None`` means every alpha is 1. ``(1-p)`` is computed as ``-expm1(log p)``.
    """

    alpha: Tensor | None

    def __init__(
        self,
        alpha: Tensor | Sequence[float] | np.ndarray | None = None,
        gamma: float = 2.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (
            math.isfinite(gamma) and gamma >= 0
        ):
            raise ValueError(f"focal gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.ignore_index = int(ignore_index)
        if alpha is None:
            self.register_buffer("alpha", None)
        else:
            a = torch.as_tensor(alpha, dtype=torch.float32).detach().clone()
            if a.dim() != 1 or a.numel() == 0:
                raise ValueError(
                    f"alpha must be a 1-D sequence of K class weights, got shape {tuple(a.shape)}"
                )
            if not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
                raise ValueError(f"alpha must be finite and >= 0, got {a.tolist()}")
            self.register_buffer("alpha", a)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target = _check_inputs(logits, target, self.ignore_index)
        k = logits.shape[1]
        labelled = target != self.ignore_index
        cls = torch.where(labelled, target, 0)
        logp = torch.log_softmax(logits, dim=1).gather(1, cls.unsqueeze(1)).squeeze(1)
        # 1 - p, floored at the smallest normal so pow() has a finite gradient for gamma < 1
        one_minus_p = (-torch.expm1(logp)).clamp(min=torch.finfo(logp.dtype).tiny)
        loss = -(one_minus_p**self.gamma) * logp
        if self.alpha is not None:
            if self.alpha.numel() != k:
                raise ValueError(
                    f"alpha has {self.alpha.numel()} entries but the logits have K={k} classes"
                )
            loss = loss * self.alpha.to(device=loss.device, dtype=loss.dtype)[cls]
        loss = torch.where(labelled, loss, 0.0)
        return loss.sum() / labelled.sum().clamp(min=1).to(loss.dtype)

    def extra_repr(self) -> str:
        a = None if self.alpha is None else [round(x, 4) for x in self.alpha.tolist()]
        return f"alpha={a}, gamma={self.gamma}, ignore_index={self.ignore_index}"


def focal_alpha_from_frequencies(freq: np.ndarray | Sequence[float]) -> Tensor:
    """Inverse-frequency focal alphas [K] float32: ``alpha_c ∝ 1/freq_c``.

    Normalised so the alphas of the PRESENT classes (``freq_c > 0``) average to 1 (sum to
    the number of present classes); absent classes get alpha 0. ``freq`` need not sum to 1.
    """
    f = np.asarray(freq, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"freq must be a 1-D sequence of K class frequencies, got shape {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"freq must be finite and >= 0, got {f.tolist()}")
    present = f > 0
    if not present.any():
        raise ValueError("freq has no class with a positive frequency; at least one is needed")
    inv = np.zeros_like(f)
    inv[present] = 1.0 / f[present]
    alpha = inv * (present.sum() / inv.sum())
    return torch.as_tensor(alpha, dtype=torch.float32)


@torch.no_grad()
def per_class_ce(
    logits: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Sum of per-pixel CE per class [K] (float) and labelled pixels per class [K] (int64)."""
    if logits.dim() == 4 and logits.shape[1] != num_classes:
        raise ValueError(f"num_classes={num_classes} but the logits have K={logits.shape[1]} channels")
    ce, labelled = _pixel_ce(logits, target, ignore_index)
    cls = torch.where(labelled, target.long(), num_classes).reshape(-1)  # ignored -> bin K
    sums = ce.new_zeros(num_classes + 1).scatter_add(0, cls, ce.reshape(-1))[:num_classes]
    counts = torch.bincount(cls, minlength=num_classes + 1)[:num_classes]
    return sums, counts


@torch.no_grad()
def class_ce(pixel_ce: Tensor, target: Tensor, cls: int) -> Tensor:
    """``[CE summed over the pixels labelled cls, their count]`` from a per-pixel CE map.

    ``pixel_ce`` [B,H,W] as :class:`MCCE` keeps it (``keep_pixel_ce=True``), ``target``
    [B,H,W] the labels it was computed with. Equal to ``per_class_ce(logits, target, K)``
    at ``cls`` (up to float rounding) at the cost of one masked sum, and one tensor, so
    that the caller syncs once (``.tolist()``). Labels other than ``cls`` are not looked at.
    """
    if not isinstance(pixel_ce, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"pixel_ce and target must be torch.Tensors, got {type(pixel_ce).__name__} and {type(target).__name__}")
    if pixel_ce.shape != target.shape or target.dim() != 3:
        raise ValueError(
            f"pixel_ce and target must both be [B,H,W] of one shape, got {tuple(pixel_ce.shape)} and "
            f"{tuple(target.shape)}; pass the MCCE's pixel_ce of the same batch"
        )
    if not pixel_ce.is_floating_point() or target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"pixel_ce must be floating point and target integer, got {pixel_ce.dtype} and {target.dtype}")
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or cls < 0:
        raise ValueError(f"cls must be a non-negative class id, got {cls!r}")
    if pixel_ce.device.type == "cpu":  # NumPy: one compare and one dot product (~6x fewer µs than torch here)
        selected = target.numpy() == int(cls)
        total = np.dot(pixel_ce.numpy().ravel(), selected.ravel())
        return torch.tensor([float(total), float(np.count_nonzero(selected))], dtype=pixel_ce.dtype)
    return _class_ce_torch(pixel_ce, target, int(cls))  # accelerators: on the device until the caller's one sync


def _class_ce_torch(pixel_ce: Tensor, target: Tensor, cls: int) -> Tensor:
    selected = target == cls
    return torch.stack([torch.where(selected, pixel_ce, 0.0).sum(), selected.sum().to(pixel_ce.dtype)])


# --------------------------------------------------------------------------- registry
# The built-in losses and their settings are registry entries (tce_ray.core.loss_catalog, no torch:
# a study file is validated without importing this module); what follows derives from them.

LOSS_NAMES: tuple[str, ...] = tuple(list_losses())
"""The built-in losses (``tce_ray.core.registry.list_losses()`` also lists those registered later)."""


def build_loss(name: str, **params: Any) -> nn.Module:
    """Build a registered loss by name with its class's own arguments.

    Built-ins: ``focal``: alpha, gamma; ``tce_image``/``tce_class``: t (required); all:
    ignore_index. ``tce_stochastic`` returns :class:`MCCE` (the tilt acts via sampling).
    ``mcce``/``tce_stochastic``: keep_pixel_ce. Baselines (:mod:`tce_ray.core.baseline_losses`):
    ``ce_weighted``: class_weights (a scheme name, which needs ``index`` = the training
    set's ClassIndex, or K numbers), beta (effective_number only), divide_by;
    ``ce_balanced``: scope; ``lovasz``: per_image, classes; ``dice``: smooth, classes, ce_weight.
    """
    entry = get_loss(name)
    factory = entry.resolve_factory()
    signature = inspect.signature(factory).parameters
    accepted = {k for k in signature if k not in entry.fixed and k != "self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TypeError(
            f"loss {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    required = {k for k in accepted if signature[k].default is inspect.Parameter.empty}
    missing = sorted(required - set(params))
    if missing:
        raise TypeError(f"loss {name!r} needs parameter(s) {', '.join(missing)}")
    return factory(**entry.fixed, **params)


def _loss_settings(run: Any) -> dict[str, Any]:
    loss = run.loss
    return loss.model_dump() if hasattr(loss, "model_dump") else dict(loss)


def make_loss(run: Any, num_classes: int, index: Any = None) -> nn.Module:
    """The loss module of a run (a ``RunSpec``): its registry entry built from ``run.loss``,
    with ``index`` (the training set's ``ClassIndex``) where the entry needs it."""
    settings = _loss_settings(run)
    return get_loss(settings["name"]).build(settings, LossContext(num_classes, index))


def needs_class_index(run: Any) -> bool:
    """Whether the run needs the training set's class index (stochastic TCE and rare-class
    sampling draw from D_c; focal's inverse-frequency alpha needs the pixel frequencies)."""
    settings = _loss_settings(run)
    sampling = getattr(run, "sampling", None)
    if sampling is not None and getattr(sampling, "mode", "default") == "rare_class":
        return True
    return get_loss(settings["name"]).uses_class_index(settings)


def needs_weight_actor(run: Any) -> bool:
    """Whether the run's loss draws its batches from the run's class-weight actor."""
    return get_loss(run.loss.name).needs_weight_actor
