"""Issue 24, item 1: a study killed inside ``tune.Tuner(...)`` (an empty ``tuner.pkl``, an
Optuna journal with its study) is no dead end: the next run starts it as a new study (one
line), ``--resume`` says to run it without ``--resume``, finished results are never moved."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tce_ray.study.failed_start import ASIDE_PREFIX, never_started, set_aside

ROOT = Path(__file__).resolve().parents[1]


def _leftover(exp: Path, *, journal: bool = True) -> None:
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")
    (exp / ".study.lock").write_text("")
    if journal:
        (exp / "optuna.journal").write_text('{"op_code": 0}\n')
    (exp / "runs" / ".class_index_cache").mkdir(parents=True)


def test_an_empty_tuner_pkl_and_a_journal_alone_are_a_start_that_died(tmp_path):
    exp = tmp_path / "s"
    _leftover(exp)
    assert never_started(str(exp))
    line = set_aside(str(exp))
    assert line is not None and "\n" not in line and "no Tune state" in line
    assert not (exp / "tuner.pkl").exists() and not (exp / "optuna.journal").exists()
    (aside,) = [d for d in exp.iterdir() if d.name.startswith(ASIDE_PREFIX)]
    assert sorted(p.name for p in aside.iterdir()) == ["optuna.journal", "tuner.pkl"]  # moved, not deleted
    assert (exp / ".study.lock").exists() and (exp / "runs" / ".class_index_cache").is_dir()
    assert not never_started(str(exp)) and set_aside(str(exp)) is None  # nothing left to set aside


def test_the_journal_alone_counts_too(tmp_path):
    exp = tmp_path / "s"
    exp.mkdir()
    (exp / "optuna.journal").write_text("")
    assert never_started(str(exp))


@pytest.mark.parametrize("extra", ["trial_abc", "experiment_state-2026-12-06_04-00-00.json", "trials.parquet",
                                   "runs/abc"])
def test_a_folder_with_any_trial_or_tune_state_is_never_touched(tmp_path, extra):
    exp = tmp_path / "s"
    _leftover(exp)
    target = exp / extra
    if "." in extra:
        target.write_text("{}")
    else:
        target.mkdir(parents=True)
    assert not never_started(str(exp))
    assert set_aside(str(exp)) is None
    assert (exp / "tuner.pkl").exists() and (exp / "optuna.journal").exists()


def test_an_empty_or_missing_folder_is_not_a_leftover(tmp_path):
    assert not never_started(str(tmp_path / "nothing"))
    assert not never_started(str(tmp_path))


def test_resume_of_a_start_that_died_says_run_it_without_resume(tmp_path):
    from tce_ray.study.config import parse_config
    from tce_ray.study.errors import StudyError
    from tce_ray.study.runner import _failed_start

    cfg = parse_config({"name": "s", "storage": str(tmp_path), "data": {"name": "synthetic"},
                        "search": {"num_samples": 1}})
    _leftover(tmp_path / "s")
    with pytest.raises(StudyError, match="without --resume"):
        _failed_start(cfg, resume=True)
    assert (tmp_path / "s" / "tuner.pkl").exists()  # a resume moves nothing
    _failed_start(cfg, resume=False)
    assert not (tmp_path / "s" / "tuner.pkl").exists()


STUDY = """
name: dies
storage: {storage}
data:
  name: synthetic
  options: {{num_images: 4, image_size: [32, 32], seed: 0}}
  loader_workers: 0
model: {{backbone: tiny}}
loss: {{name: mcce}}
optim: {{lr: 0.01}}
train: {{steps: 1, batch_size: 2, eval_every: 1, num_workers: 1, cpus_per_worker: 1, max_failures: 0}}
objectives: [worst_iou]
search:
  num_samples: 0
  configurations:
    - {{name: mcce}}
resources: {{max_concurrent_trials: 1}}
"""

# the CLI, killed (its whole process group, SIGKILL) inside tune.Tuner(...): tuner.pkl is open, still empty
KILL_IN_TUNER = """
import os, signal, sys
import ray.tune.impl.tuner_internal as ti
_real = ti.pickle  # Ray's cloudpickle
class _Pickle:
    def __getattr__(self, name):
        return getattr(_real, name)
    def dumps(self, obj, *a, **k):
        if isinstance(obj, dict):  # the Tuner's own state (the trainable is pickled first, to check it)
            os.killpg(0, signal.SIGKILL)
        return _real.dumps(obj, *a, **k)
ti.pickle = _Pickle()
from tce_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_study_killed_inside_the_tuner_runs_again(ray_session, tmp_path):
    import ray

    storage = tmp_path / "res"
    yaml = tmp_path / "dies.yaml"
    yaml.write_text(STUDY.format(storage=storage))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    args = [str(yaml), "--address", ray.get_runtime_context().gcs_address]
    killed = subprocess.run([sys.executable, "-c", KILL_IN_TUNER, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300, start_new_session=True)
    log = killed.stdout + killed.stderr
    exp = storage / "dies"
    assert killed.returncode == -signal.SIGKILL, log
    assert (exp / "tuner.pkl").stat().st_size == 0 and (exp / "optuna.journal").exists(), log
    resumed = subprocess.run([sys.executable, "-m", "tce_ray.study", *args, "--resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    log += resumed.stdout + resumed.stderr
    assert resumed.returncode == 1 and "without --resume" in resumed.stderr, log
    again = subprocess.run([sys.executable, "-m", "tce_ray.study", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=400)
    log += again.stdout + again.stderr
    assert again.returncode == 0, log
    assert re.search(r"note: .* holds no Tune state", again.stderr), log
    assert list(pd.read_parquet(exp / "trials.parquet")["status"]) == ["completed"], log
    (aside,) = [d for d in exp.iterdir() if d.name.startswith(ASIDE_PREFIX)]
    assert (aside / "tuner.pkl").exists()
