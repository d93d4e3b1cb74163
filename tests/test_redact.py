"""Bounded and private: URI credentials never reach a console line, study.json, a result
table or the report; huge step counts and long seed lists give a short plan (no Ray)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tce_ray.core.redact import RedactingStream, redact, redact_obj
from tce_ray.results.report import build_report
from tce_ray.results.tables import StudyTables, TrialRecord, collect_trials, pareto_front, write_tables

ROOT = Path(__file__).resolve().parents[1]
SECRETS = ("AKIDSECRETUSER", "S3CRETPASS", "QSECRETKEY", "QTOKEN", "SIGVALUE", "DBPASS")
URI = "s3://AKIDSECRETUSER:S3CRETPASS@bucket/x?endpoint_override=127.0.0.1:9000&secret_key=QSECRETKEY&token=QTOKEN"


@pytest.mark.parametrize("text, expected", [
    ("s3://KEY:SECRET@bucket/x", "s3://***:***@bucket/x"),
    ("at gs://TOKEN@b/x now", "at gs://***@b/x now"),
    ("postgresql://u:pw@db:5432/optuna", "postgresql://***:***@db:5432/optuna"),
    ("s3://b/x?region=eu&access_key=A&secret_key=S", "s3://b/x?region=eu&access_key=***&secret_key=***"),
    ("https://h/o?X-Amz-Credential=C&X-Amz-Signature=S&x=1", "https://h/o?X-Amz-Credential=***&X-Amz-Signature=***&x=1"),
    ("s3://b/x?password=p;token=t", "s3://b/x?password=***;token=***"),
    ("sqlite:///tmp/a.db", "sqlite:///tmp/a.db"),  # nothing secret: unchanged
    ("mail me@example.org, a=b", "mail me@example.org, a=b"),
    ("/local/path/results", "/local/path/results"),
])
def test_redact_hand_cases(text, expected):
    assert redact(text) == expected


def test_redact_obj_and_stream():
    assert redact_obj({"storage": URI, "n": [1, "s3://a:b@c"]}) == {
        "storage": redact(URI), "n": [1, "s3://***:***@c"]}
    buf = io.StringIO()
    s = RedactingStream(buf)
    s.write("first s3://K:")  # a line written in parts is redacted whole
    s.write("V@b/x\nrest ?token=T")
    s.flush()
    assert buf.getvalue() == "first s3://***:***@b/x\nrest ?token=***"


def _study_file(tmp_path: Path, **train) -> Path:
    cfg = yaml.safe_load((ROOT / "studies" / "smoke.yaml").read_text())
    cfg["train"].update(train)
    cfg["storage"] = URI
    cfg["optuna_storage"] = "postgresql://dbuser:DBPASS@db/optuna"
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _dry_run(path: Path, *extra: str) -> subprocess.CompletedProcess:
    # --no-preflight: the plan itself is under test (the preflight would stop at the
    # postgresql storage, whose driver is not installed here, before printing it).
    return subprocess.run([sys.executable, "-m", "tce_ray.study", str(path), "--dry-run", "--no-preflight", *extra],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_dry_run_with_a_billion_steps_and_credentials(tmp_path):
    proc = _dry_run(_study_file(tmp_path, steps=1_000_000_000))
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "MemoryError" not in out
    if proc.returncode == 0:
        assert "1000000000 steps" in out and "500000000 evaluations" in out
    else:  # or one line
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1
    assert not [s for s in SECRETS if s in out], out
    assert "s3://***:***@bucket/x" in out


def test_ten_thousand_seeds_give_a_short_plan(tmp_path):
    p = _study_file(tmp_path)
    cfg = yaml.safe_load(p.read_text())
    cfg["search"]["seeds"] = list(range(10_000))
    p.write_text(yaml.safe_dump(cfg))
    proc = _dry_run(p)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) < 40, len(lines)
    assert "10000 seeds [0, 1, 2, 3, 4, ... (9993 more) ..., 9998, 9999]" in proc.stdout
    assert "... 9987 more trials ..." in proc.stdout and "10000. mcce  seed=9999" in proc.stdout


def test_study_files_and_report_hold_no_credential(tmp_path):
    """study.json (the config with its storage URIs), the trial table (a trial's error
    message naming the URI) and report.md, grepped for every secret."""
    from tce_ray.study.config import load_config

    cfg = load_config(_study_file(tmp_path))
    obj = {"worst_iou": "max", "iou_std": "min"}
    recs = []
    for i, iou in enumerate([[0.2, 0.4, 0.6], [0.3, 0.35, 0.5]]):
        u = np.array(iou)
        m = {"step": 4, "loss": 0.5, "miou": float(u.mean()), "worst_iou": float(u.min()), "iou_std": float(u.std(ddof=1))}
        m.update({f"iou/c{j}": float(v) for j, v in enumerate(u)})
        hist = pd.DataFrame([{"step": 4, "loss": 0.5, "miou": float(u.mean())}])
        recs.append(TrialRecord(f"t{i}", {"loss": {"name": "mcce"}, "study": {"configuration": i, "number": i}}, m, hist,
                                error=f"cannot open the storage {URI}/t{i}" if i else None))
    trials, history = collect_trials(recs, obj, total_steps=4)
    meta = {"name": cfg.name, "objectives": [{"name": k, "mode": v} for k, v in obj.items()],
            "config": cfg.model_dump(mode="json"), "storage": cfg.experiment_path()}
    assert any(s in str(meta) for s in SECRETS)  # the config does hold them
    d = tmp_path / "study"
    write_tables(d, StudyTables(trials, history, pareto_front(trials, obj), meta))
    build_report(d)
    files = [f for f in d.rglob("*") if f.is_file()]
    assert {"study.json", "report.md", "trials.parquet"} <= {f.name for f in files}
    for f in files:
        data = f.read_bytes()
        assert not [s for s in SECRETS if s.encode() in data], f
    assert "s3://***:***@bucket" in (d / "study.json").read_text()
