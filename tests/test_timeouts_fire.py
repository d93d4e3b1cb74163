"""The suite's time-outs end a test blocked in C (issue 23): pytest-timeout's ``thread``
method, set in pyproject.toml, prints every thread's stack and ends the process, where the
``signal`` method waits forever for a C call that never returns to Python."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = '''
import os

import pytest


@pytest.mark.timeout(3)
def test_blocked_in_c():
    r, w = os.pipe()  # nobody writes: os.read waits in the kernel, never back in Python
    os.read(r, 1)
'''


def test_the_suite_uses_the_thread_method():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert cfg["timeout_method"] == "thread" and cfg["timeout"] > 0


def test_a_test_blocked_in_a_c_call_is_ended_with_its_stacks(tmp_path):
    (tmp_path / "test_blocked.py").write_text(BLOCKED)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), str(tmp_path / "test_blocked.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert took < 30, (took, out)
    assert proc.returncode != 0, out
    assert "Timeout" in out, out  # pytest-timeout's banner
    assert "test_blocked_in_c" in out and "os.read(r, 1)" in out, out  # the stack of the blocked test
