"""The smoke study run by the CLI on S3 storage whose URI carries credentials
(``s3://KEY:SECRET@bucket/...``, the endpoint in the query): the study runs with them
(moto's server), and neither secret appears in a console line or in any object the study
wrote to the bucket (study.json, the tables, report.md, the trials' results, the run state,
the checkpoints, and Ray Tune's own experiment files: tuner.pkl, the searcher's state),
grepped byte by byte (issue 23). The credentials travel in the environment instead
(tce_ray.train.uri_credentials)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY, SECRET = "AKIDSECRETUSER", "S3CRETPASS"  # moto accepts any credentials


def _env(tmp: str) -> dict[str, str]:
    """No AWS_* from outside (the URI carries the credentials and the endpoint); Ray's
    session under ``tmp`` (TMPDIR; short: Ray's socket paths have a length limit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", TMPDIR=tmp,
               PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def _objects_holding_secrets(server, prefix: str) -> tuple[list[str], list[str]]:
    """Every object key under ``prefix``, and those whose bytes (or key) hold a secret."""
    fs, keys, bad = server.filesystem(), server.keys(prefix), []
    for key in keys:
        with fs.open_input_stream(f"{server.bucket}/{key}") as f:
            data = f.read()
        if any(s.encode() in data or s in key for s in (KEY, SECRET)):
            bad.append(key)
    return keys, bad


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_smoke_study_with_credentials_in_the_storage_uri_never_shows_them(s3_server, tmp_path):
    prefix = "redact-smoke"
    uri = f"s3://{KEY}:{SECRET}@{s3_server.bucket}/{prefix}?endpoint_override=127.0.0.1:{s3_server.port}&scheme=http"
    tmp = tempfile.mkdtemp(prefix="tce-rs-", dir="/tmp")
    try:
        proc = subprocess.run([sys.executable, "-m", "tce_ray.study", "studies/smoke.yaml", "--storage", uri],
                              cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=840)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = proc.stdout + proc.stderr
    (tmp_path / "console.log").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    assert KEY not in out and SECRET not in out, [ln for ln in out.splitlines() if KEY in ln or SECRET in ln][:5]
    assert f"{s3_server.bucket}/{prefix}" in out  # the storage is shown, without its credentials

    keys, bad = _objects_holding_secrets(s3_server, prefix)
    names = {k.rsplit("/", 1)[-1] for k in keys}
    assert {"study.json", "report.md", "trials.parquet"} <= names, keys  # the study really wrote there
    assert any("/checkpoint_" in k for k in keys) and any("/tce_state/" in k for k in keys), keys
    assert bad == [], bad


def test_move_uri_credentials_hand_cases(monkeypatch):
    from tce_ray.train import uri_credentials as uc

    monkeypatch.setattr(uc, "_MOVED", {})
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    for same in ("/local/x", "gs://b/x", "s3://bucket/x?endpoint_override=h:1", "s3://user@b/x", "hdfs://u:p@h/x"):
        assert uc.move_uri_credentials(same) == same and uc.moved_environment() == {}
    assert uc.move_uri_credentials("s3://AK%2FID:SE:CR%40ET@bucket/p/q?scheme=http") == "s3://bucket/p/q?scheme=http"
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AK/ID" and os.environ["AWS_SECRET_ACCESS_KEY"] == "SE:CR@ET"
    assert uc.moved_environment() == {"AWS_ACCESS_KEY_ID": "AK/ID", "AWS_SECRET_ACCESS_KEY": "SE:CR@ET"}
