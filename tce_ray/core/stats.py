"""Significance figures for comparing configurations over seeds (NumPy only; no SciPy, no Ray).

- :func:`welch_t_test`: Welch's unequal-variance t-test of ``mean(a) - mean(b)``,
  two-sided p-value (Student-t tail via the regularised incomplete beta function).
- :func:`bootstrap_diff_ci`: percentile bootstrap confidence interval of
  ``mean(a) - mean(b)``, each group resampled with replacement on its own (seeds of two
  configurations are independent runs, not pairs).
- :func:`compare`: both at once, with the means and counts, for a report row.

Degenerate inputs, and what is returned (so that a report can print them as they are):

- fewer than 2 values in a group: no variance estimate, so ``p``, ``t``, ``df`` and the
  interval are NaN (a report should print "n/a", not a number);
- both groups without spread (every seed gave the same value): the difference is exact;
  ``p = 1`` if the means are equal, ``p = 0`` otherwise (``t = ±inf``, ``df = NaN``); the
  interval is ``(d, d)``;
- one group without spread: the ordinary Welch formulas (``df`` = the other group's
  ``n - 1``).

Inputs must be finite (drop missing trials first); anything else raises ValueError.
With 2-3 seeds per configuration these figures are weak: a bootstrap interval over 3
values takes at most 10 distinct means per group and is too narrow, and Welch's df is
small; say so next to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Comparison", "WelchResult", "bootstrap_diff_ci", "compare", "student_t_sf", "welch_t_test"]


def _values(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError(f"{name} is empty; give at least one value (one per seed)")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds non-finite values {v.tolist()}; drop missing or failed trials first")
    return v


# ------------------------------------------------------------------ Student t tail


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")  # pragma: no cover


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """Two-sided tail ``P(|T| >= |t|)`` of Student's t with ``df > 0`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


# ------------------------------------------------------------------ Welch


@dataclass(frozen=True)
class WelchResult:
    """``t`` statistic, Welch-Satterthwaite ``df`` and two-sided ``p`` (see the module doc)."""

    t: float
    df: float
    p: float


def welch_t_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> WelchResult:
    """Welch's t-test of ``mean(a) - mean(b)`` (two-sided); equals
    ``scipy.stats.ttest_ind(a, b, equal_var=False)`` where that is defined."""
    x, y = _values(a, "a"), _values(b, "b")
    nan = float("nan")
    if x.size < 2 or y.size < 2:
        return WelchResult(nan, nan, nan)
    diff = float(x.mean() - y.mean())
    va, vb = float(x.var(ddof=1)) / x.size, float(y.var(ddof=1)) / y.size
    se2 = va + vb
    if se2 == 0.0:
        if diff == 0.0:
            return WelchResult(nan, nan, 1.0)
        return WelchResult(math.copysign(math.inf, diff), nan, 0.0)
    t = diff / math.sqrt(se2)
    df = se2**2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    return WelchResult(t, df, student_t_sf(t, df))


# ------------------------------------------------------------------ bootstrap


def bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)``; groups resampled independently.

    Deterministic for a given ``seed``. NaN interval when a group has fewer than 2 values.
    """
    x, y = _values(a, "a"), _values(b, "b")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")
    if x.size < 2 or y.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    my = y[rng.integers(0, y.size, size=(n_resamples, y.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(mx - my, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ------------------------------------------------------------------ one report row


@dataclass(frozen=True)
class Comparison:
    """A configuration (``a``) against the reference (``b``) on one criterion."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    """``mean_a - mean_b``."""
    p_welch: float
    ci_low: float
    ci_high: float
    confidence: float


def compare(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Means, difference, Welch p and the bootstrap interval of ``a`` against ``b``."""
    x, y = _values(a, "a"), _values(b, "b")
    lo, hi = bootstrap_diff_ci(x, y, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return Comparison(
        n_a=int(x.size),
        n_b=int(y.size),
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        diff=float(x.mean() - y.mean()),
        p_welch=welch_t_test(x, y).p,
        ci_low=lo,
        ci_high=hi,
        confidence=float(confidence),
    )
