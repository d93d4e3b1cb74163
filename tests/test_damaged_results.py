"""Damaged or wrong result folders: one line naming the file and what to do, exit 2 (no Ray).

Also: the result files are replaced atomically (a failed write leaves the old file whole),
and a JSON-lines file cut by a crash loses only its partial line (with a warning).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tce_ray.results.report import main
from tce_ray.results.tables import (
    DamagedResultsError,
    StudyTables,
    TrialRecord,
    collect_trials,
    pareto_front,
    read_json_lines,
    read_tables,
    write_tables,
)

ROOT = Path(__file__).resolve().parents[1]
OBJ = {"worst_iou": "max", "iou_std": "min"}


def _study(tmp_path: Path) -> Path:
    recs = []
    for i, (name, iou) in enumerate([("mcce", [0.2, 0.4, 0.6]), ("focal", [0.3, 0.35, 0.5])]):
        u = np.array(iou)
        m = {"step": 4, "loss": 0.5, "miou": float(u.mean()), "worst_iou": float(u.min()), "iou_std": float(u.std(ddof=1))}
        m.update({f"iou/c{j}": float(v) for j, v in enumerate(u)})
        hist = pd.DataFrame([{"step": 2, "loss": 1.0, "miou": 0.1}, {"step": 4, "loss": 0.5, "miou": float(u.mean())}])
        recs.append(TrialRecord(f"t{i}", {"loss": {"name": name}, "study": {"configuration": i, "number": i}}, m, hist))
    trials, history = collect_trials(recs, OBJ, total_steps=4)
    d = tmp_path / "study"
    meta = {"name": "s", "objectives": [{"name": k, "mode": v} for k, v in OBJ.items()]}
    write_tables(d, StudyTables(trials, history, pareto_front(trials, OBJ), meta))
    return d


def _cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tce_ray.results.report", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_truncated_trials_parquet_names_the_file_and_exits_2(tmp_path):
    d = _study(tmp_path)
    f = d / "trials.parquet"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # a crash in the middle of a (non-atomic) write
    with pytest.raises(DamagedResultsError) as info:
        read_tables(d)
    assert info.value.path == str(f)
    line = _one_line_error(_cli(d), str(f), "not a readable Parquet file", "--resume")
    assert "report.md" not in {p.name for p in d.iterdir()}, line  # nothing written from a damaged table


def test_empty_trials_parquet_and_wrong_table(tmp_path):
    d = _study(tmp_path)
    (d / "trials.parquet").write_bytes(b"")
    _one_line_error(_cli(d), str(d / "trials.parquet"), "empty")
    # a Parquet file that is not a trials table (no trial_id / status)
    pd.DataFrame({"x": [1, 2]}).to_parquet(d / "trials.parquet")
    assert main([str(d)]) == 2
    with pytest.raises(DamagedResultsError, match="no column trial_id, status"):
        read_tables(d)


def test_broken_study_json(tmp_path):
    d = _study(tmp_path)
    (d / "study.json").write_text('{"name": "s", "objectives": [')
    _one_line_error(_cli(d), str(d / "study.json"), "not valid JSON")
    (d / "study.json").write_text("[1, 2]")
    with pytest.raises(DamagedResultsError, match="holds a list"):
        read_tables(d)


def test_folders_of_the_wrong_kind(tmp_path):
    d = _study(tmp_path)
    # a file instead of a folder
    _one_line_error(_cli(d / "trials.parquet"), "is a file, not a study result folder")
    # one trial's folder (Tune's result.json / params.json)
    trial = d / "trial_t0"
    trial.mkdir()
    (trial / "params.json").write_text("{}")
    (trial / "result.json").write_text("")
    _one_line_error(_cli(trial), "the folder of one trial", "give its parent")
    # a Tune experiment that never wrote its tables (killed before the end)
    exp = tmp_path / "killed"
    exp.mkdir()
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    _one_line_error(_cli(exp), "has not written its results yet", "--resume")
    # anything else
    other = tmp_path / "other"
    other.mkdir()
    _one_line_error(_cli(other), "not a study result folder")


def test_result_files_are_replaced_atomically(tmp_path, monkeypatch):
    d = _study(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    t = read_tables(d)
    import pyarrow.parquet as pq

    real = pq.write_table

    def crash(table, where, **k):  # writes the new table, then the disk fills: a half-done file
        real(table.slice(0, 1), where, **k)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_tables(d, StudyTables(t.trials.iloc[:1], t.history, t.pareto, {"name": "new"}))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # the old files, whole
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    # a successful write leaves no temporary files either, and the report is rebuilt whole
    write_tables(d, StudyTables(t.trials.iloc[:1], t.history, t.pareto, {"name": "new"}))
    assert main([str(d)]) == 0
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []
    assert len(read_tables(d).trials) == 1 and read_tables(d).meta == {"name": "new"}


def test_json_lines_with_a_partial_last_line_keep_the_rest():
    text = json.dumps({"step": 2, "miou": 0.1}) + "\n" + json.dumps({"step": 4, "miou": 0.2}) + "\n" + '{"step": 6, "mi'
    with pytest.warns(UserWarning, match=r"result\.json: line 3 is not complete JSON"):
        rows = read_json_lines(text, "result.json")
    assert [r["step"] for r in rows] == [2, 4]
    assert read_json_lines("") == []
