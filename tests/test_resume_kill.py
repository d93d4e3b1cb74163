"""A study SIGKILLed (its whole process group, as an OOM killer would) and resumed.

One chain of runs on the session's Ray (the CLI connects with ``--address``), each killed
at another point, then resumed with ``--resume``:

1. mid-trial, after the first report of the first trial (no trial finished);
2. right after the first trial finished (Tune's saved state may not know it yet);
3. while the result tables are written (after ``trials.parquet``, before ``history.parquet``);
4. (a trial's params.json deleted, another's result.json cut mid-line) the last resume
   finishes: nothing runs again.

Then: exactly the planned trials, each completed once, none re-trained after it finished,
every report in the history once, and the Optuna study in the searcher's saved state
holding the same trials with the same values.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

STUDY = """
name: kill
storage: {storage}
data:
  name: synthetic
  options: {{num_images: 8, image_size: [48, 64], seed: 0}}
  loader_workers: 0
model: {{backbone: tiny}}
loss: {{name: mcce}}
optim: {{lr: 0.01}}
train: {{steps: 2, batch_size: 2, eval_every: 1, num_workers: 1, cpus_per_worker: 1, max_failures: 0}}
objectives: [worst_iou, iou_std]
search:
  num_samples: 1
  seed: 0
  losses: [tce_stochastic]
  t: {{low: 0.1, high: 2.0, log: true}}
  configurations:
    - {{name: mcce}}
resources: {{max_concurrent_trials: 1}}
"""

# the CLI, with result writing that kills its own process group between two tables
KILL_WHILE_WRITING = """
import os, signal, sys
import tce_ray.results.tables as r
_orig = r._write_parquet
def _write(df, fs, path):
    if path.endswith("history.parquet"):
        os.killpg(0, signal.SIGKILL)
    _orig(df, fs, path)
r._write_parquet = _write
from tce_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_until(cmd: list[str], env: dict, pattern: str | None, log: list[str], timeout: float = 300) -> str:
    """Run ``cmd`` in its own process group; SIGKILL the group at the first line matching
    ``pattern`` (None: let it end). Returns the output."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if pattern and re.search(pattern, line):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("timed out:\n" + "".join(log + out))
    rest = proc.communicate(timeout=120)[0]
    text = "".join(out) + (rest or "")
    log.append(f"\n---- {' '.join(cmd[-3:])} rc={proc.returncode}\n{text}")
    if pattern is None:
        assert proc.returncode == 0, "".join(log)
    else:
        assert proc.returncode == -signal.SIGKILL, "".join(log)
    return text


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_study_killed_at_several_points_resumes_without_rerunning_or_losing_anything(ray_session, tmp_path):
    import ray

    storage = tmp_path / "res"
    yaml = tmp_path / "kill.yaml"
    yaml.write_text(STUDY.format(storage=storage))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    args = [str(yaml), "--address", ray.get_runtime_context().gcs_address]
    cli = [sys.executable, "-m", "tce_ray.study", *args]
    log: list[str] = []
    study = storage / "kill"

    # 1. mid-trial: the first trial reported step 1 of 2
    out1 = _run_until(cli, env, r"report\s+\w+ step 1", log)
    first = re.search(r"start\s+(\w+)", out1).group(1)
    # 2. right after the first trial finished
    out2 = _run_until([*cli, "--resume"], env, rf"finished {first} ", log)
    assert "resuming kill" in out2
    run_dir = study / "runs" / first
    ckpts = sorted(p.name for p in run_dir.glob("checkpoint_*"))
    assert ckpts, "".join(log)
    # 3. while the results are written (the second trial done)
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, *args, "--resume"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400, start_new_session=True)
    out3 = proc.stdout + proc.stderr
    log.append(f"\n---- kill while writing rc={proc.returncode}\n{out3}")
    assert proc.returncode == -signal.SIGKILL, "".join(log)
    assert (study / "trials.parquet").is_file() and not (study / "history.parquet").exists(), "".join(log)
    # damage on top: a trial folder without params.json, a result.json cut in its last line
    second_dir = next(d for d in study.glob("trial_*") if d.name != f"trial_{first}")
    (study / f"trial_{first}" / "params.json").unlink()
    with open(second_dir / "result.json", "a") as f:
        f.write('{"step": 3, "lo')
    # 4. the last resume: nothing runs again
    out4 = _run_until([*cli, "--resume"], env, None, log)
    assert "start " not in out4 and "report " not in out4, "".join(log)
    full = "".join(log)
    (tmp_path / "runs.log").write_text(full)

    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 2, full
    assert list(trials["status"]) == ["completed", "completed"], trials[["trial_id", "status", "error"]]
    assert list(trials["config/loss/name"]) == ["mcce", "tce_stochastic"]
    assert sorted(trials["number"]) == [0, 1]  # no trial asked of Optuna twice
    assert set(trials["step"]) == {2}
    second = [t for t in trials["trial_id"] if t != first][0]
    # the first trial was not trained again after it finished: at most its final report replayed
    # (from runs/<id>/tce_final.json, when Tune's saved state did not know it had finished)
    assert not re.search(rf"report\s+{first} step 1", out3 + out4), full
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == ckpts, full
    assert (run_dir / "tce_final.json").is_file()
    # every report once: steps 1 and 2 of each trial
    hist = pd.read_parquet(study / "history.parquet")
    for tid in (first, second):
        assert sorted(hist.loc[hist["trial_id"] == tid, "step"]) == [1, 2], (tid, hist[["trial_id", "step"]], full)
    # the Optuna study in the newest searcher state: the same two trials, told the same values
    newest = sorted(glob.glob(str(study / "searcher-state-*.pkl")))[-1]
    with open(newest, "rb") as f:
        state = pickle.load(f)
    ot = state["_ot_study"].trials
    assert [(t.number, t.state.name) for t in ot] == [(0, "COMPLETE"), (1, "COMPLETE")], full
    assert set(state["_ot_trials"]) == {first, second}
    for t in ot:
        row = trials[trials["number"] == t.number].iloc[0]
        assert t.values == pytest.approx([row["worst_iou"], row["iou_std"]], nan_ok=True)
    # and the report is there, whole
    assert "Fairness criteria" in (study / "report.md").read_text()
