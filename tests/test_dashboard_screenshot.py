"""The Ray dashboard during a study, in headless Chromium (README: "Watching a study").

``tce-study STUDY --dashboard`` starts its own local Ray with the dashboard and prints its
URL; while the stochastic-TCE trial trains, the dashboard's Actors page shows the run's
class-weight actor (``WeightStore``, named ``tce-class-weights-<run>``) next to its Ray
Train workers, and the Cluster page the node with its worker processes. Both pages are
screenshotted; with
``TCE_UPDATE_DOCS=1`` the PNGs replace the ones in ``docs/img/`` that the README shows.
Skips where no Chromium is installed (``.ci/run`` installs Debian's where it can).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dashboard_shot import find_chromium, ray_auth_token, screenshot

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
SIZE = (1400, 1500)  # tall enough for the Actors page's 10 rows

STUDY = """
name: watch
storage: {storage}
data:
  name: synthetic
  options: {{num_images: 16, image_size: [48, 64], seed: 0}}
  loader_workers: 0
model: {{backbone: tiny}}
loss: {{name: tce_stochastic, t: 1.0, gamma: 0.2}}
optim: {{lr: 0.01}}
train: {{steps: 400, batch_size: 2, eval_every: 5, num_workers: 2, cpus_per_worker: 1, max_failures: 0}}
objectives: [worst_iou, iou_std]
search:
  num_samples: 0
  configurations:
    - {{name: tce_stochastic, t: 1.0, gamma: 0.2}}
resources: {{max_concurrent_trials: 1}}
"""


class _Lines:
    """The lines a process prints, read in a thread; ``wait`` for one matching a pattern."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def wait(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in {timeout_s:.0f} s:\n" + "".join(self.lines))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_the_ray_dashboard_shows_the_weight_actor_and_the_workers_during_a_study(tmp_path):
    yaml = tmp_path / "watch.yaml"
    yaml.write_text(STUDY.format(storage=tmp_path / "results"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "tce_ray.study", str(yaml), "--dashboard"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = _Lines(proc)
    shots: dict[str, Path] = {}
    try:
        url = out.wait(r"Ray dashboard: (http://\S+)", 300).group(1)
        out.wait(r"report\s+\w+ step", 600)  # the run's workers and its weight actor are up
        token = ray_auth_token()
        shots["actors"] = tmp_path / "ray_dashboard_actors.png"
        text = screenshot(f"{url}/#/actors", shots["actors"], token=token, size=SIZE,
                          wait_for=("WeightStore", "tce-class-weights-", "RayTrainWorker", "ALIVE"))
        assert "Authentication Token Required" not in text
        shots["cluster"] = tmp_path / "ray_dashboard_cluster.png"
        screenshot(f"{url}/#/cluster", shots["cluster"], token=token, size=SIZE, wait_for=("ALIVE", "Host / Worker Process name"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # the study stops as on Ctrl-C
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
    assert proc.returncode == 130, "".join(out.lines)  # interrupted, Ray shut down
    for name, path in shots.items():
        assert _png_size(path) == SIZE, name
        assert path.stat().st_size > 20_000, f"{name}: an empty page?"
        if os.environ.get("TCE_UPDATE_DOCS") == "1":
            shutil.copy(path, ROOT / "docs" / "img" / path.name)
