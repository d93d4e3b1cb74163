"""The state of the class tilt that acts on the loss (online class-level TERM), pure NumPy.

Stochastic TCE (:mod:`tce_ray.core.tilt`) realises the tilted weights by *sampling*
batches; with classes that share every image they are applied here as *loss weights*
instead (TERM's own class-level code reweights; see ``docs/losses.md``).

Per class c the state holds a running loss ``R_c`` over every report of every worker:

* ``signal="ce"``: each report is a batch's per-class CE sums and labelled-pixel counts;
  ``L_c`` = sum / count for the classes with pixels in it, and, in log space,
  ``log R_c <- logaddexp(log(1 - gamma) + log R_c, log(gamma) + log L_c)``
  (the first report of a class sets ``R_c = L_c``: no bias towards 0 from an empty start).
* ``signal="iou"``: each report is a batch's confusion matrix (rows: label, columns:
  prediction); the state keeps ``C <- (1 - gamma) C + C_batch`` and ``R_c = 1 - IoU_c``
  of ``C``, a signal that also sees the false positives charged to class c.

A class is *seen* once a report held a labelled pixel of it. The weights are

    w = (1 - floor) * softmax(t * R over the seen classes) + floor / K_seen

(0 for unseen classes), optionally capped at ``cap`` (the excess redistributed over the
other seen classes in proportion to their weights). The softmax is computed as
``exp(z - logsumexp(z))``: no raw exponential of a loss. ``t = 0`` gives uniform weights
over the seen classes (class-balanced CE); ``t -> inf`` puts all the weight on the class
with the largest ``R`` (the worst class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tce_ray.core.tilt import TiltState, _finite_float as _real

__all__ = ["CLASS_SIGNALS", "ClassTiltState", "state_from_dict", "tilted_class_weights"]

CLASS_SIGNALS: tuple[str, ...] = ("ce", "iou")
KIND = "class_tilt"
_STATE_VERSION = 1


def _capped(w: np.ndarray, cap: float) -> np.ndarray:
    """``w`` (a distribution) with no entry above ``cap``, the excess spread over the rest
    in proportion to their weights (uniform if ``cap`` * len(w) <= 1)."""
    n = len(w)
    if cap * n <= 1.0:
        return np.full(n, 1.0 / n)
    w = w.copy()
    for _ in range(n):
        over = w > cap
        if not over.any():
            break
        excess = float((w[over] - cap).sum())
        w[over] = cap
        free = ~over & (w < cap)
        w[free] += excess * w[free] / w[free].sum() if w[free].sum() > 0 else excess / free.sum()
    return w


def tilted_class_weights(
    running_loss: Sequence[float] | np.ndarray,
    seen: Sequence[bool] | np.ndarray,
    t: float,
    weight_floor: float = 0.0,
    cap: float | None = None,
) -> np.ndarray:
    """``(1 - floor) * softmax(t * R) + floor / K_seen`` over the seen classes, 0 elsewhere [K].

    ``running_loss`` R [K] (finite where seen), ``seen`` [K] bool; ``cap`` in (0, 1] or None.
    All zeros when no class is seen yet.
    """
    r = np.asarray(running_loss, dtype=np.float64)
    mask = np.asarray(seen, dtype=bool)
    if r.shape != mask.shape or r.ndim != 1:
        raise ValueError(f"running_loss and seen must be 1-D of one length, got {r.shape} and {mask.shape}")
    t, floor = _real("t", t), _real("weight_floor", weight_floor)
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"weight_floor must be in [0, 1], got {weight_floor!r}")
    if cap is not None and not 0.0 < _real("cap", cap) <= 1.0:
        raise ValueError(f"cap must be in (0, 1] or None, got {cap!r}")
    out = np.zeros(r.shape, dtype=np.float64)
    if not mask.any():
        return out
    if not np.isfinite(r[mask]).all():
        raise ValueError(f"running losses of seen classes must be finite, got {r[mask].tolist()}")
    z = t * r[mask]
    m = z.max()
    soft = np.exp(z - (m + np.log(np.exp(z - m).sum())))  # softmax via log-sum-exp
    w = (1.0 - floor) * soft + floor / mask.sum()
    if cap is not None:
        w = _capped(w, float(cap))
    out[mask] = w / w.sum()
    return out


class ClassTiltState:
    """Per-class running losses of the whole run and the class weights of the loss.

    Args:
        num_classes: K.
        t: the tilt (finite; 0: uniform weights; negative: down-weights the hardest classes).
        gamma: rate of the running loss, in (0, 1] (1: the last report only).
        weight_floor: mix the weights with uniform over the seen classes, in [0, 1].
        signal: ``"ce"`` (per-class mean CE) or ``"iou"`` (1 - IoU of a decayed confusion matrix).
        cap: the largest weight any class may get, in (0, 1], or None.
    """

    def __init__(
        self, num_classes: int, t: float, gamma: float, *, weight_floor: float = 0.0,
        signal: str = "ce", cap: float | None = None,
    ) -> None:  # fmt: skip
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if signal not in CLASS_SIGNALS:
            raise ValueError(f"class_signal must be one of {list(CLASS_SIGNALS)}, got {signal!r}")
        self.num_classes, self.signal = int(num_classes), signal
        self.t, self.gamma = _real("t", t), _real("gamma", gamma)
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self.weight_floor = _real("weight_floor", weight_floor)
        if not 0.0 <= self.weight_floor <= 1.0:
            raise ValueError(f"weight_floor must be in [0, 1], got {weight_floor!r}")
        self.cap = None if cap is None else _real("cap", cap)
        if self.cap is not None and not 0.0 < self.cap <= 1.0:
            raise ValueError(f"cap must be in (0, 1] or None, got {cap!r}")
        self._log_keep = -math.inf if self.gamma == 1.0 else math.log1p(-self.gamma)
        k = self.num_classes
        self._log_r = np.full(k, -math.inf)  # ce: log R_c
        self._confusion = np.zeros((k, k))  # iou: the decayed confusion matrix
        self._seen = np.zeros(k, dtype=bool)
        self.num_updates = 0

    # -- reading ------------------------------------------------------------------------
    @property
    def seen(self) -> np.ndarray:
        """Classes some report held a labelled pixel of [K] bool (a copy)."""
        return self._seen.copy()

    @property
    def running_loss(self) -> np.ndarray:
        """R [K]: the running per-class loss (NaN for unseen classes)."""
        if self.signal == "ce":
            r = np.exp(self._log_r)
        else:
            c = self._confusion
            inter = np.diag(c)
            union = c.sum(0) + c.sum(1) - inter
            r = 1.0 - np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        return np.where(self._seen, r, np.nan)

    @property
    def weights(self) -> np.ndarray:
        """The loss weights [K] (:func:`tilted_class_weights` with this state's settings)."""
        return self.weights_for(self.t, self.weight_floor, self.cap)

    def weights_for(self, t: float, weight_floor: float = 0.0, cap: float | None = None) -> np.ndarray:
        """The weights the state gives with another tilt, floor or cap."""
        r = np.where(self._seen, self.running_loss, 0.0)
        return tilted_class_weights(r, self._seen, t, weight_floor, cap)

    # -- writing ------------------------------------------------------------------------
    def update(self, report: Sequence[float] | np.ndarray) -> None:
        """Apply one worker's batch report: ``[sums (K), counts (K)]`` (ce, 2K numbers) or
        the K x K confusion counts (iou, K*K numbers, row-major), flat or shaped."""
        k = self.num_classes
        x = np.asarray(report, dtype=np.float64).ravel()
        want = 2 * k if self.signal == "ce" else k * k
        if x.size != want:
            raise ValueError(
                f"a {self.signal!r} class-tilt report has {want} numbers for K={k} classes "
                f"({'CE sums and pixel counts' if self.signal == 'ce' else 'confusion counts'}), got {x.size}"
            )
        counts = x[k:] if self.signal == "ce" else x
        if not np.isfinite(x).all() or (counts < 0).any():
            raise ValueError(f"class-tilt report must be finite with counts >= 0, got {x.tolist()}")
        if self.signal == "ce":
            self._update_ce(x[:k], x[k:])
        else:
            self._confusion = (1.0 - self.gamma) * self._confusion + x.reshape(k, k)
            self._seen |= x.reshape(k, k).sum(1) > 0
        self.num_updates += 1

    def update_many(self, reports: Sequence[Sequence[float]]) -> None:
        """:meth:`update` for each report, in order."""
        for r in reports:
            self.update(r)

    def _update_ce(self, sums: np.ndarray, counts: np.ndarray) -> None:
        present = counts > 0
        if (sums[present] < 0).any():
            raise ValueError(f"CE sums must be >= 0, got {sums.tolist()}")
        with np.errstate(divide="ignore"):
            log_l = np.log(np.divide(sums, counts, out=np.zeros_like(sums), where=present))
        new = present & ~self._seen
        old = present & self._seen
        self._log_r[new] = log_l[new]
        if old.any():
            self._log_r[old] = np.logaddexp(self._log_keep + self._log_r[old], math.log(self.gamma) + log_l[old])
        self._seen |= present

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain types (JSON and ``torch.load(weights_only=True)`` safe); ``kind`` names the class."""
        return {
            "kind": KIND, "version": _STATE_VERSION, "num_classes": self.num_classes, "t": self.t,
            "gamma": self.gamma, "weight_floor": self.weight_floor, "signal": self.signal, "cap": self.cap,
            "log_r": self._log_r.tolist(), "confusion": self._confusion.tolist(),
            "seen": self._seen.tolist(), "num_updates": self.num_updates,
        }  # fmt: skip

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a state of other settings or a malformed one
        raises ValueError and changes nothing."""
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise ValueError(f"not a ClassTiltState state dict (kind {KIND!r}): {str(d)[:80]}")
        for key in ("num_classes", "t", "gamma", "weight_floor", "signal", "cap"):
            if d.get(key) != getattr(self, key):
                raise ValueError(f"state dict has {key}={d.get(key)!r} but this state has {getattr(self, key)!r}")
        k = self.num_classes
        log_r = np.asarray(d["log_r"], dtype=np.float64)
        confusion = np.asarray(d["confusion"], dtype=np.float64)
        seen = np.asarray(d["seen"], dtype=bool)
        if log_r.shape != (k,) or confusion.shape != (k, k) or seen.shape != (k,) or np.isnan(log_r).any():
            raise ValueError(f"state dict arrays do not fit K={k} classes")
        self._log_r, self._confusion, self._seen = log_r, confusion, seen
        self.num_updates = int(d["num_updates"])

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "ClassTiltState":
        """A state with the settings and contents of ``d``."""
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise ValueError(f"not a ClassTiltState state dict (kind {KIND!r})")
        state = cls(d["num_classes"], d["t"], d["gamma"], weight_floor=d["weight_floor"], signal=d["signal"], cap=d["cap"])
        state.load_state_dict(d)
        return state

    def __repr__(self) -> str:
        return (
            f"ClassTiltState(K={self.num_classes}, t={self.t}, gamma={self.gamma}, "
            f"weight_floor={self.weight_floor}, signal={self.signal!r}, updates={self.num_updates})"
        )


def state_from_dict(d: dict[str, Any]) -> "TiltState | ClassTiltState":
    """The class-weight state a ``state_dict`` came from: a :class:`ClassTiltState`
    (``kind == "class_tilt"``) or stochastic TCE's :class:`~tce_ray.core.tilt.TiltState`."""
    if isinstance(d, dict) and d.get("kind") == KIND:
        return ClassTiltState.from_state_dict(d)
    if not isinstance(d, dict) or "num_classes" not in d:
        raise ValueError(f"not a class-weight state dict: {str(d)[:80]}")
    state = TiltState(d["num_classes"], d["t"], d["gamma"], d.get("drawable"), weight_floor=d["weight_floor"])
    state.load_state_dict(d)
    return state
