"""The state of stochastic TCE (the paper's Algorithm 1), in log space, pure NumPy.

Per class c the state holds ``r_c = log R_c``, a running estimate of ``log E[exp(t L)]``
over the losses reported for batches drawn for class c:

    r_c <- logaddexp(log(1 - gamma) + r_c, log(gamma) + t * L)

and the sampling weights are ``softmax(r)`` over the drawable classes, optionally mixed
with the uniform distribution over them: ``w' = (1 - floor) * w + floor / K_d``.

Where the project resolves an ambiguity of the paper (see ``shared/SPEC.md``):

* Initial state: the paper sets ``R_c = 0``, which read literally never samples a class
  not yet visited (``w_c = 0``). Every ``r_c`` starts at ``t * log(K)`` instead, the
  tilted loss of a uniform prediction, so the first weights are uniform.
* ``gamma == 1`` (no memory) is allowed; ``log(1 - gamma) = -inf`` is handled without
  floating-point warnings, giving ``r_c = t * L``.
* ``t == 0`` leaves ``r`` untouched (mathematically it stays 0), so the weights stay
  exactly uniform: class-balanced sampling, not ERM.
* Reporting a loss for a class that cannot be drawn is an error (it indicates a bug in
  the caller: such a class never yields a batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TiltState"]

_STATE_VERSION = 1
_STATE_KEYS = ("version", "num_classes", "t", "gamma", "weight_floor", "log_r", "drawable", "num_updates")


def _finite_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


class TiltState:
    """Per-class tilted running losses ``r = log R`` and the class-sampling weights.

    Args:
        num_classes: K, the number of classes.
        t: the tilt (finite; negative allowed; 0 gives uniform weights).
        gamma: rate of the running average, in (0, 1].
        drawable: classes that can be drawn (non-empty D_c); ``None`` means all.
        weight_floor: mix the weights with uniform over the drawable classes, in [0, 1].
    """

    def __init__(
        self,
        num_classes: int,
        t: float,
        gamma: float,
        drawable: Sequence[int] | np.ndarray | None = None,
        *,
        weight_floor: float = 0.0,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self._k = int(num_classes)
        self._t = _finite_float("t", t)
        self._gamma = _finite_float("gamma", gamma)
        if not 0.0 < self._gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self._weight_floor = self._check_floor(weight_floor)
        self._log_gamma = math.log(self._gamma)
        self._log_keep = -math.inf if self._gamma == 1.0 else math.log1p(-self._gamma)
        self._drawable = self._drawable_mask(drawable)
        self._log_r = np.full(self._k, self._t * math.log(self._k), dtype=np.float64)
        self._num_updates = 0

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return self._k

    @property
    def t(self) -> float:
        return self._t

    @property
    def gamma(self) -> float:
        return self._gamma

    @property
    def weight_floor(self) -> float:
        return self._weight_floor

    @property
    def num_updates(self) -> int:
        """Number of (class, loss) pairs reported so far."""
        return self._num_updates

    @property
    def log_r(self) -> np.ndarray:
        """A copy of ``r = log R`` [K] float64."""
        return self._log_r.copy()

    @property
    def drawable(self) -> np.ndarray:
        """Sorted int64 ids of the drawable classes."""
        return np.flatnonzero(self._drawable).astype(np.int64)

    @property
    def weights(self) -> np.ndarray:
        """Sampling distribution [K] float64: softmax(r) over drawable classes (0 elsewhere),
        mixed with uniform over them by ``weight_floor``; sums to 1."""
        r = self._log_r[self._drawable]
        with np.errstate(under="ignore"):
            w = np.exp(r - r.max())
        w /= w.sum()
        if self._weight_floor > 0.0:
            w = (1.0 - self._weight_floor) * w + self._weight_floor / w.size
        out = np.zeros(self._k, dtype=np.float64)
        out[self._drawable] = w / w.sum()
        return out

    # ------------------------------------------------------------------ updates
    def update(self, cls: int, batch_loss: float) -> None:
        """Report the loss of one batch drawn for class ``cls`` (Algorithm 1, step 4)."""
        self.update_many([cls], [batch_loss])

    def update_many(self, classes: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray) -> None:
        """Same result as ``update(c, l)`` for each pair in order, vectorised.

        For a class with losses ``l_1..l_n`` (in order), with ``q = log(1 - gamma)``:
        ``r <- logsumexp([n q + r] + [log(gamma) + (n - i) q + t l_i for i = 1..n])``.
        """
        c, tl = self._check_reports(classes, losses)
        if c.size == 0:
            return
        self._num_updates += int(c.size)
        if self._t == 0.0:
            return  # r stays t*log(K) = 0 exactly; the weights stay uniform
        order = np.argsort(c, kind="stable")
        c_sorted, tl_sorted = c[order], tl[order]
        counts = np.bincount(c, minlength=self._k)
        starts = np.cumsum(counts) - counts
        decay_steps = counts[c_sorted] - 1 - (np.arange(c.size) - starts[c_sorted])  # n - i
        terms = self._log_gamma + self._decay(decay_steps) + tl_sorted
        touched = np.flatnonzero(counts)
        old = self._decay(counts[touched]) + self._log_r[touched]
        # group-wise logsumexp over {old term} U {terms of the class}
        group_max = np.full(self._k, -np.inf)
        group_max[touched] = old
        np.maximum.at(group_max, c_sorted, terms)
        acc = np.zeros(self._k)
        with np.errstate(under="ignore"):  # exp of very negative terms is 0, as it should be
            acc[touched] = np.exp(old - group_max[touched])
            np.add.at(acc, c_sorted, np.exp(terms - group_max[c_sorted]))
        self._log_r[touched] = group_max[touched] + np.log(acc[touched])

    def _decay(self, steps: np.ndarray) -> np.ndarray:
        """``steps * log(1 - gamma)`` with ``0 * (-inf) = 0`` (gamma == 1, no warning)."""
        steps = np.asarray(steps, dtype=np.float64)
        return np.multiply(steps, self._log_keep, out=np.zeros_like(steps), where=steps > 0)

    def _check_reports(self, classes: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(classes)
        loss = np.asarray(losses, dtype=np.float64)
        if c.ndim != 1 or loss.ndim != 1 or c.shape != loss.shape:
            raise ValueError(
                f"classes and losses must be 1-D and of equal length, got shapes {c.shape} and {loss.shape}"
            )
        if c.size and not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"classes must be integer class ids, got dtype {c.dtype}: {c.tolist()}")
        c = c.astype(np.int64)
        out = (c < 0) | (c >= self._k)
        if out.any():
            raise ValueError(f"class id {int(c[out][0])} is outside [0, {self._k})")
        if not np.all(np.isfinite(loss)):
            i = int(np.flatnonzero(~np.isfinite(loss))[0])
            raise ValueError(f"losses must be finite, got {loss[i]!r} for class {int(c[i])}")
        undrawable = ~self._drawable[c]
        if undrawable.any():
            raise ValueError(
                f"class {int(c[undrawable][0])} is not drawable (no image contains it), so no "
                "batch can have been drawn for it; report only classes returned by sample()"
            )
        with np.errstate(over="ignore"):
            tl = self._t * loss
        if not np.all(np.isfinite(tl)):
            raise ValueError(f"t * loss overflows float64 (t={self._t}, loss={loss[~np.isfinite(tl)][0]!r})")
        return c, tl

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """Draw ``n`` class ids (int64) from :attr:`weights`."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                "rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                f"got {type(rng).__name__}"
            )
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        return rng.choice(self._k, size=int(n), p=self.weights).astype(np.int64)

    def set_drawable(self, drawable: Sequence[int] | np.ndarray | None) -> None:
        """Replace the set of drawable classes (``None``: all); ``r`` is kept."""
        self._drawable = self._drawable_mask(drawable)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {
            "version": _STATE_VERSION,
            "num_classes": self._k,
            "t": self._t,
            "gamma": self._gamma,
            "weight_floor": self._weight_floor,
            "log_r": [float(x) for x in self._log_r],
            "drawable": [int(x) for x in self.drawable],
            "num_updates": self._num_updates,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore ``log_r``, ``num_updates``, ``drawable`` and ``weight_floor``.

        ``num_classes``, ``t`` and ``gamma`` must match this state (they define what ``r``
        means); any mismatch or malformed entry raises ValueError and changes nothing.
        """
        if not isinstance(d, dict):
            raise ValueError(f"state must be a dict from TiltState.state_dict(), got {type(d).__name__}")
        missing = [key for key in _STATE_KEYS if key not in d]
        if missing:
            raise ValueError(f"TiltState state dict lacks key(s) {missing}; expected {list(_STATE_KEYS)}")
        if d["version"] != _STATE_VERSION:
            raise ValueError(
                f"unsupported TiltState state version {d['version']!r} (expected {_STATE_VERSION})"
            )
        for key, mine in (("num_classes", self._k), ("t", self._t), ("gamma", self._gamma)):
            if d[key] != mine:
                raise ValueError(f"state dict has {key}={d[key]!r} but this TiltState has {key}={mine!r}")
        log_r = np.asarray(d["log_r"], dtype=np.float64)
        if log_r.shape != (self._k,) or not np.all(np.isfinite(log_r)):
            raise ValueError(f"state dict log_r must be {self._k} finite floats, got {d['log_r']!r}")
        n = d["num_updates"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"state dict num_updates must be an int >= 0, got {n!r}")
        floor = self._check_floor(d["weight_floor"])
        drawable = self._drawable_mask(d["drawable"])
        self._log_r, self._num_updates = log_r, int(n)
        self._weight_floor, self._drawable = floor, drawable

    # ------------------------------------------------------------------ validation
    def _drawable_mask(self, drawable: Sequence[int] | np.ndarray | None) -> np.ndarray:
        mask = np.zeros(self._k, dtype=bool)
        if drawable is None:
            mask[:] = True
            return mask
        ids = np.asarray(drawable)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"drawable must be a 1-D sequence of class ids, got {drawable!r}")
        bad = ids[(ids < 0) | (ids >= self._k)]
        if bad.size:
            raise ValueError(f"drawable class id {int(bad[0])} is outside [0, {self._k})")
        if ids.size == 0:
            raise ValueError(
                "drawable is empty: at least one class must be drawable "
                "(does any image have a labelled pixel?)"
            )
        mask[ids] = True
        return mask

    @staticmethod
    def _check_floor(weight_floor: float) -> float:
        v = _finite_float("weight_floor", weight_floor)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"weight_floor must be in [0, 1], got {weight_floor!r}")
        return v

    def __repr__(self) -> str:
        return (
            f"TiltState(num_classes={self._k}, t={self._t}, gamma={self._gamma}, "
            f"weight_floor={self._weight_floor}, drawable={self._drawable.sum()}/{self._k}, "
            f"num_updates={self._num_updates})"
        )
