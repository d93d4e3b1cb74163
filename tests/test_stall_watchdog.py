"""The stall watchdog: unit checks (no Ray) and a tiny Ray run with one blocked worker."""

from __future__ import annotations

import time

import pytest

from tce_ray.train.run_state import RunState
from tce_ray.train.stall_watchdog import STALL_EXIT_CODE, STALLS, StallWatchdog, read_stalls, stall_message


def test_watchdog_fires_once_with_stacks_and_a_record(tmp_path):
    state = RunState(str(tmp_path))
    codes = []
    w = StallWatchdog(state, 1, 0.5, run_name="r", exit_fn=codes.append, poll_s=0.05).start()
    w.beat(3, 0.01)
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert codes == [STALL_EXIT_CODE]
    recs = read_stalls(state)
    assert [r["rank"] for r in recs] == [1] and recs[0]["step"] == 3
    stacks = (tmp_path / recs[0]["stacks"].split(str(tmp_path) + "/", 1)[1]).read_text()
    assert "tce-stall-watchdog" in stacks or "Thread" in stacks
    line = stall_message("r", recs)
    assert "\n" not in line and "rank 1 (last step 3, rank1-" in line
    assert recs[0]["stacks"].endswith(".txt") and f"stacks of every thread in {tmp_path}/{STALLS}/" in line


def test_beats_keep_it_quiet_and_the_limit_follows_the_median_step(tmp_path):
    codes = []
    w = StallWatchdog(RunState(str(tmp_path)), 0, 0.4, exit_fn=codes.append, poll_s=0.05).start()
    for i in range(12):
        w.beat(i, 0.01)
        time.sleep(0.1)
    w.stop()
    assert codes == []
    assert w.limit() == pytest.approx(0.4)
    for _ in range(20):
        w.beat(None, 1.0)
    assert w.limit() == pytest.approx(20.0)  # 20 x the median step (1 s) wins over 0.4 s
    assert not StallWatchdog(RunState(str(tmp_path)), 0, 0).enabled
    assert not StallWatchdog(RunState(str(tmp_path)), 0, None).enabled


def test_stall_timeout_is_validated():
    from tce_ray.train.runspec import TrainSpec

    assert TrainSpec().stall_timeout == 600.0 and TrainSpec(stall_timeout=None).stall_timeout is None
    with pytest.raises(ValueError):
        TrainSpec(stall_timeout=-1)
    with pytest.raises(ValueError):
        TrainSpec(stall_timeout=float("inf"))


def _run(max_failures: int):
    from tce_ray.train.runspec import RunSpec

    return RunSpec.model_validate({
        "data": {"name": "synthetic", "options": {"num_images": 16, "image_size": [48, 64]}, "loader_workers": 0},
        "loss": {"name": "mcce"},
        "train": {"steps": 4, "batch_size": 2, "eval_every": 2, "num_workers": 2, "max_failures": max_failures,
                  "stall_timeout": 4},
    })


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_a_blocked_worker_restarts_from_its_checkpoint_then_fails_with_one_line(ray_session, tmp_path):
    from tce_ray.train.stall_watchdog import RunStalledError
    from tce_ray.train.trainer import run_training

    debug = {"stall_at_step": 3, "stall_rank": 1}  # rank 1 blocks after step 3 (not after a restore)
    result = run_training(_run(1), name="stall-restart", storage_path=str(tmp_path), debug=debug)
    m = result.metrics
    assert m["step"] == 4 and m["restored_from_step"] == 2  # detected, restarted from step 2's checkpoint, done
    stacks = list((tmp_path / "stall-restart" / "tce_state" / "stalls").glob("rank1-*.txt"))
    assert stacks and "after_step" in stacks[0].read_text()  # where rank 1 was blocked

    with pytest.raises(RunStalledError) as info:
        run_training(_run(0), name="stall-fail", storage_path=str(tmp_path), debug=debug)
    line = str(info.value)
    assert "\n" not in line and line.startswith("run stall-fail stalled: "), line
    # rank 1 blocked after step 3, its last beat was step 2 (rank 0 made step 3, then waited for it in
    # the gradient all-reduce, so it stalled too): the rank behind comes first, with its stack file
    assert "on rank 1 (last step 2, rank1-" in line, line
    assert f"stacks of every thread in {tmp_path}/stall-fail/tce_state/stalls/" in line, line
