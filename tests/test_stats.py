"""tce_ray.core.stats against SciPy (a dev dependency) and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tce_ray.core.stats import bootstrap_diff_ci, compare, student_t_sf, welch_t_test


@pytest.mark.parametrize("seed", range(12))
def test_welch_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    na, nb = rng.integers(2, 9, size=2)
    a = rng.normal(rng.normal(), rng.uniform(0.1, 3), size=na)
    b = rng.normal(rng.normal(), rng.uniform(0.1, 3), size=nb)
    got = welch_t_test(a, b)
    want = sps.ttest_ind(a, b, equal_var=False)
    assert got.t == pytest.approx(want.statistic, rel=1e-12)
    assert got.p == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
    assert got.df == pytest.approx(want.df, rel=1e-12)


@pytest.mark.parametrize("t, df", [(0.0, 1.0), (0.3, 1.5), (2.0, 2.0), (-4.0, 3.7), (12.0, 2.0), (50.0, 30.0), (1.0, 1e4)])
def test_student_tail_matches_scipy(t, df):
    assert student_t_sf(t, df) == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-10, abs=1e-300)


def test_welch_by_hand():
    # a = [1, 2, 3]: mean 2, var 1; b = [4, 6]: mean 5, var 2
    # se^2 = 1/3 + 2/2 = 4/3, t = -3 / sqrt(4/3); df = (4/3)^2 / ((1/3)^2/2 + 1^2/1) = (16/9) / (19/18) = 32/19
    r = welch_t_test([1, 2, 3], [4, 6])
    assert r.t == pytest.approx(-3 / math.sqrt(4 / 3), rel=1e-14)
    assert r.df == pytest.approx(32 / 19, rel=1e-14)
    # df = 2 has a closed form: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    r2 = welch_t_test([0, 2], [2, 2, 2])  # va = 2/2 = 1, vb = 0: df = n_a - 1 = 1; t = (1 - 2) / 1 = -1
    assert r2.df == pytest.approx(1.0) and r2.t == pytest.approx(-1.0)
    assert r2.p == pytest.approx(0.5, rel=1e-12)  # Cauchy: P(|T| > 1) = 1/2
    assert student_t_sf(1.0, 2.0) == pytest.approx(1 - 1 / math.sqrt(3), rel=1e-12)


def test_degenerate_cases():
    nan = welch_t_test([1.0], [1.0, 2.0])
    assert math.isnan(nan.p) and math.isnan(nan.t) and math.isnan(nan.df)
    same = welch_t_test([3.0, 3.0], [3.0, 3.0, 3.0])
    assert same.p == 1.0
    apart = welch_t_test([0.0, 0.0, 0.0], [2.5, 2.5])
    assert apart.p == 0.0 and apart.t == -math.inf
    assert bootstrap_diff_ci([0.0, 0.0, 0.0], [2.5, 2.5]) == (-2.5, -2.5)
    lo, hi = bootstrap_diff_ci([1.0], [1.0, 2.0])
    assert math.isnan(lo) and math.isnan(hi)


@pytest.mark.parametrize(
    "a, b, kw, match",
    [
        ([], [1.0, 2.0], {}, "a is empty"),
        ([1.0, float("nan")], [1.0, 2.0], {}, "non-finite"),
        ([1.0, 2.0], [1.0, 2.0], {"confidence": 1.0}, "confidence"),
        ([1.0, 2.0], [1.0, 2.0], {"n_resamples": 10}, "n_resamples"),
    ],
)
def test_bad_input(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_diff_ci(a, b, **kw)
    if not kw:
        with pytest.raises(ValueError, match=match):
            welch_t_test(a, b)


def test_bootstrap_matches_scipy_percentile():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 6), rng.normal(0.0, 2.0, 5)
    lo, hi = bootstrap_diff_ci(a, b, n_resamples=40_000, seed=1)
    ref = sps.bootstrap(
        (a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis), method="percentile",
        n_resamples=40_000, paired=False, vectorized=True, random_state=2,
    ).confidence_interval
    # two Monte Carlo estimates of the same quantiles: agree to well within a tenth of the width
    width = hi - lo
    assert abs(lo - ref.low) < 0.05 * width and abs(hi - ref.high) < 0.05 * width
    assert lo < a.mean() - b.mean() < hi


def test_bootstrap_is_deterministic_and_exact_for_a_two_point_case():
    assert bootstrap_diff_ci([0, 1], [0, 0], seed=5) == bootstrap_diff_ci([0, 1], [0, 0], seed=5)
    # resampled means of [0, 1]: 0 (1/4), 0.5 (1/2), 1 (1/4); a 50 % interval lies at 0.5
    lo, hi = bootstrap_diff_ci([0, 1], [0, 0], confidence=0.4, n_resamples=20_000)
    assert lo == hi == 0.5


def test_compare_row():
    c = compare([0.40, 0.42, 0.44], [0.39, 0.39, 0.40])
    assert (c.n_a, c.n_b) == (3, 3)
    assert c.diff == pytest.approx(0.42 - 0.39333333333333336)
    assert c.p_welch == pytest.approx(sps.ttest_ind([0.40, 0.42, 0.44], [0.39, 0.39, 0.40], equal_var=False).pvalue)
    assert c.ci_low <= c.diff <= c.ci_high and c.confidence == 0.95
