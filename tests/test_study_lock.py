"""One writer per study folder: an OS lock locally, a lock object on remote storage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tce_ray.study.study_lock import LOCK_NAME, LockOwner, StudyLockedError, StudyLockError, acquire_study_lock

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
import pyarrow.fs as pafs
from tce_ray.study.study_lock import acquire_study_lock
fs = pafs.LocalFileSystem() if sys.argv[2] == "object" else None
lock = acquire_study_lock(sys.argv[1], filesystem=fs, settle_s=0)
print("locked", flush=True)
time.sleep(300)
"""


def _holder(folder: Path, kind: str = "flock") -> subprocess.Popen:
    """Another process that takes the lock and keeps it (the cmd line carries 'hold-marker')."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = folder.parent / "hold.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(HOLD)
    proc = subprocess.Popen([sys.executable, str(script), str(folder), kind, "hold-marker"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        raise AssertionError(f"holder did not lock: {line!r} {proc.stderr.read()}")
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def test_second_process_on_a_local_folder_is_refused_and_a_sigkilled_holder_leaves_no_lock(tmp_path):
    folder = tmp_path / "results" / "study1"
    holder = _holder(folder)
    try:
        with pytest.raises(StudyLockedError) as info:
            acquire_study_lock(folder)
        err = info.value
        msg = str(err)
        assert "\n" not in msg
        assert err.lock_path == str(folder / LOCK_NAME) and str(folder / LOCK_NAME) in msg
        assert err.owner.pid == holder.pid and err.owner.host == socket.gethostname()
        assert f"pid {holder.pid} on {socket.gethostname()}" in msg and "hold-marker" in msg
        assert "Wait for that study to finish" in msg
        with pytest.raises(StudyLockedError, match="cannot break the lock of a running process"):
            acquire_study_lock(folder, force=True)
    finally:
        _kill9(holder)  # as an OOM killer or a lost laptop lid would
    # no stale lock: the kernel dropped it with the process; the resume takes it at once
    lock = acquire_study_lock(folder)
    assert lock.kind == "flock" and lock.owner.pid == os.getpid()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_one_process_cannot_hold_a_folder_twice_and_release_frees_it(tmp_path):
    folder = tmp_path / "s"
    with acquire_study_lock(folder) as first:
        with pytest.raises(StudyLockedError) as info:  # e.g. two run_study calls in threads
            acquire_study_lock(str(folder))
        assert info.value.owner.token == first.owner.token
    assert first.released
    second = acquire_study_lock(folder)
    second.release()
    second.release()  # idempotent
    assert (folder / LOCK_NAME).exists()  # the file stays; only the OS lock matters


def test_a_file_in_the_way_is_one_clear_error(tmp_path):
    (tmp_path / "storage").write_text("not a folder")
    with pytest.raises(StudyLockError, match="a file is in the way"):
        acquire_study_lock(tmp_path / "storage" / "study")
    fs = pafs.LocalFileSystem()
    (tmp_path / "study_file").write_text("x")
    with pytest.raises(StudyLockError, match="is a file"):
        acquire_study_lock(str(tmp_path / "study_file"), filesystem=fs, settle_s=0)


def test_file_uri_uses_the_os_lock(tmp_path):
    with acquire_study_lock(f"file://{tmp_path}/s") as lock:
        assert lock.kind == "flock" and lock.lock_path == f"{tmp_path}/s/{LOCK_NAME}"


# ---------------------------------------------------------------- remote (pyarrow file system)


def _fake_owner(**kw) -> LockOwner:
    base = dict(pid=12345, host="gpu-node-7", started="2025-01-01T00:00:00+00:00",
                command="python -m tce_ray.study studies/x.yaml", token="t0", boot_id="b", pid_start="1")
    return LockOwner(**{**base, **kw})


def test_remote_lock_object_refuses_a_second_study_with_owner_and_removal(tmp_path):
    fs = pafs.LocalFileSystem()  # stands in for S3/GCS: the lock-object code path
    folder = str(tmp_path / "bucket" / "study")
    lock = acquire_study_lock(folder, filesystem=fs, settle_s=0)
    assert lock.kind == "object"
    rec = json.loads(Path(folder, LOCK_NAME).read_text())
    assert rec["pid"] == os.getpid() and rec["token"] == lock.owner.token
    with pytest.raises(StudyLockedError) as info:
        acquire_study_lock(folder, filesystem=fs, settle_s=0)  # a live process on this host: not stale
    msg = str(info.value)
    assert f"{folder}/{LOCK_NAME}" in msg and f"pid {os.getpid()}" in msg
    assert "--force-unlock" in msg and f"delete {folder}/{LOCK_NAME}" in msg and "\n" not in msg
    lock.release()
    assert not Path(folder, LOCK_NAME).exists()
    acquire_study_lock(folder, filesystem=fs, settle_s=0).release()


def test_remote_lock_of_another_host_needs_force_and_the_old_owner_does_not_delete_the_new_lock(tmp_path):
    fs = pafs.LocalFileSystem()
    folder = tmp_path / "study"
    mine = acquire_study_lock(str(folder), filesystem=fs, settle_s=0)
    (folder / LOCK_NAME).write_bytes(_fake_owner().to_json())  # as if another host took it meanwhile
    with pytest.raises(StudyLockedError) as info:
        acquire_study_lock(str(folder), filesystem=fs, settle_s=0)
    assert info.value.owner.host == "gpu-node-7" and "pid 12345 on gpu-node-7" in str(info.value)
    mine.release()  # not ours any more: left in place
    assert LockOwner.parse((folder / LOCK_NAME).read_bytes()).host == "gpu-node-7"
    forced = acquire_study_lock(str(folder), filesystem=fs, settle_s=0, force=True)
    assert LockOwner.parse((folder / LOCK_NAME).read_bytes()).token == forced.owner.token
    forced.release()


def test_remote_lock_left_by_a_killed_study_on_this_host_is_taken_over(tmp_path):
    fs = pafs.LocalFileSystem()
    folder = tmp_path / "study"
    holder = _holder(folder, "object")
    with pytest.raises(StudyLockedError):
        acquire_study_lock(str(folder), filesystem=fs, settle_s=0)
    _kill9(holder)
    assert (folder / LOCK_NAME).exists()  # a lock object outlives its process...
    lock = acquire_study_lock(str(folder), filesystem=fs, settle_s=0)  # ...but it is gone: taken over
    assert LockOwner.parse((folder / LOCK_NAME).read_bytes()).pid == os.getpid()
    lock.release()
    # a recycled pid (alive, but started at another time) is not the owner either
    me = LockOwner.current()
    (folder / LOCK_NAME).write_bytes(_fake_owner(host=me.host, boot_id=me.boot_id, pid=os.getpid(), pid_start="1").to_json())
    acquire_study_lock(str(folder), filesystem=fs, settle_s=0).release()
    # an unreadable lock object is refused (owner unknown), not ignored
    (folder / LOCK_NAME).write_text("garbage")
    with pytest.raises(StudyLockedError, match="owner not recorded"):
        acquire_study_lock(str(folder), filesystem=fs, settle_s=0)


def test_remote_two_studies_at_the_same_moment_one_wins(tmp_path):
    fs = pafs.LocalFileSystem()
    folder = str(tmp_path / "study")
    barrier = threading.Barrier(2)
    results: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(acquire_study_lock(folder, filesystem=fs, settle_s=0.5))
        except StudyLockedError as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, StudyLockedError)]
    assert len(won) == 1 and len(lost) == 1, results
    won[0].release()
