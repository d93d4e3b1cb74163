"""tce_ray.train.worker_loop, the pieces alone (no Ray cluster): schedule, batches, step clock,
test hooks, the stochastic-TCE feedback and the non-finite-loss marker. Whole runs are in
tests/test_train.py and tests/test_fault_tolerance.py."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import tce_ray.train.worker_loop as wl
from tce_ray.core.losses import MCCE
from tce_ray.train.run_state import RunState
from tce_ray.train.runspec import RunSpec
from tce_ray.train.worker_loop import (
    FATAL_MARKER,
    NO_HOOKS,
    FaultInjection,
    NonFiniteLossError,
    StepClock,
    TiltFeedback,
    _epoch_batches,
    _fail_non_finite,
    _raise_if_marked_fatal,
    _steps_per_epoch,
    check_debug_options,
    make_hooks,
    poly_lr,
)


def test_poly_lr_matches_the_formula():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9, rel=1e-12)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    assert poly_lr(0.02, 30, 100, 0.0) == 0.02  # power 0: constant
    with pytest.raises(ValueError, match="step"):
        poly_lr(0.01, 101, 100, 0.9)


def test_epoch_batches_cover_each_epoch_and_resume_mid_epoch():
    data = list(range(10))
    s = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3, drop_last=True)
    it = _epoch_batches(s, 2, start_epoch=0, skip=0)
    run = [next(it) for _ in range(6)]  # 5 indices per rank -> 2 batches per epoch; 3 epochs
    expected = []
    for e in range(3):
        s.set_epoch(e)
        idx = list(s)
        expected += [idx[0:2], idx[2:4]]
    assert run == expected
    resumed = _epoch_batches(s, 2, start_epoch=1, skip=1)  # step 3 = epoch 1, second batch
    assert [next(resumed) for _ in range(3)] == expected[3:6]


def test_steps_per_epoch_needs_one_full_batch_per_worker():
    assert _steps_per_epoch(32, 2, 2) == 8
    assert _steps_per_epoch(7, 2, 2) == 1  # the rest is dropped
    with pytest.raises(ValueError, match="3 images, fewer than batch_size \\* num_workers = 4"):
        _steps_per_epoch(3, 2, 2)


# ----------------------------------------------------------------------------- the clock
def fake_time(monkeypatch, **functions) -> None:
    """The worker loop's ``time`` module replaced by ``functions`` (the real module untouched)."""
    monkeypatch.setattr(wl, "time", types.SimpleNamespace(**functions))


def scripted(values: list[float]):
    """A clock function returning ``values`` in turn."""
    it = iter(values)
    return lambda: next(it)


def test_step_clock_windows_and_the_untimed_first_step(monkeypatch):
    # restart at 0; steps end at 5 (the first: loader start-up), 6, 8; a report; restart at 20
    # (evaluation time is not step time); a step ends at 23
    fake_time(
        monkeypatch,
        perf_counter=scripted([0.0, 5.0, 6.0, 8.0, 20.0, 23.0]),
        process_time=scripted([0.0, 1.0, 1.5, 2.5, 9.0, 9.25]),
    )
    clock = StepClock()
    assert [clock.tick(x) for x in (4.0, 3.0, 2.0)] == [5.0, 1.0, 2.0]
    assert clock.window_losses == [4.0, 3.0, 2.0]  # every step's loss counts
    assert clock.window_times == [1.0, 2.0] and clock.attempt_cpu_times == [0.5, 1.0]
    m = clock.metrics(images_per_step=8)
    assert m == {"images_per_s": 8 * 2 / 3.0, "step_time_s": 1.5, "step_time_median_s": 1.5, "steps_timed": 2}
    clock.new_window()
    assert clock.window_losses == [] and clock.window_times == []
    assert clock.tick(1.0) == 3.0  # from the restart at 20, not from the last step at 8
    m = clock.metrics(images_per_step=8)
    assert m["step_time_s"] == 3.0 and m["images_per_s"] == 8 / 3.0
    assert clock.attempt_times == [1.0, 2.0, 3.0] and m["step_time_median_s"] == 2.0 and m["steps_timed"] == 3


def test_step_clock_without_timed_steps_reports_nan(monkeypatch):
    fake_time(monkeypatch, perf_counter=scripted([0.0, 5.0]), process_time=scripted([0.0, 1.0]))
    clock = StepClock()
    clock.tick(1.0)  # only the untimed first step
    m = clock.metrics(images_per_step=4)
    assert np.isnan(m["images_per_s"]) and np.isnan(m["step_time_s"]) and m["steps_timed"] == 0


# ----------------------------------------------------------------------------- test hooks
def test_no_hooks_unless_debug_options_are_given():
    assert make_hooks(None, restored=False, rank=0) is NO_HOOKS
    assert make_hooks({}, restored=True, rank=1) is NO_HOOKS
    loss = torch.tensor(1.5)
    assert NO_HOOKS.loss(loss, 3) is loss
    with pytest.raises(ValueError, match=r"unknown debug option\(s\) \['nan_step'\]"):
        check_debug_options({"nan_step": 3})
    assert check_debug_options(None) == {}


def test_fault_injection(monkeypatch):
    slept: list[float] = []
    fake_time(monkeypatch, sleep=slept.append)
    hooks = make_hooks({"nan_at_step": 2, "step_sleep_s": 0.1, "stall_at_step": 3}, restored=False, rank=1)
    assert isinstance(hooks, FaultInjection) and hooks.rank == 1 and hooks.stall
    loss = torch.tensor(1.5)
    assert hooks.loss(loss, 1) is loss and torch.isnan(hooks.loss(loss, 2))
    hooks.after_step(2)
    hooks.after_step(3)
    assert slept == [0.1, 0.1, 600]  # a sleep after every step, the stall after step 3
    slept.clear()
    restored = make_hooks({"stall_at_step": 3}, restored=True, rank=0)
    restored.after_step(3)
    assert slept == []  # an attempt that restored a checkpoint does not stall again


# ----------------------------------------------------------------------------- non-finite loss
def test_a_non_finite_loss_leaves_a_marker_that_stops_the_retries(tmp_path):
    state_dir = tmp_path / "state"
    files = RunState(str(state_dir))
    _raise_if_marked_fatal(files)  # no marker: nothing happens
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3 on worker rank 1 \(lr 0.005\)"):
        _fail_non_finite(files, float("nan"), 3, 1, 0.005)
    marker = json.loads((state_dir / FATAL_MARKER).read_text())
    assert marker["step"] == 3 and marker["rank"] == 1 and "optim.lr" in marker["message"]
    assert [p.name for p in state_dir.iterdir()] == [FATAL_MARKER]  # the temp file was renamed
    with pytest.raises(NonFiniteLossError, match="at step 3.*not retried"):
        _raise_if_marked_fatal(files)
    (state_dir / FATAL_MARKER).write_text("{broken")
    with pytest.raises(NonFiniteLossError, match="see .*FATAL_NONFINITE_LOSS.json.*not retried"):
        _raise_if_marked_fatal(files)


# ----------------------------------------------------------------------------- stochastic TCE
class FakeClient:
    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []
        self.steps = 0
        self.weights = np.array([0.2, 0.3, 0.5])

    def report(self, cls: int, loss: float) -> None:
        self.reports.append((cls, loss))

    def step(self) -> None:
        self.steps += 1


class FakeSampler:
    def __init__(self, classes: list[int]) -> None:
        self.classes = list(classes)

    def pop_batch_class(self) -> int:
        return self.classes.pop(0)


class FakeLive:
    def __init__(self) -> None:
        self.weights: list[list[float]] = []

    def set_weights(self, w: np.ndarray) -> None:
        self.weights.append(list(w))


def feedback(signal: str, rank: int = 0) -> tuple[TiltFeedback, FakeClient, FakeLive]:
    run = RunSpec.model_validate({"loss": {"name": "tce_stochastic", "tilt_signal": signal}})
    client, live = FakeClient(), FakeLive()
    fb = TiltFeedback(run, client, FakeSampler([2, 1]), live, rank=rank, class_names=("a", "b", "c"),
                      restored_hash="", prefetch_depth=0)  # type: ignore[arg-type]
    return fb, client, live


def test_batch_signal_reports_the_batch_loss_for_the_drawn_class(monkeypatch):
    fake_time(monkeypatch, monotonic=scripted([10.0, 10.0, 10.5, 11.2, 11.2]))
    fb, client, live = feedback("batch")
    assert fb.batch_class() == 2
    assert fb.class_ce(MCCE(), torch.zeros(1, 2, 2, dtype=torch.int64), 2) is None
    fb.after_step(2, 0.75, None)
    fb.after_step(1, 0.5, None)  # 0.5 s later: the gauges are not refreshed
    fb.after_step(1, 0.25, None)  # 1.2 s after the first: refreshed
    assert client.reports == [(2, 0.75), (1, 0.5), (1, 0.25)] and client.steps == 3
    assert live.weights == [[0.2, 0.3, 0.5]] * 2 and fb.skipped_reports == 0


def test_class_signal_is_the_ce_over_the_drawn_class_and_skipped_without_its_pixels():
    fb, client, live = feedback("class", rank=1)
    # 1 image of 1x3 pixels, truth (0, 0, 1); logits uniform except one pixel
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 0, 0, 0] = 2.0
    masks = torch.tensor([[[0, 0, 1]]])
    loss_fn = MCCE(keep_pixel_ce=True)
    loss_fn(logits, masks)  # the step's forward keeps the per-pixel CE the signal reads
    u, e2 = np.log(3.0), np.log(2.0 + np.exp(2.0)) - 2.0  # CE of a uniform pixel; of the confident one
    c0, c1, c2 = (fb.class_ce(loss_fn, masks, c) for c in range(3))
    assert [c0[1].item(), c1[1].item(), c2[1].item()] == [2, 1, 0]
    assert c0[0].item() == pytest.approx(u + e2, rel=1e-6) and c1[0].item() == pytest.approx(u, rel=1e-6)
    fb.after_step(0, 9.0, c0)
    fb.after_step(2, 9.0, c2)  # class 2 has no pixel in the crop: nothing to report
    assert client.reports == [(0, pytest.approx((u + e2) / 2, rel=1e-6))]
    assert fb.skipped_reports == 1 and client.steps == 2
    assert live.weights == []  # rank 1 does not set the class-weight gauges
