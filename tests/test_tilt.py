"""Tests of tce_ray.core.tilt.TiltState (stochastic TCE, Algorithm 1, in log space)."""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tce_ray.core.tilt import TiltState


def test_initial_state_is_uniform_with_r_equal_t_log_k():
    s = TiltState(4, t=0.7, gamma=0.3)
    np.testing.assert_allclose(s.log_r, np.full(4, 0.7 * math.log(4)))
    np.testing.assert_allclose(s.weights, np.full(4, 0.25))
    assert s.num_updates == 0


def test_hand_computed_three_classes():
    t, g = 1.0, 0.5
    s = TiltState(3, t=t, gamma=g)
    s.update(0, 2.0)
    s.update(2, 0.5)
    s.update(0, 1.0)
    # R starts at exp(t log 3) = 3 for every class
    r0 = (1 - g) * ((1 - g) * 3 + g * math.exp(2.0)) + g * math.exp(1.0)
    r1 = 3.0
    r2 = (1 - g) * 3 + g * math.exp(0.5)
    np.testing.assert_allclose(s.log_r, np.log([r0, r1, r2]), rtol=1e-13)
    np.testing.assert_allclose(s.weights, np.array([r0, r1, r2]) / (r0 + r1 + r2), rtol=1e-13)
    assert s.num_updates == 3


def test_hand_computed_negative_t_and_drawable_subset():
    s = TiltState(3, t=-2.0, gamma=0.25, drawable=[0, 2])
    s.update(2, 1.5)
    r0 = 3.0**-2
    r2 = 0.75 * 3.0**-2 + 0.25 * math.exp(-3.0)
    np.testing.assert_allclose(s.weights, [r0 / (r0 + r2), 0.0, r2 / (r0 + r2)], rtol=1e-13)


def test_gamma_one_has_no_memory_and_no_warnings():
    s = TiltState(3, t=2.0, gamma=1.0)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        s.update(1, 3.0)
        s.update(1, 0.5)
        s.update_many([0, 0, 2], [1.0, 4.0, 2.0])
        w = s.weights
    np.testing.assert_allclose(s.log_r, [8.0, 1.0, 4.0], rtol=1e-15)
    np.testing.assert_allclose(w, np.exp([8.0, 1.0, 4.0]) / np.exp([8.0, 1.0, 4.0]).sum())


def test_t_zero_keeps_weights_uniform():
    s = TiltState(5, t=0.0, gamma=0.2, drawable=[0, 1, 3])
    s.update_many([0, 1, 3, 3, 0], [10.0, 0.1, 5.0, 7.0, 1e6])
    np.testing.assert_array_equal(s.log_r, np.zeros(5))
    np.testing.assert_allclose(s.weights, [1 / 3, 1 / 3, 0, 1 / 3, 0], atol=1e-15)
    assert s.num_updates == 5


@pytest.mark.parametrize("t,loss", [(100.0, 100.0), (1e3, 1e3), (-100.0, 100.0), (1e4, 1e4)])
def test_no_overflow_for_huge_t_times_loss(t, loss):
    s = TiltState(3, t=t, gamma=0.1)
    with np.errstate(all="raise"):  # no overflow/invalid, and underflow is handled inside
        s.update(1, loss)
        s.update_many([0, 2], [loss / 2, loss / 4])
        w = s.weights
    assert np.all(np.isfinite(s.log_r)) and np.all(np.isfinite(w))
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    # r_1 = logaddexp(log 0.9 + t log 3, log 0.1 + t loss), evaluated in closed form
    expected = max(math.log(0.9) + t * math.log(3), math.log(0.1) + t * loss)
    assert s.log_r[1] == pytest.approx(expected, rel=1e-9)
    if t > 0:  # class 1 had the largest loss: it takes all the weight
        assert w[1] == pytest.approx(1.0)
    else:  # the huge losses' terms vanish, every r decays alike: weights stay uniform
        np.testing.assert_allclose(w, 1 / 3, rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("t", [1.0, -0.5, 10.0])
def test_update_many_equals_sequential_updates(gamma, t):
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, size=200)
    classes[classes == 3] = 4  # class 3 never updated
    losses = rng.gamma(2.0, 1.0, size=200)
    seq = TiltState(5, t=t, gamma=gamma)
    for c, loss in zip(classes, losses):
        seq.update(int(c), float(loss))
    vec = TiltState(5, t=t, gamma=gamma)
    vec.update_many(classes[:77], losses[:77])
    vec.update_many(classes[77:], losses[77:])
    np.testing.assert_allclose(vec.log_r, seq.log_r, rtol=1e-12)
    assert vec.log_r[3] == t * math.log(5)
    assert vec.num_updates == seq.num_updates == 200


def test_update_many_closed_form_for_one_class():
    t, g = 0.8, 0.3
    ls = [2.0, 0.5, 3.0, 1.0]
    s = TiltState(2, t=t, gamma=g)
    s.update_many([1] * 4, ls)
    n, q, r = len(ls), math.log(1 - g), t * math.log(2)
    terms = [n * q + r] + [math.log(g) + (n - i) * q + t * li for i, li in enumerate(ls, start=1)]
    assert s.log_r[1] == pytest.approx(math.log(sum(math.exp(x) for x in terms)), rel=1e-13)
    s.update_many([], [])
    assert s.num_updates == 4


def test_weight_floor_mixes_with_uniform_over_drawable():
    s = TiltState(4, t=5.0, gamma=0.5, drawable=[0, 1, 3], weight_floor=0.3)
    s.update_many([0, 1, 3], [3.0, 0.1, 0.2])
    r = s.log_r[[0, 1, 3]]
    soft = np.exp(r - r.max()) / np.exp(r - r.max()).sum()
    np.testing.assert_allclose(s.weights[[0, 1, 3]], 0.7 * soft + 0.1, rtol=1e-12)
    assert s.weights[2] == 0.0 and s.weights.min(initial=1, where=s.weights > 0) >= 0.1 - 1e-15
    assert s.weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_sample_frequencies_follow_weights():
    s = TiltState(5, t=1.0, gamma=0.5, drawable=[0, 1, 2, 4])
    s.update_many([0, 1, 2, 4, 1], [0.2, 1.5, 0.7, 2.5, 1.0])
    w = s.weights
    assert len(set(np.round(w, 6))) == 5  # clearly non-uniform
    draws = s.sample(np.random.default_rng(123), 20_000)
    assert draws.dtype == np.int64 and draws.shape == (20_000,)
    counts = np.bincount(draws, minlength=5)
    assert counts[3] == 0  # not drawable
    keep = [0, 1, 2, 4]
    expected = w[keep] * draws.size
    assert chisquare(counts[keep], expected).pvalue > 1e-3
    # the check has power: the uniform distribution is rejected
    assert chisquare(counts[keep], np.full(4, draws.size / 4)).pvalue < 1e-6
    assert s.sample(np.random.default_rng(0), 0).shape == (0,)


def test_set_drawable_changes_support_and_keeps_r():
    s = TiltState(3, t=1.0, gamma=0.5)
    s.update(2, 4.0)
    r = s.log_r
    s.set_drawable([0, 1])
    np.testing.assert_allclose(s.weights, [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(s.log_r, r)
    assert s.drawable.tolist() == [0, 1]
    with pytest.raises(ValueError, match="class 2 is not drawable"):
        s.update(2, 1.0)
    s.set_drawable(None)
    assert s.weights[2] > 0.5


def test_log_r_is_a_copy():
    s = TiltState(3, t=1.0, gamma=0.5)
    s.log_r[0] = 100.0
    np.testing.assert_allclose(s.weights, 1 / 3)


def _roundtrip_json(d):
    return json.loads(json.dumps(d))


def _roundtrip_torch(d):
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("roundtrip", [_roundtrip_json, _roundtrip_torch])
def test_state_dict_roundtrip(roundtrip):
    a = TiltState(4, t=1.5, gamma=0.2, drawable=[0, 2, 3], weight_floor=0.1)
    a.update_many([0, 2, 3, 0], [1.0, 2.0, 0.5, 3.0])
    b = TiltState(4, t=1.5, gamma=0.2)
    b.load_state_dict(roundtrip(a.state_dict()))
    np.testing.assert_array_equal(b.log_r, a.log_r)
    np.testing.assert_array_equal(b.weights, a.weights)
    assert b.num_updates == 4 and b.drawable.tolist() == [0, 2, 3] and b.weight_floor == 0.1
    a.update(3, 1.0)
    b.update(3, 1.0)
    np.testing.assert_array_equal(b.log_r, a.log_r)
    assert b.sample(np.random.default_rng(5), 50).tolist() == a.sample(np.random.default_rng(5), 50).tolist()


def test_load_state_dict_mismatch_raises_and_changes_nothing():
    src = TiltState(4, t=1.0, gamma=0.2)
    src.update(1, 5.0)
    d = src.state_dict()
    dst = TiltState(4, t=1.0, gamma=0.2)
    before = dst.log_r
    cases = [
        (TiltState(5, t=1.0, gamma=0.2), d, "num_classes=4"),
        (TiltState(4, t=2.0, gamma=0.2), d, "t=1.0"),
        (TiltState(4, t=1.0, gamma=0.5), d, "gamma=0.2"),
        (dst, {k: v for k, v in d.items() if k != "log_r"}, "lacks key"),
        (dst, {**d, "log_r": d["log_r"][:3]}, "log_r"),
        (dst, {**d, "log_r": [float("nan")] * 4}, "log_r"),
        (dst, {**d, "num_updates": -1}, "num_updates"),
        (dst, {**d, "drawable": [7]}, "outside"),
        (dst, {**d, "version": 99}, "version"),
        (dst, [1, 2], "dict"),
    ]
    for state, bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            state.load_state_dict(bad)
    np.testing.assert_array_equal(dst.log_r, before)
    assert dst.num_updates == 0


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(num_classes=0, t=1.0, gamma=0.5), "num_classes"),
        (dict(num_classes=2.5, t=1.0, gamma=0.5), "num_classes"),
        (dict(num_classes=3, t=float("nan"), gamma=0.5), "t must be finite"),
        (dict(num_classes=3, t=float("inf"), gamma=0.5), "t must be finite"),
        (dict(num_classes=3, t=1.0, gamma=0.0), r"gamma must be in \(0, 1\], got 0.0"),
        (dict(num_classes=3, t=1.0, gamma=1.5), "gamma must be in"),
        (dict(num_classes=3, t=1.0, gamma=-0.1), "gamma must be in"),
        (dict(num_classes=3, t=1.0, gamma=float("nan")), "gamma must be finite"),
        (dict(num_classes=3, t=1.0, gamma=0.5, drawable=[0, 3]), "drawable class id 3"),
        (dict(num_classes=3, t=1.0, gamma=0.5, drawable=[]), "drawable is empty"),
        (dict(num_classes=3, t=1.0, gamma=0.5, weight_floor=1.5), "weight_floor"),
    ],
)
def test_constructor_rejects_bad_input(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        TiltState(**kwargs)


def test_updates_reject_bad_input_without_changing_state():
    s = TiltState(3, t=1.0, gamma=0.5, drawable=[0, 1])
    for args, msg in [
        ((3, 1.0), "class id 3 is outside"),
        ((-1, 1.0), "class id -1 is outside"),
        ((0, float("nan")), "finite"),
        ((0, float("inf")), "finite"),
        ((2, 1.0), "class 2 is not drawable"),
    ]:
        with pytest.raises(ValueError, match=msg):
            s.update(*args)
    with pytest.raises(ValueError, match="equal length"):
        s.update_many([0, 1], [1.0])
    with pytest.raises(ValueError, match="integer"):
        s.update_many([0.5], [1.0])
    with pytest.raises(ValueError, match="overflows"):
        TiltState(2, t=1e300, gamma=0.5).update(0, 1e300)
    with pytest.raises(ValueError, match="class id 5"):
        s.update_many([0, 1, 5], [1.0, 1.0, 1.0])  # all-or-nothing
    assert s.num_updates == 0
    np.testing.assert_array_equal(s.log_r, np.full(3, math.log(3)))
    with pytest.raises(TypeError, match="Generator"):
        s.sample(np.random.RandomState(0), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        s.sample(np.random.default_rng(0), -1)
