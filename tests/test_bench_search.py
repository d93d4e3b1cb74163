"""The search-efficiency benchmark's scoring: exact 2-D hypervolume and the mIoU guard."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from benchmarks.bench_search import (
    HV_REFERENCE,
    hypervolume_2d,
    hypervolume_curve,
    pareto_front_2d,
    passes_guard,
    remap_list,
)


def _union_area(points, ref):
    """Independent check: area of the union of boxes [ref_w, w] x [s, ref_s] on the grid
    of all coordinates (each grid cell is in the union or not)."""
    boxes = [(ref[0], w, s, ref[1]) for w, s in points if w > ref[0] and s < ref[1]]
    xs = sorted({ref[0], *(b[1] for b in boxes)})
    ys = sorted({ref[1], *(b[2] for b in boxes)})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if any(b[0] <= cx <= b[1] and b[2] <= cy <= b[3] for b in boxes):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hand_computed_cases():
    ref = (0.0, 0.5)
    assert hypervolume_2d([], ref) == 0.0
    assert hypervolume_2d([(0.2, 0.3)], ref) == pytest.approx(0.2 * 0.2)
    # two boxes 0.2 x 0.2 and 0.1 x 0.4 overlapping in 0.1 x 0.2: 0.04 + 0.04 - 0.02
    assert hypervolume_2d([(0.2, 0.3), (0.1, 0.1)], ref) == pytest.approx(0.06)
    # a dominated point and a duplicate add nothing
    assert hypervolume_2d([(0.2, 0.3), (0.1, 0.1), (0.05, 0.4), (0.2, 0.3)], ref) == pytest.approx(0.06)
    # worst IoU 0 or std at/above the reference: outside the box
    assert hypervolume_2d([(0.0, 0.1), (0.3, 0.5), (0.3, 0.7)], ref) == 0.0
    # another reference point: worst -0.1, std 1.0 -> (0.2 + 0.1) * (1.0 - 0.3)
    assert hypervolume_2d([(0.2, 0.3)], (-0.1, 1.0)) == pytest.approx(0.3 * 0.7)
    # three steps: (0.3, 0.4), (0.2, 0.2), (0.1, 0.0) -> 0.3*0.1 + 0.2*0.2 + 0.1*0.2
    assert hypervolume_2d([(0.1, 0.0), (0.3, 0.4), (0.2, 0.2)], ref) == pytest.approx(0.03 + 0.04 + 0.02)


def test_matches_grid_union_on_random_sets():
    rng = random.Random(0)
    for _ in range(200):
        pts = [(rng.uniform(-0.1, 1.0), rng.uniform(0.0, 0.6)) for _ in range(rng.randint(0, 12))]
        ref = (rng.choice([0.0, -0.05]), rng.choice([0.5, 0.45]))
        expected = _union_area(pts, ref)
        assert hypervolume_2d(pts, ref) == pytest.approx(expected, abs=1e-12)
        shuffled = pts[:]
        rng.shuffle(shuffled)
        assert hypervolume_2d(shuffled, ref) == pytest.approx(expected, abs=1e-12)


def test_front_and_bad_input():
    assert pareto_front_2d([(0.1, 0.1), (0.2, 0.3), (0.05, 0.4), (0.2, 0.35)]) == [(0.2, 0.3), (0.1, 0.1)]
    with pytest.raises(ValueError, match="not finite"):
        hypervolume_2d([(float("nan"), 0.1)])
    with pytest.raises(ValueError, match="not finite"):
        hypervolume_2d([(0.1, math.inf)])


def test_guard_and_curve():
    assert passes_guard(0.55, 0.6, 0.05) and passes_guard(0.7, 0.6, 0.05)
    assert not passes_guard(0.549, 0.6, 0.05) and not passes_guard(float("nan"), 0.6)
    trials = [
        {"status": "completed", "miou": 0.60, "worst_iou": 0.10, "iou_std": 0.30},  # 0.1 * 0.2
        {"status": "failed", "miou": 0.70, "worst_iou": 0.50, "iou_std": 0.01},  # failed: ignored
        {"status": "completed", "miou": 0.30, "worst_iou": 0.40, "iou_std": 0.05},  # collapsed: guard drops it
        {"status": "completed", "miou": 0.58, "worst_iou": 0.20, "iou_std": 0.40},  # adds 0.1 * 0.1
        {"status": "completed", "miou": float("nan"), "worst_iou": 0.3, "iou_std": 0.1},  # non-finite: ignored
    ]
    curve = hypervolume_curve(trials, reference_miou=0.6, tol=0.05, reference=HV_REFERENCE)
    assert curve == pytest.approx([0.02, 0.02, 0.02, 0.03, 0.03])


def test_remap_merges_the_synthetic_classes():
    lut = remap_list()
    assert len(lut) == 256 and lut[255] == 255
    assert lut[0] == lut[11] == 0 and lut[5] == lut[6] == 5 and lut[7] == lut[8] == lut[9] == lut[10] == 6
    assert lut[12] is None
