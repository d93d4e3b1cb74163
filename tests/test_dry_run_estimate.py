"""Issue 22 item 3: ``--dry-run``'s wall time from a measurement of the study or its history.

The estimate's accuracy against real runs is a benchmark (``benchmarks/bench_dry_run.py``,
RESULTS.md section 7), not a timed test; these tests check the sources, the arithmetic by
hand, the fall-backs and the history read from a real run of the smoke study.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tce_ray.cli import main
from tce_ray.study.config import load_config
from tce_ray.study.plan import format_plan, make_plan, plan_time
from tce_ray.study.time_estimate import (
    RAY_START_SECONDS,
    TRIAL_STARTUP_SECONDS,
    estimate_study,
    format_duration,
    history_trial_seconds,
)
from tce_ray.train.step_timing import StepTiming, measure_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "studies" / "smoke.yaml")


def _trial(base: Path, name: str, reports: list[tuple[int, float]], file: str = "tce_history.jsonl") -> None:
    d = base / f"trial_{name}"
    d.mkdir(parents=True)
    (d / file).write_text("".join(json.dumps({"step": s, "time_total_s": t, "miou": 0.1}) + "\n" for s, t in reports))


def test_history_median_of_finished_trials_scaled_by_hand(tmp_path: Path) -> None:
    _trial(tmp_path, "a", [(2, 40.0), (4, 70.0)])
    _trial(tmp_path, "b", [(2, 45.0), (4, 90.0)], file="result.json")  # Tune's own file counts too
    _trial(tmp_path, "c", [(4, 110.0)])
    _trial(tmp_path, "d", [(2, 500.0)])  # unfinished (stopped at step 2 of 4): left out
    (tmp_path / "trial_e").mkdir()  # no reports yet
    sec, n = history_trial_seconds(str(tmp_path), 4)
    assert n == 3 and sec == pytest.approx(90.0)
    # at 8 steps: start-up fixed, the rest doubles -> 30 + 2 x (90 - 30)
    sec8, _ = history_trial_seconds(str(tmp_path), 8)
    assert sec8 == pytest.approx(TRIAL_STARTUP_SECONDS + 2 * (90.0 - TRIAL_STARTUP_SECONDS))


def test_history_of_trials_shorter_than_the_start_up_constant(tmp_path: Path) -> None:
    """A trial under the start-up constant is its own wall time at the same steps (CI: 27 s, not 30)."""
    _trial(tmp_path, "a", [(4, 27.0)])
    _trial(tmp_path, "b", [(4, 29.0)])
    sec, n = history_trial_seconds(str(tmp_path), 4)
    assert n == 2 and sec == pytest.approx(28.0)
    # all of it counts as start-up, so more steps add nothing
    sec8, _ = history_trial_seconds(str(tmp_path), 8)
    assert sec8 == pytest.approx(28.0)


def test_history_none_without_trials(tmp_path: Path) -> None:
    assert history_trial_seconds(str(tmp_path / "missing"), 4) is None
    assert history_trial_seconds(str(tmp_path), 4) is None
    (tmp_path / "trial_x").mkdir()
    (tmp_path / "trial_x" / "result.json").write_text("not json\n{\"step\": 0}\n")
    assert history_trial_seconds(str(tmp_path), 4) is None
    assert history_trial_seconds("s3://bucket/study", 4) is None


def test_step_seconds_estimate_by_hand(tmp_path: Path) -> None:
    cfg = load_config(SMOKE, overrides=["search.seeds=[0, 1, 2]", "search.num_samples=2"])
    est = estimate_study(cfg, total_trials=5, at_once=2, step_seconds=0.5)
    assert est.source == "--step-seconds" and est.rounds == 3
    assert est.seconds == pytest.approx(RAY_START_SECONDS + 3 * (TRIAL_STARTUP_SECONDS + 4 * 0.5))


def test_history_comes_before_the_measurement(tmp_path: Path) -> None:
    cfg = load_config(SMOKE).model_copy(update={"storage": str(tmp_path)})
    _trial(tmp_path / "smoke", "a", [(4, 50.0)])
    est = estimate_study(cfg, total_trials=2, at_once=1)
    assert est.source == "history" and est.seconds == pytest.approx(RAY_START_SECONDS + 2 * 50.0)
    assert "median of 1 finished trial" in est.lines[0]
    measured = estimate_study(cfg, total_trials=2, at_once=1, history=False)
    assert measured.source == "measured" and measured.timing is not None


def test_measured_estimate_is_its_parts(tmp_path: Path) -> None:
    cfg = load_config(SMOKE).model_copy(update={"storage": str(tmp_path)})
    est = estimate_study(cfg, total_trials=2, at_once=1, history=False, cpus=2)
    m = est.timing
    t = cfg.run.train
    # smoke: 2 workers x 1 CPU fill a 2-CPU machine and loader_workers is 0: compute + data
    step = m.compute_s + m.data_s
    evals = cfg.evaluations_per_run() * math.ceil(m.val_images / t.num_workers) * m.eval_image_s
    assert est.trial_seconds == pytest.approx(TRIAL_STARTUP_SECONDS + t.steps * step + evals)
    assert est.seconds == pytest.approx(RAY_START_SECONDS + 2 * est.trial_seconds)
    assert m.val_images == 16 and m.steps == 3 and m.compute_s > 0 and m.data_s > 0 and m.eval_image_s > 0


def test_step_rule_by_hand() -> None:
    m = StepTiming(compute_s=0.2, data_s=0.3, eval_image_s=0.0, steps=3, val_images=1, loss_timed="mcce", seconds=1.0)
    assert m.step_s(0, cpus_free=True) == pytest.approx(0.5)  # the loader runs in the worker
    assert m.step_s(2, cpus_free=False) == pytest.approx(0.5)  # loader processes share busy CPUs
    assert m.step_s(1, cpus_free=True) == pytest.approx(0.3)  # data-bound
    assert m.step_s(2, cpus_free=True) == pytest.approx(0.2)  # compute-bound


def test_measure_times_the_study_loss_or_cross_entropy() -> None:
    run = load_config(SMOKE, overrides=["loss.name=tce_stochastic"]).run
    m = measure_run(run, steps=2, warmup=0, eval_images=1)
    assert m.loss_timed == "mcce" and m.steps == 2 and math.isfinite(m.compute_s)
    tilted = measure_run(load_config(SMOKE, overrides=["loss.name=tce_image"]).run, steps=1, eval_images=0)
    assert tilted.loss_timed == "tce_image" and tilted.eval_image_s == 0.0
    with pytest.raises(ValueError, match="steps >= 1"):
        measure_run(run, steps=0)


def test_measurement_failure_falls_back_to_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tce_ray.train.step_timing as st

    def fail(run, **kw):  # noqa: ANN001, ANN003
        raise FileNotFoundError("no images under data.root")

    monkeypatch.setattr(st, "measure_run", fail)
    cfg = load_config(SMOKE).model_copy(update={"storage": str(tmp_path)})
    est = plan_time(cfg, make_plan(cfg))
    assert est.source == "table" and est.lines[0] == (
        "could not measure this study here (FileNotFoundError: no images under data.root)")


def test_format_duration() -> None:
    assert [format_duration(s) for s in (45, 600, 9000)] == ["45 s", "10 min", "2.5 h"]


def test_dry_run_prints_what_it_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([SMOKE, "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(source: measured)" in out and "measured here in" in out and "s compute +" in out
    assert main([SMOKE, "--dry-run", "--no-measure", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(source: table)" in out and "measured here" not in out
    _trial(tmp_path / "smoke", "a", [(4, 50.0)])
    assert main([SMOKE, "--dry-run", "--storage", str(tmp_path)]) == 0
    assert "(source: history)" in capsys.readouterr().out
    assert main([SMOKE, "--dry-run", "--no-history", "--no-measure", "--storage", str(tmp_path)]) == 0
    assert "(source: table)" in capsys.readouterr().out


def test_format_plan_gpu_study_is_not_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    cfg = load_config(str(ROOT / "studies" / "cityscapes_fairness.yaml"))
    text = format_plan(cfg, history=False)
    assert "(source: table)" in text and "measured here" not in text


@pytest.mark.ray
def test_history_of_a_real_smoke_run(smoke) -> None:
    """The history read back from a real run: the median of its trials' own wall times."""
    h = smoke["result"].history
    last = h.sort_values("step").groupby("trial_id").tail(1)
    walls = sorted(float(x) for x in last["time_total_s"])
    assert len(walls) == 2 and list(last["step"]) == [4, 4], last[["trial_id", "step", "time_total_s"]]
    sec, n = history_trial_seconds(str(smoke["dir"]), 4)
    assert n == 2 and sec == pytest.approx(sum(walls) / 2, rel=1e-3), (sec, n, walls)
    cfg = load_config(SMOKE).model_copy(update={"storage": str(smoke["dir"].parent)})
    est = estimate_study(cfg, total_trials=2, at_once=1)
    assert est.source == "history" and est.seconds == pytest.approx(RAY_START_SECONDS + 2 * sec)
