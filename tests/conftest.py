"""Shared test fixtures: one local Ray instance per test session, tiny thread counts."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CAMVID_ROOT = Path(
    os.environ.get("TCE_CAMVID_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid")
)


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once for the whole test session (4 logical CPUs on a 2-core machine).

    The dashboard process is kept (Ray's State API frees the placement groups of trials
    stopped early; without it their CPUs leak), but its UI is bound to loopback.
    """
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a cluster another process started with `ray start`
            num_cpus=4,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=None,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid set in ../shared/data/camvid; tests using it skip without it."""
    if not (CAMVID_ROOT / "train").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID_ROOT} (set TCE_CAMVID_ROOT)")
    return CAMVID_ROOT


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on loopback for the session, with one bucket.

    Yields a ``tests.s3_server.S3Server``: ``uri()`` gives a fresh ``s3://bucket/prefix``,
    ``env`` the settings (``AWS_ENDPOINT_URL``, credentials, region) a process needs to reach
    it. Tests apply ``env`` to themselves with monkeypatch, or pass it to subprocesses.
    """
    pytest.importorskip("moto", reason="moto[server] (dev extras) runs the S3-compatible test server")
    from s3_server import start_s3_server

    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's process talks to the S3 test server (``AWS_ENDPOINT_URL`` & co. set)."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server


def _recorder():
    from ray import tune

    class Recorder(tune.Callback):
        def __init__(self) -> None:
            self.results: list[tuple[str, int]] = []
            self.completed: list[str] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            self.results.append((trial.trial_id, int(result.get("step", -1))))

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.completed.append(trial.trial_id)

    return Recorder()


@pytest.fixture(scope="session")
def smoke(ray_session, tmp_path_factory):
    """studies/smoke.yaml run once per test session (~90 s; Ray tests only): its result, folder,
    stdout and a Tune callback that recorded the reports (tests/test_observe_smoke.py,
    tests/test_evaluate_smoke.py)."""
    from tce_ray.study.runner import run_study

    base = tmp_path_factory.mktemp("observe")
    storage = base / "results"
    recorder = _recorder()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = run_study(str(ROOT / "studies" / "smoke.yaml"), storage=storage, callbacks=[recorder])
    (base / "stdout.txt").write_text(out.getvalue())  # to read after a failure
    return {"result": result, "dir": storage / "smoke", "base": base, "stdout": out.getvalue(), "recorder": recorder}
