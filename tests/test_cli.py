"""The study command's exit codes, its bounded wait for a cluster address, and the study lock.

No Ray is started here: ``run_study`` is replaced by a fake where a study would run, the
unreachable address is an unused port (the wait ends before ``ray.init``), and the lock
refuses the second study before Ray. SIGINT during trials -> 130 is checked end to end by
``tests/test_study.py::test_cli_interrupted_then_resumed_does_not_rerun_finished_trials``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tce_ray import cli
from tce_ray.cli import (
    EXIT_ALL_FAILED, EXIT_BAD_INPUT, EXIT_CODES, EXIT_INTERRUPTED, EXIT_NOT_RUN, EXIT_OK, EXIT_SOME_FAILED, exit_code,
)
from tce_ray.train.ray_env import ClusterUnreachable, _host_port, wait_for_address

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "studies" / "smoke.yaml")  # 2 trials


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the codes


@pytest.mark.parametrize("statuses,total,code", [
    (["completed", "completed"], 2, EXIT_OK),
    (["completed", "stopped"], 2, EXIT_OK),  # stopped early by ASHA: done
    (["completed", "failed"], 2, EXIT_SOME_FAILED),
    (["failed", "failed"], 2, EXIT_ALL_FAILED),
    (["completed", "interrupted"], 2, EXIT_INTERRUPTED),
    (["failed", "pending"], 2, EXIT_INTERRUPTED),  # resumable beats failed
    (["completed"], 2, EXIT_INTERRUPTED),  # fewer trials than planned
    ([], 2, EXIT_INTERRUPTED),
])
def test_exit_code(statuses, total, code):
    assert exit_code(statuses, total) == code


def test_codes_are_distinct_and_listed_in_help():
    codes = [EXIT_OK, EXIT_NOT_RUN, EXIT_BAD_INPUT, EXIT_SOME_FAILED, EXIT_ALL_FAILED, EXIT_INTERRUPTED]
    assert len(set(codes)) == len(codes) == len(EXIT_CODES)
    text = cli.build_parser().format_help()
    assert "exit codes:" in text
    for code in codes:
        assert f"  {code:>3}  " in text
    assert "--connect-timeout" in text and "--force-unlock" in text


class _FakeResult:
    def __init__(self, statuses):
        self.trials = pd.DataFrame({"status": statuses})


def _fake_run_study(monkeypatch, outcome):
    import tce_ray.study.runner as study

    seen = {}

    def run_study(cfg, **kw):
        seen.update(kw)
        if isinstance(outcome, BaseException):
            raise outcome
        return _FakeResult(outcome)

    monkeypatch.setattr(study, "run_study", run_study)
    return seen


@pytest.mark.parametrize("outcome,code", [
    (["completed", "completed"], EXIT_OK),
    (["completed", "failed"], EXIT_SOME_FAILED),
    (["failed", "failed"], EXIT_ALL_FAILED),
    (["completed", "interrupted"], EXIT_INTERRUPTED),
    (KeyboardInterrupt(), EXIT_INTERRUPTED),
])
def test_main_maps_the_study_outcome_to_its_code(monkeypatch, capsys, outcome, code):
    _fake_run_study(monkeypatch, outcome)
    assert cli.main([SMOKE, "--quiet"]) == code
    err = capsys.readouterr().err
    if code != EXIT_OK:
        assert err.strip().splitlines()[-1] in (f"exit {code}: {EXIT_CODES[code]}", "interrupted; continue with --resume")


def test_main_bad_input_and_not_run(monkeypatch, capsys, tmp_path):
    from tce_ray.study.config import ConfigError
    from tce_ray.study.runner import StudyError

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {steps: 0}\n")
    assert cli.main([str(bad)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith(f"error: {bad}:2: train.steps")
    _fake_run_study(monkeypatch, ConfigError("nope", path="model.backbone"))
    assert cli.main([SMOKE]) == EXIT_BAD_INPUT
    _fake_run_study(monkeypatch, StudyError("the study folder is in use"))
    assert cli.main([SMOKE]) == EXIT_NOT_RUN
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: the study folder is in use"


def test_flags_reach_run_study(monkeypatch):
    seen = _fake_run_study(monkeypatch, ["completed", "completed"])
    assert cli.main([SMOKE, "--force-unlock", "--connect-timeout", "7.5", "--address", "h:1"]) == EXIT_OK
    assert seen["force_unlock"] is True and seen["connect_timeout_s"] == 7.5 and seen["address"] == "h:1"
    assert seen["file"] == SMOKE


def test_bad_connect_timeout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main([SMOKE, "--connect-timeout", "-1"])
    assert ei.value.code == 2 and "positive number of seconds" in capsys.readouterr().err


# ------------------------------------------------------------------ the cluster address


def test_host_port():
    assert _host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert _host_port("ray://head:10001") == ("head", 10001)
    assert _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("auto") is None and _host_port("local") is None and _host_port("head") is None


def test_wait_for_an_unused_port_is_bounded():
    port = free_port()
    said = []
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachable) as ei:
        wait_for_address(f"127.0.0.1:{port}", 1.0, say=said.append, poll_s=0.1)
    took = time.monotonic() - t0
    assert 0.9 <= took < 15  # bounded by the 1 s timeout (slack for a loaded machine)
    assert "\n" not in str(ei.value) and f"no Ray cluster answers at 127.0.0.1:{port} after 1 s" in str(ei.value)
    assert said == [f"waiting for the Ray cluster at 127.0.0.1:{port} (up to 1 s; Ctrl-C stops)"]


def test_wait_returns_when_something_listens():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        wait_for_address(f"127.0.0.1:{srv.getsockname()[1]}", 2.0)


def test_wait_for_an_unknown_host_fails_at_once():
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachable, match="cannot resolve"):
        wait_for_address("no-such-host.invalid:6379", 30.0)
    assert time.monotonic() - t0 < 15


def _study_cmd(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tce_ray.study", SMOKE, "--storage", str(tmp_path / "r"), *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}


def test_cli_unreachable_address_fails_in_bounded_time_with_one_line(tmp_path):
    port = free_port()
    t0 = time.monotonic()
    code = ("import sys\nfrom tce_ray.cli import main\nrc = main(sys.argv[1:])\n"
            "print('RAY_IMPORTED', 'ray' in sys.modules)\nsys.exit(rc)\n")
    args = [SMOKE, "--storage", str(tmp_path / "r"), "--address", f"127.0.0.1:{port}", "--connect-timeout", "2", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == EXIT_NOT_RUN, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: no Ray cluster answers at 127.0.0.1:{port} after 2 s"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "RAY_IMPORTED False" in proc.stdout  # failed before Ray was imported, let alone started
    assert took < 90  # preflight + 2 s; generous for a loaded machine


def test_ctrl_c_stops_the_wait_for_the_cluster(tmp_path):
    port = free_port()
    proc = subprocess.Popen(_study_cmd(tmp_path, "--address", f"127.0.0.1:{port}", "--connect-timeout", "300"),
                            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "waiting for the Ray cluster" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert time.monotonic() - t0 < 60  # well before the 300 s wait ends; generous for a loaded machine
    assert proc.returncode == EXIT_INTERRUPTED, "".join(seen) + rest
    assert "interrupted; continue with --resume" in rest and "Traceback" not in rest


# ------------------------------------------------------------------ one study per folder


def test_a_second_study_on_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    from tce_ray.study.study_lock import acquire_study_lock

    with acquire_study_lock(tmp_path / "r" / "smoke") as lock:
        proc = subprocess.run(_study_cmd(tmp_path, "--quiet"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == EXIT_NOT_RUN, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: the study folder {tmp_path / 'r' / 'smoke'} is in use by another study (pid {os.getpid()} on ")
    assert lock.lock_path in line and "Traceback" not in proc.stderr


def test_a_killed_holder_leaves_no_lock_and_force_unlock_reaches_the_lock(tmp_path, monkeypatch):
    from tce_ray.study.config import load_config
    from tce_ray.study.runner import StudyError, _lock_study_folder
    import tce_ray.study.study_lock as study_lock

    cfg = load_config(SMOKE).model_copy(update={"storage": str(tmp_path)})
    code = ("import sys, time\nfrom tce_ray.study.study_lock import acquire_study_lock\n"
            f"acquire_study_lock({cfg.experiment_path()!r})\nprint('LOCKED', flush=True)\ntime.sleep(300)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(StudyError, match=f"in use by another study \\(pid {holder.pid} on "):
            _lock_study_folder(cfg, False)
    finally:
        holder.kill()
        holder.wait()
    _lock_study_folder(cfg, False).release()  # the kernel dropped the dead holder's lock

    seen = {}

    def fake(path, *, force=False, **kw):
        seen.update(path=path, force=force)
        raise study_lock.StudyLockedError("stale lock", "x", None)

    monkeypatch.setattr(study_lock, "acquire_study_lock", fake)
    with pytest.raises(StudyError, match="stale lock"):
        _lock_study_folder(cfg, True)
    assert seen == {"path": cfg.experiment_path(), "force": True}
