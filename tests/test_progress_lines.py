"""The study's progress lines (tune_callbacks.progress_callback) driven by hand: fake trials,
a fake clock; what the full and the terse (--quiet) forms print."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tce_ray.study import tune_callbacks
from tce_ray.study.tune_callbacks import _duration, progress_callback


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=lambda: {"loss": {"name": "mcce"}})
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(tune_callbacks.time, "time", c)
    return c


def _drive(cb: Any, clock: Clock) -> None:
    a, b, c = FakeTrial("a"), FakeTrial("b"), FakeTrial("c")
    trials = [a, b, c]
    cb.setup()
    a.status = "RUNNING"
    cb.on_trial_start(0, trials, a)
    clock.now += 40  # start-up plus 10 steps
    cb.on_trial_result(0, trials, a, {"step": 10, "worst_iou": 0.1, "iou_std": 0.3, "miou": 0.5})
    clock.now += 20  # 10 more steps: 0.5 steps/s, 80 steps left
    cb.on_trial_result(0, trials, a, {"step": 20, "worst_iou": 0.2, "iou_std": 0.25, "miou": 0.5})
    a.status, a.last_result = "TERMINATED", {"step": 100, "worst_iou": 0.2, "iou_std": 0.25}
    clock.now += 40  # 100 s since the start
    cb.on_trial_complete(0, trials, a)
    b.status = c.status = "RUNNING"  # two at once: c runs while b fails
    cb.on_trial_start(0, trials, b)
    clock.now += 100
    b.status, b.last_result = "ERROR", {}
    cb.on_trial_error(0, trials, b)
    cb.on_trial_start(0, trials, c)
    clock.now += 100
    c.status, c.last_result = "TERMINATED", {"step": 100, "worst_iou": 0.15, "iou_std": 0.1}
    cb.on_trial_complete(0, trials, c)


def test_full_progress_lines(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    cb = progress_callback(["worst_iou", "iou_std"], 4, modes={"worst_iou": "max", "iou_std": "min"}, steps=100,
                           experiment_path="/r/study")
    _drive(cb, clock)
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("[     0s] logs: Ray workers' stdout/stderr in ") and "/r/study/trial_<id>/" in lines[0]
    assert "report   a step 10/100 (10%), 4.0 s/step, ETA 6m00s: worst_iou=0.1000 iou_std=0.3000 miou=0.5000" in out
    assert "report   a step 20/100 (20%), 2.0 s/step, ETA 2m40s:" in out
    study = [ln for ln in lines if "] study    " in ln]
    assert study[0].endswith("study    1/4 trials done (0 failed, 0 running), elapsed 1m40s, ETA 5m00s; "
                             "best so far: worst_iou=0.2000 (a), iou_std=0.2500 (a)")
    assert "2/4 trials done (1 failed, 1 running), elapsed 3m20s, ETA 3m20s" in study[1]
    # worst_iou is maximised (a keeps it), iou_std minimised (c takes it)
    assert study[2].endswith("3/4 trials done (1 failed, 0 running), elapsed 5m00s, ETA 1m40s; "
                             "best so far: worst_iou=0.2000 (a), iou_std=0.1000 (c)")


def test_study_eta_counts_the_running_trials_share(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    """Two trials at once: a ends at 100 s while b is at step 90/100. Work done 1 + 0.9 trials
    in 100 s; left 4 - 1 - 0.9 = 2.1 trials: ETA 100 / 1.9 x 2.1 = 110.5 s (finished trials
    alone gave 300 s)."""
    cb = progress_callback(["worst_iou"], 4, modes={"worst_iou": "max"}, steps=100)
    a, b = FakeTrial("a", status="RUNNING"), FakeTrial("b", status="RUNNING")
    trials = [a, b, FakeTrial("c"), FakeTrial("d")]
    cb.setup()
    cb.on_trial_start(0, trials, a)
    cb.on_trial_start(0, trials, b)
    clock.now += 90
    cb.on_trial_result(0, trials, b, {"step": 90, "worst_iou": 0.1})
    clock.now += 10
    a.status, a.last_result = "TERMINATED", {"step": 100, "worst_iou": 0.2}
    cb.on_trial_complete(0, trials, a)
    study = [ln for ln in capsys.readouterr().out.splitlines() if "] study    " in ln]
    assert f"1/4 trials done (0 failed, 1 running), elapsed 1m40s, ETA {_duration(100 / 1.9 * 2.1)};" in study[0]
    assert _duration(100 / 1.9 * 2.1) == "1m51s"  # 110.5 s


def test_terse_lines_are_todays(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    cb = progress_callback(["worst_iou", "iou_std"], 4, modes={"worst_iou": "max", "iou_std": "min"}, steps=100,
                           terse=True)
    _drive(cb, clock)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("]", 1)[1].split()[0] for ln in lines] == [
        "start", "report", "report", "finished", "start", "FAILED", "start", "finished"]
    assert lines[1].endswith("report   a step 10: worst_iou=0.1000 iou_std=0.3000 miou=0.5000")
    assert lines[5].endswith("FAILED   b [mcce] (2/4); the study goes on")


def test_duration_text() -> None:
    assert [_duration(s) for s in (0, 59.4, 60, 425, 3599, 3600, 7380)] == ["0s", "59s", "1m00s", "7m05s", "59m59s", "1h00m", "2h03m"]


def test_running_lines_between_reports(clock: Clock, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    published: dict[str, tuple[int, float]] = {}
    monkeypatch.setattr(tune_callbacks, "read_step", published.get)
    cleared: list[str] = []
    monkeypatch.setattr(tune_callbacks, "clear_step", cleared.append)
    every = tune_callbacks.RUNNING_LINE_EVERY_S
    for terse in (False, True):
        cb = progress_callback(["worst_iou"], 1, modes={"worst_iou": "max"}, steps=100, terse=terse)
        a, b = FakeTrial("a"), FakeTrial("b")
        cb.setup()
        a.status = "RUNNING"
        cb.on_trial_start(0, [a, b], a)
        start = clock.now
        clock.now += every / 2
        published["a"] = (5, clock.now)
        cb.on_step_end(0, [a, b])  # too soon since the last line
        clock.now = start + every + 10
        published["a"], published["b"] = (14, clock.now), (50, clock.now)  # b is not running
        cb.on_step_end(0, [a, b])  # the first step read: no rate yet
        cb.on_step_end(0, [a, b])  # too soon again
        clock.now += every
        published["a"] = (26, clock.now)
        cb.on_step_end(0, [a, b])
        clock.now += every
        cb.on_step_end(0, [a, b])  # no new step: no line
        clock.now += 10
        cb.on_trial_result(0, [a, b], a, {"step": 30, "worst_iou": 0.2, "miou": 0.5})
        a.status = "TERMINATED"
        cb.on_trial_complete(0, [a, b], a)
        out = capsys.readouterr().out
        running = [ln for ln in out.splitlines() if "] running " in ln]
        if terse:
            assert running == []
            continue
        # 12 steps in the 60 s between two published steps: 5.0 s/step, 74 steps left
        assert running == ["[    70s] running  a step 14/100 (14%)",
                           "[   130s] running  a step 26/100 (26%), 5.0 s/step, ETA 6m10s"], out
        # the report's rate counts from the first step seen (step 14 at 70 s): 16 steps in 130 s,
        # the pause before the report included; from the last line (4 steps in 70 s, 17.5 s/step)
        # one evaluation would look like the trial's pace
        assert "report   a step 30/100 (30%), 8.1 s/step, ETA 9m29s" in out, out
    assert cleared == ["a", "a"]  # the finished trial's published step is dropped


@pytest.mark.ray
def test_step_publisher_round_trip_through_the_cluster(ray_session) -> None:
    import ray

    from tce_ray.train.step_progress import StepPublisher, clear_step, read_step

    @ray.remote(num_cpus=0)
    def worker(n: int) -> None:  # a Train worker's rank 0, in another process
        pub = StepPublisher("run-kv-test", every_s=3600)
        for step in range(1, n + 1):
            pub.update(step)  # only the first update within the period is written

    assert read_step("run-kv-test") is None
    ray.get(worker.remote(5))
    step, t = read_step("run-kv-test")
    assert step == 1 and abs(t - __import__("time").time()) < 120
    clear_step("run-kv-test")
    assert read_step("run-kv-test") is None
