"""Tests for tce_ray.core.metrics against hand-computed cases, a naive bincount and the paper's Table 3."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tce_ray.core.metrics import confusion_matrix, fairness_report, per_class_iou, present_iou


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# SPEC.md test vectors (Cityscapes val IoU, %), class order as in SPEC.md.
CLASSES = (
    "wall train rider fence terrain truck motorcycle pole bus traffic_light bicycle "
    "traffic_sign person sidewalk vegetation building sky car road"
).split()
TABLE1 = {
    "mcce": "48.46 53.66 61.12 62.23 62.98 66.21 67.72 69.19 71.53 74.33 79.23 81.22 83.19 84.95 92.52 93.04 95.00 95.45 98.06",
    "focal": "49.11 79.55 67.56 60.75 62.31 73.16 67.71 64.53 85.02 68.92 77.71 77.62 81.23 81.56 91.54 91.89 93.71 94.67 97.14",
    "tce_0.1": "49.36 76.75 66.64 60.38 65.69 72.03 69.09 69.34 75.61 73.64 79.89 81.77 84.00 86.24 92.43 93.16 95.34 95.47 98.27",
    "tce_1": "53.47 79.32 65.67 59.25 63.74 64.32 69.45 69.54 66.05 74.51 79.92 81.04 83.96 86.22 92.44 92.92 95.11 94.53 98.28",
}
# Table 3: miou; sorted bottom, top; (p25, mean at/below); (p75, mean at/above); worst; std
TABLE3 = {
    "mcce": (75.79, 57.69, 94.81, 64.60, 57.69, 88.74, 94.81, 48.46, 14.96),
    "focal": (77.14, 63.86, 93.79, 67.64, 60.85, 88.28, 93.79, 49.11, 13.35),
    "tce_0.1": (78.16, 63.76, 94.93, 69.22, 62.23, 89.34, 94.93, 49.36, 13.34),
    "tce_1": (77.35, 64.29, 94.66, 65.86, 61.29, 89.33, 94.66, 53.47, 13.57),
}
KEYS3 = ("miou", "sorted_bottom25", "sorted_top25", "p25", "p25_mean", "p75", "p75_mean", "worst", "std")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _vec(name: str) -> np.ndarray:
    return np.array(TABLE1[name].split(), dtype=np.float64)


def _naive_cm(pred: torch.Tensor, target: torch.Tensor, k: int, ignore: int = 255) -> torch.Tensor:
    m = target != ignore
    return torch.bincount(k * target[m] + pred[m], minlength=k * k).reshape(k, k)


def _random_batch(k: int, shape: tuple[int, ...], seed: int, ignore_frac: float = 0.1, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, shape, generator=g)
    pred = torch.randint(0, k, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignore_frac] = 255
    return pred.to(device), target.to(device)


# ---------------------------------------------------------------- confusion_matrix


@pytest.mark.parametrize("device", DEVICES)
def test_confusion_matrix_hand_computed(device: str) -> None:
    target = torch.tensor([[0, 0, 1], [2, 255, 1]], device=device)
    pred = torch.tensor([[0, 1, 1], [0, 2, 2]], device=device)
    cm = confusion_matrix(pred, target, 3)
    expected = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0]])  # rows = truth, cols = prediction
    assert cm.dtype == torch.int64 and cm.device.type == device
    assert torch.equal(cm.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 2, 19, 150, 2000])
def test_confusion_matrix_matches_naive_bincount(device: str, k: int) -> None:
    pred, target = _random_batch(k, (3, 17, 23), seed=k, device=device)
    cm = confusion_matrix(pred, target, k)
    assert torch.equal(cm.cpu(), _naive_cm(pred.cpu(), target.cpu(), k))
    assert int(cm.sum()) == int((target != 255).sum())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ignore", [-1, 0, 3, 255, 100_000])
def test_confusion_matrix_other_ignore_indices(ignore: int, device: str) -> None:
    k = 5
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, k, (40, 40), generator=g)
    pred = torch.randint(0, k, (40, 40), generator=g)
    target[torch.rand(40, 40, generator=g) < 0.2] = ignore
    m = target != ignore
    expected = torch.bincount(k * target[m] + pred[m], minlength=k * k).reshape(k, k)
    got = confusion_matrix(pred.to(device), target.to(device), k, ignore_index=ignore)
    assert torch.equal(got.cpu(), expected)


def test_confusion_matrix_narrow_dtypes_and_all_ignored() -> None:
    pred, target = _random_batch(7, (2, 9, 11), seed=3)
    ref = _naive_cm(pred, target, 7)
    assert torch.equal(confusion_matrix(pred.to(torch.uint8), target.to(torch.uint8), 7), ref)
    assert torch.equal(confusion_matrix(pred.int(), target.short(), 7), ref)
    assert torch.equal(confusion_matrix(pred, torch.full_like(target, 255), 7), torch.zeros(7, 7, dtype=torch.int64))
    empty = torch.zeros(0, dtype=torch.int64)
    assert torch.equal(confusion_matrix(empty, empty, 4), torch.zeros(4, 4, dtype=torch.int64))


def test_confusion_matrix_sums_across_batches() -> None:
    p1, t1 = _random_batch(19, (2, 16, 20), seed=10)
    p2, t2 = _random_batch(19, (3, 16, 20), seed=11)
    summed = confusion_matrix(p1, t1, 19) + confusion_matrix(p2, t2, 19)
    assert torch.equal(summed, confusion_matrix(torch.cat([p1, p2]), torch.cat([t1, t2]), 19))


@pytest.mark.parametrize("ignore", [255, -1, 100_000])  # direct path, and two remap paths
@pytest.mark.parametrize("bad_target", [7, 8, -2, 254, 1000])
def test_confusion_matrix_rejects_bad_targets(bad_target: int, ignore: int) -> None:
    pred, target = _random_batch(7, (4, 8), seed=5)
    target[target == 255] = ignore
    target[1, 3] = bad_target  # ignored pixels are present too, so a range check alone is not enough
    with pytest.raises(ValueError, match=rf"target.*\(e\.g\. {bad_target}\)"):
        confusion_matrix(pred, target, 7, ignore_index=ignore)


@pytest.mark.parametrize("bad_pred", [7, -1, 255])
def test_confusion_matrix_rejects_bad_predictions(bad_pred: int) -> None:
    pred, target = _random_batch(7, (4, 8), seed=6)
    pred[0, 0] = bad_pred
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(pred, target, 7)


def test_confusion_matrix_rejects_bad_shapes_types_and_num_classes() -> None:
    x = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(x, torch.zeros(3, 2, dtype=torch.int64), 4)
    with pytest.raises(TypeError, match="dtype"):
        confusion_matrix(x.float(), x, 4)
    with pytest.raises(TypeError, match="Tensor"):
        confusion_matrix(x.numpy(), x, 4)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(x, x, 0)


# ---------------------------------------------------------------- per_class_iou


def test_per_class_iou_hand_computed_and_nan() -> None:
    cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    # class 0: 3 / (4 + 5 - 3); class 1: 4 / (6 + 5 - 4); class 2: union 0 -> NaN
    iou = per_class_iou(cm)
    assert iou.dtype == np.float64
    np.testing.assert_allclose(iou[:2], [3 / 6, 4 / 7])
    assert np.isnan(iou[2])
    np.testing.assert_array_equal(per_class_iou(torch.from_numpy(cm)), iou)


def test_per_class_iou_false_positive_only_class_is_zero_not_nan() -> None:
    cm = np.array([[2, 1], [0, 0]])  # class 1 never true, predicted once -> IoU 0
    np.testing.assert_allclose(per_class_iou(cm), [2 / 3, 0.0])


def test_per_class_iou_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="square"):
        per_class_iou(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        per_class_iou(np.array([[1, -1], [0, 1]]))


# ---------------------------------------------------------------- fairness_report


@pytest.mark.parametrize("row", list(TABLE1))
def test_fairness_report_reproduces_paper_table3(row: str) -> None:
    rep = fairness_report(_vec(row), reference=_vec("mcce"), class_names=CLASSES)
    got = [rep[k] for k in KEYS3]
    # The paper rounds half up (64.595 -> 64.60): |value - printed| <= 0.005 (+ fp slack).
    for key, g, want in zip(KEYS3, got, TABLE3[row]):
        assert abs(g - want) <= 0.005 + 1e-9, (row, key, g, want)
    assert rep["absent"] == []


def test_fairness_report_hand_computed() -> None:
    iou = np.array([0.2, np.nan, 0.8, 0.4, 0.6])
    rep = fairness_report(iou, class_names=["a", "b", "c", "d", "e"])
    u = np.array([0.2, 0.8, 0.4, 0.6])  # present classes
    assert rep["miou"] == pytest.approx(0.5)
    assert rep["worst"] == 0.2 and rep["worst_class"] == "a"
    assert rep["std"] == pytest.approx(np.sqrt(((u - 0.5) ** 2).sum() / 3))
    assert rep["p25"] == pytest.approx(0.35)  # sorted 0.2 .4 .6 .8, position 0.75 -> 0.2 + .75 * .2
    assert rep["p25_mean"] == pytest.approx(0.2)
    assert rep["p75"] == pytest.approx(0.65)
    assert rep["p75_mean"] == pytest.approx(0.8)
    assert rep["absent"] == ["b"]
    assert "sorted_bottom25" not in rep


def test_fairness_report_reference_sorting_and_ties() -> None:
    iou = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, np.nan, 0.4])
    ref = np.array([0.1, 0.9, 0.5, 0.5, np.nan, 0.3, 0.2, 0.5])
    # present in both: 0, 1, 2, 3, 5, 7 (n = 6 -> round_half_up(1.5) = 2 classes)
    # ref order (stable): 0 (.1), 5 (.3), 2, 3, 7 (.5 tie -> index order), 1 (.9)
    rep = fairness_report(iou, reference=ref)
    assert rep["sorted_bottom25"] == pytest.approx((0.9 + 0.2) / 2)
    assert rep["sorted_top25"] == pytest.approx((0.4 + 0.1) / 2)
    assert rep["absent"] == [6]
    ties = fairness_report(np.array([0.5, 0.5, 0.9, 0.5]))
    assert ties["worst_class"] == 0  # ties -> lowest index
    assert ties["p25_mean"] == 0.5  # all three tied classes sit at the cut


def test_fairness_report_is_scale_agnostic_and_single_class() -> None:
    frac = _vec("focal") / 100
    pct = fairness_report(_vec("focal"), reference=_vec("mcce"))
    rep = fairness_report(frac, reference=_vec("mcce") / 100)
    for key in KEYS3:
        assert rep[key] * 100 == pytest.approx(pct[key])
    one = fairness_report(np.array([np.nan, 0.4]))
    assert one["miou"] == one["p25"] == one["p75_mean"] == 0.4 and one["std"] == 0.0


def test_fairness_report_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        fairness_report(np.array([np.nan, np.nan]))
    with pytest.raises(ValueError, match="reference"):
        fairness_report(np.ones(3), reference=np.ones(4))
    with pytest.raises(ValueError, match="class_names"):
        fairness_report(np.ones(3), class_names=["a", "b"])
    with pytest.raises(ValueError, match="1-D"):
        fairness_report(np.ones((2, 2)))
    with pytest.raises(ValueError, match="infinite"):
        fairness_report(np.array([0.1, np.inf]))
    with pytest.raises(ValueError, match="NaN"):
        present_iou([np.nan])


def test_end_to_end_iou_from_confusion_matrix() -> None:
    pred, target = _random_batch(4, (2, 30, 30), seed=9)
    iou = per_class_iou(confusion_matrix(pred, target, 4))
    for c in range(4):
        valid = target != 255
        t, p = (target == c) & valid, (pred == c) & valid
        assert iou[c] == pytest.approx(float((t & p).sum()) / float((t | p).sum()))
