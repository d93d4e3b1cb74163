"""Shared test fixtures: one local Ray instance per test session, tiny thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
torch.set_num_threads(1)

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
