"""One smoke study (studies/smoke.yaml, ~90 s) and everything issue 10 says it leaves behind:

- the Optuna journal in <storage>/<name>/ loads with ``optuna.load_study``: its trials, the
  objectives named, per-class IoU and the settings as user attributes; ``--resume`` goes
  through it (no trial added twice);
- TensorBoard event files with ``iou/<class>`` in <study>/tensorboard/<label> (<id>)/, against the step;
- ``load_study(dir)`` gives back the tables run_study returned; ``callbacks=`` reach Tune;
- the progress lines: step progress with rate and ETA, the study's trials done/total with
  ETA and the best so far, where the logs are; plain text (no control codes);
- the README's Python blocks marked ``readme-test: after-smoke`` run against that study.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _journal_study(study_dir: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="smoke", storage=JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal"))))


def test_optuna_journal_has_named_objectives_and_user_attrs(smoke) -> None:
    trials = smoke["result"].trials
    ot = _journal_study(smoke["dir"])
    assert ot.metric_names == ["worst_iou", "iou_std"]
    assert [d.name for d in ot.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert ot.user_attrs["config"]["name"] == "smoke" and ot.user_attrs["tce_ray_version"]
    assert len(ot.trials) == len(trials) == 2
    by_tune = {tr.user_attrs["tune_trial_id"]: tr for tr in ot.trials}
    assert set(by_tune) == set(trials["trial_id"])
    iou_cols = [c for c in trials.columns if c.startswith("iou/")]
    assert len(iou_cols) >= 5
    for _, row in trials.iterrows():
        tr = by_tune[row["trial_id"]]
        assert tr.state.name == "COMPLETE", (tr.state, row["status"])
        assert tr.values == pytest.approx([row["worst_iou"], row["iou_std"]])
        for c in iou_cols:  # per-class IoU as user attributes, the values of trials.parquet
            if math.isfinite(row[c]):
                assert tr.user_attrs[c] == pytest.approx(row[c]), c
        assert tr.user_attrs["step"] == 4
        assert tr.user_attrs["settings"].split()[0] == row["config/loss/name"]
        assert tr.user_attrs["config"]["loss"]["name"] == row["config/loss/name"]
    assert by_tune[trials.loc[0, "trial_id"]].user_attrs["settings"] == "mcce seed=0"


def test_tensorboard_events_hold_per_class_iou(smoke) -> None:
    from tensorboardX.proto import event_pb2

    trials = smoke["result"].trials
    classes = [c for c in trials.columns if c.startswith("iou/")]
    for trial_id in trials["trial_id"]:
        files = list((smoke["dir"] / "tensorboard").glob(f"* ({trial_id})/events.out.tfevents.*"))
        assert files, f"no TensorBoard event file for trial {trial_id}"
        tags: dict[str, list[tuple[int, float]]] = {}
        for f in files:
            data = f.read_bytes()
            pos = 0
            while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
                (n,) = struct.unpack("<Q", data[pos:pos + 8])
                ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
                pos += 12 + n + 4
                for v in ev.summary.value:
                    tags.setdefault(v.tag, []).append((ev.step, v.simple_value))
        # every class with an IoU in some report is there (a NaN IoU, a class absent from
        # the evaluation images, is not written: Tune's TBX logger skips non-finite values)
        hist = smoke["result"].history
        hist = hist[hist["trial_id"] == trial_id].sort_values("step")
        seen = [c for c in classes if hist[c].notna().any()]
        assert len(seen) >= 5, seen
        for c in seen:
            assert f"ray/tune/{c}" in tags, (c, sorted(tags)[:20])
            values = [v for _, v in sorted(tags[f"ray/tune/{c}"])]
            assert values == pytest.approx(hist[c].dropna().tolist(), abs=1e-6), c
            assert [s for s, _ in sorted(tags[f"ray/tune/{c}"])] == hist.dropna(subset=[c])["step"].astype(int).tolist(), c
        for key in ("worst_iou", "iou_std", "miou", "loss"):
            assert f"ray/tune/{key}" in tags, key


def test_load_study_gives_back_the_tables(smoke) -> None:
    from tce_ray import load_study

    res, loaded = smoke["result"], load_study(smoke["dir"])
    assert loaded.name == "smoke" and loaded.objectives == {"worst_iou": "max", "iou_std": "min"}
    assert loaded.trials["trial_id"].tolist() == res.trials["trial_id"].tolist()
    np.testing.assert_allclose(loaded.trials["worst_iou"], res.trials["worst_iou"])
    assert len(loaded.history) == len(res.history) and len(loaded.pareto) == len(res.pareto)
    assert loaded.groups is not None and len(loaded.groups) == len(res.groups)
    assert loaded.report.endswith("report.md") and Path(loaded.report).is_file()
    assert set(loaded.files) >= {"trials", "history", "pareto", "groups", "report", "meta"}
    assert loaded.class_names == [c[4:] for c in res.trials.columns if c.startswith("iou/")]
    assert len(loaded.optuna_study().trials) == 2
    with pytest.raises(FileNotFoundError, match="not a study result folder"):
        load_study(smoke["base"])


def test_callbacks_reach_tune(smoke) -> None:
    rec, trials = smoke["recorder"], smoke["result"].trials
    assert sorted(rec.completed) == sorted(trials["trial_id"])
    assert sorted(s for t, s in rec.results if t == trials.loc[0, "trial_id"]) == [2, 4]


def test_progress_lines(smoke) -> None:
    out = smoke["stdout"]
    # plain lines: a log file reads like the terminal. Ray's own forwarded lines ("(raylet)
    # WARNING ...", coloured by Ray) may share the stream; ours carry no control codes
    ours = [ln for ln in out.split("\n") if re.match(r"^\[\s*\d+s\] |^study |^Optuna study: |^done: ", ln)]
    assert len(ours) >= 10 and not [ln for ln in ours if "\r" in ln or "\x1b" in ln]
    assert not [ln for ln in out.split("\n") if ("\r" in ln or "\x1b" in ln) and "(raylet)" not in ln and "pid=" not in ln]
    assert "logs: Ray workers' stdout/stderr in " in out and "/logs (worker-*.out" in out
    assert "optuna.journal (browse it: optuna-dashboard " in out
    assert "step 2/4 (50%)" in out and "step 4/4 (100%)" in out and ", ETA " in out
    assert "study    1/2 trials done (0 failed" in out and "study    2/2 trials done" in out
    assert "best so far: worst_iou=" in out and "iou_std=" in out
    trials = smoke["result"].trials
    best = trials["worst_iou"].max()
    assert f"worst_iou={best:.4f}" in out.split("study    2/2")[1]


def test_readme_blocks_after_smoke(smoke) -> None:
    """The README's ``readme-test: after-smoke`` blocks, run where results/smoke exists."""
    from test_readme_examples import readme_blocks

    blocks = [b for b in readme_blocks() if b.mode == "after-smoke"]
    assert blocks, "README.md and docs/*.md have no block marked readme-test: after-smoke"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    for b in blocks:
        done = subprocess.run([sys.executable, "-c", b.code], cwd=smoke["base"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{b.page}:{b.line}:\n{done.stderr[-3000:]}"


def test_resume_goes_through_the_journal(smoke) -> None:
    """A resumed finished study restores the searcher with its journal: nothing added twice."""
    from tce_ray.study.runner import run_study

    with contextlib.redirect_stdout(io.StringIO()):
        again = run_study(str(ROOT / "studies" / "smoke.yaml"), storage=smoke["dir"].parent, resume=True)
    assert sorted(again.trials["trial_id"]) == sorted(smoke["result"].trials["trial_id"])
    ot = _journal_study(smoke["dir"])
    assert len(ot.trials) == 2 and ot.metric_names == ["worst_iou", "iou_std"]


def test_load_study_imports_no_ray(smoke) -> None:
    code = ("import sys; from tce_ray import load_study; s = load_study(sys.argv[1]); "
            "assert len(s.optuna_study().trials) == 2; print('ray' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(smoke["dir"])], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]


def test_checkpoint_column_points_at_each_trials_last_checkpoint(smoke) -> None:
    import pandas as pd

    from tce_ray.train.checkpointing import CHECKPOINT_FILE

    stored = pd.read_parquet(smoke["dir"] / "trials.parquet")
    for _, row in stored.iterrows():
        ckpt = Path(row["checkpoint"])
        assert (ckpt / CHECKPOINT_FILE).is_file(), row["checkpoint"]
        assert ckpt.is_relative_to(smoke["dir"] / "runs" / row["trial_id"])
    assert stored["checkpoint"].tolist() == smoke["result"].trials["checkpoint"].tolist()


def test_each_trials_confusion_matrix_gives_its_iou(smoke) -> None:
    """The checkpoint's confusion.parquet: per-class IoU from it (tp / (row + col - tp),
    computed here) equals the trial's iou/<class> columns."""
    from tce_ray import load_study

    s = load_study(smoke["dir"])
    for _, row in s.trials.iterrows():
        cm = s.confusion(row["trial_id"])
        assert cm.index.tolist() == cm.columns.tolist() == s.class_names
        m = cm.to_numpy().astype(np.float64)
        assert m.sum() > 0
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        for k, name in enumerate(s.class_names):
            reported = row[f"iou/{name}"]
            if math.isfinite(reported):
                assert tp[k] / union[k] == pytest.approx(reported, abs=1e-9), name
            else:
                assert m[k].sum() == 0 or union[k] == 0, name  # absent from the evaluation images
    with pytest.raises(KeyError, match="no trial 'nope'"):
        s.confusion("nope")


def test_report_plots_curves_and_confusion(smoke) -> None:
    plots = smoke["dir"] / "plots"
    for name in ("curves.png", "confusion.png"):
        assert (plots / name).stat().st_size > 5000, name
        assert f"plots/{name}" in (smoke["dir"] / "report.md").read_text()
