"""tce_ray.core.class_tilt and tce_ray.core.class_tilt_losses against independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tce_ray.core.baseline_losses import ClassBalancedCrossEntropy, LovaszSoftmax
from tce_ray.core.class_tilt import ClassTiltState, state_from_dict, tilted_class_weights
from tce_ray.core.class_tilt_losses import ClassTiltCrossEntropy, ClassTiltLovasz
from tce_ray.core.tilt import TiltState

torch.set_num_threads(1)


def _batch(seed=0, k=5, b=2, h=6, w=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, k - 1, (b, h, w), generator=g)  # class k-1 absent
    target[0, 0, :3] = 255
    return logits, target


def _class_means_by_hand(logits, target, k):
    """Per-class mean CE over the batch, from an explicit loop (NaN where absent)."""
    logp = F.log_softmax(logits.detach(), 1)
    out = np.full(k, np.nan)
    for c in range(k):
        sel = target == c
        if sel.any():
            out[c] = float(-(logp.permute(0, 2, 3, 1)[sel][:, c]).mean())
    return out


def test_uniform_weights_equal_class_balanced_ce_over_the_batch():
    logits, target = _batch()
    means = _class_means_by_hand(logits, target, 5)
    by_hand = float(np.nanmean(means))  # mean over the present classes of each class's mean CE
    loss = ClassTiltCrossEntropy()
    assert loss(logits, target).item() == pytest.approx(by_hand, rel=1e-12)
    ref = ClassBalancedCrossEntropy(scope="batch")(logits, target).item()
    assert ref == pytest.approx(by_hand, rel=1e-12)
    # t -> 0 of a state fed with this batch: the same (absent class 4 has no weight to lose)
    state = ClassTiltState(5, 1e-12, 0.5)
    state.update(loss.last_report.numpy())
    loss.set_class_weights(state.weights)
    assert loss(logits, target).item() == pytest.approx(by_hand, rel=1e-9)


def test_large_t_approaches_the_worst_class():
    logits, target = _batch(1)
    means = _class_means_by_hand(logits, target, 5)
    loss = ClassTiltCrossEntropy()
    loss(logits, target)
    values = []
    for t in (1.0, 10.0, 100.0, 1e4):
        state = ClassTiltState(5, t, 1.0)
        state.update(loss.last_report.numpy())
        loss.set_class_weights(state.weights)
        values.append(loss(logits, target).item())
    assert values == sorted(values)  # more tilt, closer to the worst
    assert values[-1] == pytest.approx(np.nanmax(means), rel=1e-9)


def test_weights_are_softmax_of_t_times_the_running_loss_by_hand():
    k, t, gamma, floor = 4, 2.0, 0.25, 0.1
    reports = [([2.0, 3.0, 0.0, 0.0], [4, 2, 0, 0]), ([1.0, 0.0, 6.0, 0.0], [1, 0, 3, 0]), ([3.0, 1.0, 1.0, 0.0], [3, 2, 1, 0])]
    state = ClassTiltState(k, t, gamma, weight_floor=floor)
    state.update_many([s + c for s, c in reports])
    r = [None] * k
    for sums, counts in reports:  # the plain running mean, by hand
        for c in range(k):
            if counts[c]:
                l = sums[c] / counts[c]
                r[c] = l if r[c] is None else (1 - gamma) * r[c] + gamma * l
    assert r[3] is None and np.isnan(state.running_loss[3])
    np.testing.assert_allclose(state.running_loss[:3], r[:3], rtol=1e-12)
    e = [math.exp(t * x) for x in r[:3]]
    by_hand = [(1 - floor) * x / sum(e) + floor / 3 for x in e] + [0.0]
    np.testing.assert_allclose(state.weights, by_hand, rtol=1e-12)
    assert state.num_updates == 3 and state.seen.tolist() == [True, True, True, False]


def test_iou_signal_from_a_decayed_confusion_matrix():
    k, gamma = 3, 0.5
    c1 = np.array([[4, 1, 0], [0, 2, 2], [0, 0, 0]], float)
    c2 = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]], float)
    state = ClassTiltState(k, 3.0, gamma, signal="iou")
    state.update(c1)
    state.update(c2.ravel())
    c = 0.5 * c1 + c2
    iou = [c[i, i] / (c[i].sum() + c[:, i].sum() - c[i, i]) for i in range(2)]
    np.testing.assert_allclose(state.running_loss[:2], [1 - x for x in iou], rtol=1e-12)
    assert np.isnan(state.running_loss[2])  # never labelled: unseen, even though predicted
    np.testing.assert_allclose(state.weights, tilted_class_weights([1 - iou[0], 1 - iou[1], 0], [1, 1, 0], 3.0))


def test_numerics_stable_for_huge_tilts_and_losses():
    state = ClassTiltState(3, 1e6, 0.1)
    state.update([1e3, 2e3, 0.0, 1, 1, 0])
    w = state.weights
    assert np.isfinite(w).all() and w.tolist() == [0.0, 1.0, 0.0]
    assert ClassTiltState(3, 1.0, 1.0).weights.tolist() == [0.0, 0.0, 0.0]  # nothing seen yet
    state = ClassTiltState(2, 1.0, 0.1)
    state.update([0.0, 1.0, 5, 5])  # a perfect class: log R = -inf is fine
    assert np.isfinite(state.weights).all() and state.running_loss[0] == 0.0


def test_cap_redistributes_the_excess():
    w = tilted_class_weights([0.0, 0.0, 5.0, 0.0], [1, 1, 1, 0], 10.0, cap=0.5)
    assert w[2] == pytest.approx(0.5) and w[0] == pytest.approx(0.25) and w[3] == 0.0 and w.sum() == pytest.approx(1)
    assert tilted_class_weights([0.0, 9.0], [1, 1], 10.0, cap=0.3).tolist() == [0.5, 0.5]  # infeasible cap: uniform


def test_state_dict_round_trip_and_dispatch():
    state = ClassTiltState(3, 1.5, 0.2, weight_floor=0.3, signal="iou", cap=0.8)
    state.update(np.eye(3).ravel() * 4 + 1)
    d = state.state_dict()
    import json

    back = state_from_dict(json.loads(json.dumps(d)))
    assert isinstance(back, ClassTiltState) and back.state_dict() == d
    np.testing.assert_array_equal(back.weights, state.weights)
    tilt = TiltState(3, 1.0, 0.1)
    assert isinstance(state_from_dict(tilt.state_dict()), TiltState)
    other = ClassTiltState(3, 1.0, 0.2, weight_floor=0.3, signal="iou", cap=0.8)
    with pytest.raises(ValueError, match="t="):
        other.load_state_dict(d)
    with pytest.raises(ValueError, match="not a ClassTiltState"):
        other.load_state_dict(tilt.state_dict())


@pytest.mark.parametrize("kwargs,match", [
    ({"t": float("inf")}, "t must be finite"), ({"gamma": 0.0}, "gamma must be in"), ({"gamma": 1.5}, "gamma"),
    ({"weight_floor": -0.1}, "weight_floor"), ({"signal": "dice"}, "class_signal must be one of"),
    ({"cap": 0.0}, "cap must be in"), ({"num_classes": 0}, "num_classes"),
])  # fmt: skip
def test_bad_settings_are_refused(kwargs, match):
    args = {"num_classes": 3, "t": 1.0, "gamma": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        ClassTiltState(args.pop("num_classes"), args.pop("t"), args.pop("gamma"), **args)


def test_bad_reports_are_refused():
    state = ClassTiltState(3, 1.0, 0.1)
    with pytest.raises(ValueError, match="has 6 numbers"):
        state.update([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        state.update([1.0, float("nan"), 0, 1, 1, 0])
    with pytest.raises(ValueError, match="counts >= 0"):
        state.update([1.0, 1.0, 0, 1, -1, 0])
    assert state.num_updates == 0
    loss = ClassTiltCrossEntropy()
    with pytest.raises(ValueError, match="4 class weights"):
        loss.set_class_weights([0.25] * 4)
        loss(*_batch())
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        loss.set_class_weights([1.0, -1.0])
    with pytest.raises(ValueError, match="class_signal"):
        ClassTiltLovasz(signal="x")


def test_lovasz_variant_uniform_equals_lovasz_and_weights_are_constants():
    logits, target = _batch(2)
    loss = ClassTiltLovasz()
    value = loss(logits, target)
    assert value.item() == pytest.approx(LovaszSoftmax()(logits, target).item(), rel=1e-12)
    np.testing.assert_allclose(loss.last_report[:5].numpy() / np.maximum(loss.last_report[5:].numpy(), 1),
                               np.nan_to_num(_class_means_by_hand(logits, target, 5)), rtol=1e-10)
    # weights w on present classes: sum w_c L_c / sum w_c, gradient of the weighted terms only
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9], dtype=torch.float64)
    loss.set_class_weights(w)
    from tce_ray.core.baseline_losses import lovasz_class_terms

    terms, present, _ = lovasz_class_terms(logits, target)
    p = present[0]
    expected = (terms[0][p] * w[p]).sum() / w[p].sum()
    got = loss(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    g1 = torch.autograd.grad(got, logits)[0]
    g2 = torch.autograd.grad(expected, logits)[0]
    torch.testing.assert_close(g1, g2)


def test_confusion_report_and_ignored_pixels():
    logits, target = _batch(3)
    loss = ClassTiltCrossEntropy(signal="iou")
    loss(logits, target)
    cm = loss.last_report.reshape(5, 5).numpy()
    pred = logits.detach().argmax(1)
    by_hand = np.zeros((5, 5))
    for y, p in zip(target.ravel().tolist(), pred.ravel().tolist()):
        if y != 255:
            by_hand[y, p] += 1
    np.testing.assert_array_equal(cm, by_hand)
    empty = torch.full_like(target, 255)
    zero = loss(logits, empty)
    assert zero.item() == 0.0 and zero.requires_grad


def test_weight_store_switches_to_the_class_tilt_and_restores_it_from_its_snapshot(tmp_path):
    from tce_ray.train.weights_actor import WeightStore, read_snapshot

    snap = tmp_path / "weights.json"
    store = WeightStore(3, 1.0, 0.1, snapshot_path=snap)  # created as stochastic TCE's, as the trainer does
    fresh = ClassTiltState(3, 2.0, 0.5, weight_floor=0.1)
    store.load_state_dict(fresh.state_dict())  # rank 0's fresh state turns it into the class tilt's
    report = [1.0, 4.0, 0.0, 2, 2, 0]
    w, n = store.report_and_get([], [], [report, report])
    fresh.update_many([report, report])
    assert n == 2 and w == fresh.weights.tolist()
    with pytest.raises(ValueError, match="batch stats, not"):
        store.report_many([0], [1.0])
    store.snapshot()
    assert read_snapshot(snap)["state"]["kind"] == "class_tilt"
    again = WeightStore(3, 1.0, 0.1, snapshot_path=snap)  # an actor restarted by Ray
    assert again.state_dict() == store.state_dict() and again.restored_updates == 2
