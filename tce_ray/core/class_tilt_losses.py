"""Losses weighted per class by the run's class tilt (:mod:`tce_ray.core.class_tilt`).

Both take per-class weights ``w`` [K] (the run's :class:`~tce_ray.core.class_tilt.ClassTiltState`
weights, set before each step with :meth:`set_class_weights`; constants for autograd, as in
TERM's reweighting) and weight one term per class PRESENT in the batch:

    loss = sum_{c in P} w_c * L_c / sum_{c in P} w_c  =  (1/|P|) sum_{c in P} (|P| w'_c) L_c

with P the classes with a labelled pixel in the batch and ``w'`` the weights renormalised
over P (the issue's ``K w_c`` factor, with the weights of the absent classes removed).
Hence uniform weights (``t = 0``, or no weights set) give exactly the mean over the present
classes of ``L_c`` - class-balanced CE over the batch (``ce_balanced`` with ``scope: batch``)
for :class:`ClassTiltCrossEntropy` - and weights concentrated on one present class give that
class's term (``t -> inf``: the worst class). If every present class has weight 0 (the state
has not seen any of them yet) the weights over P are uniform.

* :class:`ClassTiltCrossEntropy`: ``L_c`` = mean CE over the batch's pixels of class c.
* :class:`ClassTiltLovasz`: ``L_c`` = Lovász-softmax's term of class c over the batch
  (:func:`~tce_ray.core.baseline_losses.lovasz_class_terms`).

After each forward, :attr:`last_report` holds (detached, on the logits' device) what the
worker reports to the run's state: ``[CE sums (K), pixel counts (K)]`` (``signal="ce"``)
or the batch's K x K confusion counts of the argmax prediction (``signal="iou"``), flat.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tce_ray.core.baseline_losses import _class_sums, lovasz_class_terms
from tce_ray.core.class_tilt import CLASS_SIGNALS
from tce_ray.core.losses import _pixel_ce

__all__ = ["ClassTiltCrossEntropy", "ClassTiltLovasz", "weighted_present_mean"]


def weighted_present_mean(terms: Tensor, present: Tensor, weights: Tensor | None) -> Tensor:
    """``sum_{c present} w_c terms_c / sum_{c present} w_c`` (uniform if no weight or all 0);
    0 (still connected to the graph) when no class is present."""
    p = present.to(terms.dtype)
    w = p if weights is None else weights.to(terms.device, terms.dtype) * p
    total = w.sum()
    w = torch.where(total > 0, w / total.clamp(min=1e-300), p / p.sum().clamp(min=1.0))
    return (torch.where(present, terms, 0.0) * w).sum()


class _ClassTiltLoss(nn.Module):
    """Weights, signal and report shared by the class-tilt losses."""

    def __init__(self, signal: str = "ce", ignore_index: int = 255) -> None:
        super().__init__()
        if signal not in CLASS_SIGNALS:
            raise ValueError(f"loss.class_signal must be one of {list(CLASS_SIGNALS)}, got {signal!r}")
        self.signal = signal
        self.ignore_index = int(ignore_index)
        self.class_weights: Tensor | None = None
        self.last_report: Tensor | None = None

    def set_class_weights(self, weights: Sequence[float] | np.ndarray | Tensor | None) -> None:
        """The weights [K] of the next forward passes (None: uniform over the present classes)."""
        if weights is None:
            self.class_weights = None
            return
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64) if not isinstance(weights, Tensor) else weights)
        if w.dim() != 1 or not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"class weights must be a 1-D tensor of K finite numbers >= 0, got {w.tolist()}")
        self.class_weights = w.detach().double()

    def _check_k(self, k: int) -> None:
        if self.class_weights is not None and self.class_weights.numel() != k:
            raise ValueError(f"the loss has {self.class_weights.numel()} class weights but the logits have K={k} classes")

    @torch.no_grad()
    def _report(self, logits: Tensor, target: Tensor, ce_sums: Tensor, counts: Tensor) -> Tensor:
        k = logits.shape[1]
        if self.signal == "ce":
            return torch.cat([ce_sums.detach().double(), counts.double()])
        labelled = target != self.ignore_index
        pred = logits.argmax(1)
        idx = (target.long() * k + pred)[labelled]
        return torch.bincount(idx, minlength=k * k).double()

    def extra_repr(self) -> str:
        return f"signal={self.signal!r}, ignore_index={self.ignore_index}"


class ClassTiltCrossEntropy(_ClassTiltLoss):
    """Per-class mean CE of the batch, weighted by the class tilt (see the module docstring)."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        ce, labelled = _pixel_ce(logits, target, self.ignore_index)
        k = logits.shape[1]
        self._check_k(k)
        groups = torch.zeros_like(target, dtype=torch.long)
        sums, counts = _class_sums(ce, labelled, target.long(), k, groups, 1)
        sums, counts = sums[0], counts[0]
        present = counts > 0
        terms = sums / counts.clamp(min=1).to(sums.dtype)
        self.last_report = self._report(logits, target, sums, counts)
        return weighted_present_mean(terms, present, self.class_weights)


class ClassTiltLovasz(_ClassTiltLoss):
    """Lovász-softmax's per-class terms over the batch, weighted by the class tilt; the CE
    signal is the per-class CE of the same batch (computed without gradient)."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        per_class, present, _ = lovasz_class_terms(logits, target, self.ignore_index, per_image=False)
        k = logits.shape[1]
        self._check_k(k)
        with torch.no_grad():
            ce, labelled = _pixel_ce(logits.detach(), target, self.ignore_index)
            sums, counts = _class_sums(ce, labelled, target.long(), k, torch.zeros_like(target, dtype=torch.long), 1)
        self.last_report = self._report(logits, target, sums[0], counts[0])
        return weighted_present_mean(per_class[0], present[0], self.class_weights)
