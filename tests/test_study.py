"""End-to-end studies on Ray (tiny: synthetic 48x64, tiny backbone, a few steps).

- run_study() in this process, each configuration with seeds [0, 1]: an explicit
  configuration that fails (no drawable class) is recorded as failed while the study goes
  on; an Objective registered on the fly (the workers cannot import it) is computed from
  the reports' per-class IoU; the seed reaches the run (train.seed) and the group tables.
- the CLI in a subprocess, interrupted with SIGINT after its first trial finished, then
  ``--resume``d: the finished trial is not run again.
- ``--dashboard``: the local Ray's dashboard URL (127.0.0.1) is printed and the Train
  tab's state tracking is on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"name": "synthetic", "options": {"num_images": 8, "image_size": [48, 64], "seed": 0}, "loader_workers": 0},
    "model": {"backbone": "tiny"},
    "optim": {"lr": 0.01},
    "train": {"steps": 2, "batch_size": 2, "eval_every": 2, "num_workers": 1, "max_failures": 0},
}


def _neg_spread(iou: np.ndarray) -> float:
    return -float(np.nanmax(iou) - np.nanmin(iou))


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_run_study_records_failures_and_on_the_fly_objectives(ray_session, tmp_path):
    from tce_ray.core.objectives import Objective
    from tce_ray.study.runner import run_study

    config = dict(TINY, name="api", optuna_storage=f"sqlite:///{tmp_path}/optuna.db",
                  resources={"max_concurrent_trials": 2}, search={
        "num_samples": 0,
        "seeds": [0, 1],  # each configuration once per seed: 4 trials
        "configurations": [
            {"name": "tce_stochastic", "t": 1.0, "min_pixels": 10**9},  # no class has 1e9 pixels: fails
            {"name": "mcce"},
        ],
    })
    spread = Objective("neg_spread_test", "max", _neg_spread)
    res = run_study(config, objectives=["worst_iou", spread], storage=tmp_path, progress=False)

    t = res.trials
    assert list(t["configuration"]) == [0, 0, 1, 1]
    assert list(t["seed"]) == [0, 1, 0, 1]
    assert list(t["status"]) == ["failed", "failed", "completed", "completed"]
    assert "drawable" in t.loc[0, "error"], t.loc[0, "error"]
    assert "\n" not in t.loc[0, "error"]
    # the full traceback in the trial's folder, named by the error_file column
    err_file = Path(t.loc[0, "error_file"])
    assert err_file == Path(t.loc[0, "path"]) / "error.txt" and err_file.is_file()
    text = err_file.read_text()
    assert "drawable" in text and 'tilt.py", line' in text and "\x1b[" not in text  # the frames, no colour codes
    assert t.loc[2, "error_file"] == ""
    ok = t.iloc[2]
    iou = ok[[c for c in t.columns if c.startswith("iou/")]].to_numpy(dtype=np.float64)
    assert ok["step"] == 2
    assert ok["worst_iou"] == pytest.approx(np.nanmin(iou))  # computed by the workers
    assert ok["neg_spread_test"] == pytest.approx(_neg_spread(iou))  # computed from the reports here
    assert res.objectives == {"worst_iou": "max", "neg_spread_test": "max"}
    # the seed is the trial's train.seed: another initialisation and batch order, another loss
    assert t.loc[2, "train_loss"] != t.loc[3, "train_loss"]
    assert set(res.pareto["trial_id"]) <= set(t.loc[2:, "trial_id"]) and len(res.pareto) >= 1

    study_dir = tmp_path / "api"
    stored = pd.read_parquet(study_dir / "trials.parquet")
    assert list(stored["status"]) == ["failed", "failed", "completed", "completed"]
    assert list(stored["seed"]) == [0, 1, 0, 1]
    groups = pd.read_parquet(study_dir / "groups.parquet")
    assert groups["label"].tolist() == ["tce_stochastic t=1 γ=0.1 min_pixels=1e+09 [#0]", "mcce [#1]"]
    assert groups["n"].tolist() == [0, 2] and groups["n_trials"].tolist() == [2, 2]
    assert groups.loc[1, "worst_iou/mean"] == pytest.approx(t.loc[2:, "worst_iou"].mean())
    hist = pd.read_parquet(study_dir / "history.parquet")
    assert set(hist["trial_id"].unique()) == set(t.loc[2:, "trial_id"])
    report = (study_dir / "report.md").read_text()
    assert "## Failed trials" in report and "drawable" in report
    assert "## Configurations over seeds (mean ± std)" in report
    assert (study_dir / "plots" / "pareto.png").is_file()
    assert (study_dir / "plots" / "pareto_groups.png").is_file()
    meta = json.loads((study_dir / "study.json").read_text())
    assert [o["name"] for o in meta["objectives"]] == ["worst_iou", "neg_spread_test"]
    assert meta["seeds"] == [0, 1]

    # the Optuna study in its RDB storage (browsable with optuna-dashboard) saw the 4 trials,
    # enqueued seed by seed: (#0, 0), (#1, 0), (#0, 1), (#1, 1)
    import optuna

    ot = optuna.load_study(study_name="api", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = [tr.state.name for tr in ot.trials]
    assert states == ["FAIL", "COMPLETE", "FAIL", "COMPLETE"], states
    attrs = [(tr.user_attrs["tce_configuration"], tr.user_attrs["tce_seed"]) for tr in ot.trials]
    assert attrs == [(0, 0), (1, 0), (0, 1), (1, 1)]
    by_id = dict(zip(t["number"], t["trial_id"]))
    assert by_id[1] == t.loc[2, "trial_id"]  # number 1 = mcce seed 0
    assert ot.trials[1].values == pytest.approx([t.loc[2, "worst_iou"], t.loc[2, "neg_spread_test"]])

    # the same study again without --resume is refused, with the way out named
    from tce_ray.study.runner import StudyError

    with pytest.raises(StudyError, match="--resume"):
        run_study(config, storage=tmp_path, progress=False)


def _result_lines(study_dir: Path) -> dict[str, int]:
    """Reports per trial (lines of each trial's result.json)."""
    out = {}
    for d in study_dir.glob("trial_*"):
        f = d / "result.json"
        out[d.name] = len(f.read_text().splitlines()) if f.exists() else 0
    return out


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_cli_interrupted_then_resumed_does_not_rerun_finished_trials(ray_session, tmp_path):
    import ray

    address = ray.get_runtime_context().gcs_address
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tce_ray.study", "studies/smoke.yaml", "--storage", str(tmp_path), "--address", address]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    finished_id = None
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:  # progress lines: "[   12s] finished <trial id> [...] (1/2)"
        lines.append(line)
        m = re.search(r"finished (\w+) ", line)
        if m:
            finished_id = m.group(1)
            break
        assert time.monotonic() < deadline, "".join(lines)
    assert finished_id, "".join(lines)
    time.sleep(3)  # let the second trial start
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    lines.append(out)
    log1 = "".join(lines)
    assert proc.returncode == 130, log1  # interrupted: resume possible (cli.EXIT_INTERRUPTED)
    study_dir = tmp_path / "smoke"
    before = _result_lines(study_dir)
    assert before[f"trial_{finished_id}"] == 2, log1  # steps 4, eval every 2: two reports
    run_dir = study_dir / "runs" / finished_id
    ckpts_before = sorted(p.name for p in run_dir.glob("checkpoint_*"))
    assert ckpts_before, log1

    proc2 = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    log2 = proc2.stdout + proc2.stderr
    (tmp_path / "run1.log").write_text(log1)
    (tmp_path / "run2.log").write_text(log2)
    assert proc2.returncode == 0, log1 + "\n----\n" + log2
    assert "resuming smoke" in log2
    after = _result_lines(study_dir)
    assert after[f"trial_{finished_id}"] == before[f"trial_{finished_id}"]  # not run again
    assert f"start    {finished_id}" not in log2
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == ckpts_before
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "error"]]
    assert list(trials["config/loss/name"]) == ["mcce", "tce_stochastic"]
    assert len(after) == 2
    assert (study_dir / "report.md").is_file() and (study_dir / "plots" / "weights.png").is_file()
    # the report rebuilds from the Parquet files alone
    (study_dir / "report.md").unlink()
    rep = subprocess.run([sys.executable, "-m", "tce_ray.results.report", str(study_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "Fairness criteria" in (study_dir / "report.md").read_text()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_dashboard_flag_prints_url_and_enables_train_tab(tmp_path):
    code = (
        "import os, ray\n"
        "from tce_ray.train.ray_env import ensure_ray\n"
        "ensure_ray(None, True)\n"
        "print('STATE', os.environ.get('RAY_TRAIN_ENABLE_STATE_TRACKING'))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_STATE_TRACKING")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr[-3000:]
    assert "auth_token" in proc.stdout
    assert "STATE 1" in proc.stdout


def test_asha_scheduler_from_config():
    from tce_ray.study.config import parse_config
    from tce_ray.study.runner import build_scheduler

    cfg = parse_config(dict(TINY, name="a", train=dict(TINY["train"], steps=10, eval_every=3),
                            search={"num_samples": 2}, scheduler={"asha": {"metric": "iou_std", "grace_period": 2}}))
    sched = build_scheduler(cfg, {"worst_iou": "max", "iou_std": "min"})
    assert sched._metric == "iou_std" and sched._mode == "min"
    assert sched._max_t == 4  # reports at steps 3, 6, 9 and 10
    assert build_scheduler(parse_config(dict(TINY, name="b", search={"num_samples": 1})), {"miou": "max"}) is None


def test_resolve_objectives():
    from tce_ray.core.objectives import Objective, get_objective
    from tce_ray.study.runner import resolve_objectives

    objs = resolve_objectives(["worst_iou", Objective("neg_spread_test2", "max", _neg_spread)])
    assert [o.name for o in objs] == ["worst_iou", "neg_spread_test2"]
    assert get_objective("neg_spread_test2").mode == "max"  # registered on the fly
    with pytest.raises(ValueError, match="already registered"):
        resolve_objectives([Objective("worst_iou", "min", _neg_spread)])
    with pytest.raises(TypeError, match="register_objective"):
        resolve_objectives([lambda iou: 0.0])
    with pytest.raises(ValueError, match="distinct"):
        resolve_objectives(["miou", "miou"])
    with pytest.raises(ValueError, match="unknown objective"):
        resolve_objectives(["nope"])
