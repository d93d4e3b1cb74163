"""tce_ray.train.live_metrics: what each call sets (recording gauges, no Ray), then the real gauges
on Ray's Prometheus endpoint."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest

import tce_ray.train.live_metrics as live_metrics
from tce_ray.train.live_metrics import GAUGE_SPECS, LiveMetrics


class RecordingGauge:
    def __init__(self) -> None:
        self.sets: list[tuple[float, dict]] = []

    def set(self, value: float, tags: dict) -> None:
        self.sets.append((value, dict(tags)))


@pytest.fixture()
def recorded(monkeypatch) -> dict[str, RecordingGauge]:
    gauges = {key: RecordingGauge() for key in GAUGE_SPECS}
    monkeypatch.setattr(live_metrics, "_GAUGES", gauges)
    return gauges


def test_set_step_sets_three_gauges_tagged_with_run_and_rank(recorded):
    lm = LiveMetrics("run-a", 3, ["x", "y"])
    lm.set_step(12, 0.25, 16.0)
    tags = {"run": "run-a", "rank": "3"}
    assert recorded["step"].sets == [(12, tags)]
    assert recorded["step_time"].sets == [(0.25, tags)]
    assert recorded["images_per_s"].sets == [(16.0, tags)]
    assert recorded["weight"].sets == [] and recorded["iou"].sets == []


def test_weights_and_iou_are_set_per_class_and_absent_classes_skipped(recorded):
    lm = LiveMetrics("run-b", 0, ["x", "y", "z"])
    lm.set_weights(np.array([0.5, 0.25, 0.25]))
    assert recorded["weight"].sets == [
        (0.5, {"run": "run-b", "class": "x"}),
        (0.25, {"run": "run-b", "class": "y"}),
        (0.25, {"run": "run-b", "class": "z"}),
    ]
    lm.set_iou(np.array([0.7, np.nan, 0.1]))  # y absent from the evaluation: no value at all
    assert recorded["iou"].sets == [(0.7, {"run": "run-b", "class": "x"}), (0.1, {"run": "run-b", "class": "z"})]
    assert all(isinstance(v, float) for v, _ in recorded["weight"].sets + recorded["iou"].sets)


def test_bad_input_is_refused(recorded):
    with pytest.raises(ValueError, match="run_name"):
        LiveMetrics("", 0, ["x"])
    lm = LiveMetrics("run-c", 0, ["x", "y"])
    with pytest.raises(ValueError, match="weights has 3 entries but the run has 2 classes"):
        lm.set_weights(np.array([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="iou has 1 entries"):
        lm.set_iou(np.array([0.2]))
    assert recorded["weight"].sets == [] and recorded["iou"].sets == []


def test_gauge_names_are_the_documented_ones():
    names = {name for name, _, _ in GAUGE_SPECS.values()}
    assert names == {"tce_class_weight", "tce_class_iou", "tce_step_time_seconds", "tce_images_per_second", "tce_step"}
    for name in names:  # Prometheus adds the ray_ prefix
        assert f"ray_{name}" in live_metrics.__doc__
    assert {tags for _, _, tags in GAUGE_SPECS.values()} == {("run", "class"), ("run", "rank")}


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_live_metrics_reach_the_prometheus_endpoint(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Reporter:
        def set(self):
            from tce_ray.train.live_metrics import LiveMetrics

            lm = LiveMetrics("live-test", 1, ["a", "b"])
            lm.set_weights(np.array([0.25, 0.75]))
            lm.set_iou(np.array([0.5, np.nan]))
            lm.set_step(3, 0.5, 8.0)

    reporter = Reporter.remote()
    ray.get(reporter.set.remote())
    port = ray._private.worker.global_worker.node.metrics_export_port
    want = {
        'ray_tce_class_weight{.*class="b".*run="live-test"': 0.75,
        'ray_tce_class_iou{.*class="a".*run="live-test"': 0.5,
        'ray_tce_step_time_seconds{.*rank="1".*run="live-test"': 0.5,
        'ray_tce_images_per_second{.*rank="1".*run="live-test"': 8.0,
    }
    deadline = time.time() + 60
    found: dict[str, float] = {}
    while time.time() < deadline and len(found) < len(want):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for pattern in want:
            for line in text.splitlines():
                if re.match(pattern, line):
                    found[pattern] = float(line.rsplit(" ", 1)[1])
        time.sleep(1)
    assert found == want
    # the NaN IoU of the absent class "b" is not exported
    assert not [l for l in text.splitlines() if re.match('ray_tce_class_iou{.*class="b".*run="live-test"', l)]
    ray.kill(reporter)
