"""The real objective of the sampler benchmark (``bench_search --objective real``): trials trained
in this process from the study's own trial configs, deterministic (so the benchmark may cache
them), different per setting, and a study on it that starts with the explicit configurations."""

from __future__ import annotations

import math

import pytest

optuna = pytest.importorskip("optuna")

from benchmarks.bench_search_surrogate import (  # noqa: E402
    CONFIGURATIONS,
    CachedRealObjective,
    first_configuration,
    real_sections,
    run_study,
)
from benchmarks.search_real_trial import RealTrials  # noqa: E402


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench-real")
    return work, real_sections(work, steps=3, train_images=16, val_images=4)


def _config(sections, loss: dict) -> dict:
    base = first_configuration(sections)
    return {**base, **{f"loss/{k}": v for k, v in loss.items()}}


def test_trials_are_real_deterministic_and_differ_by_setting(sections):
    from benchmarks.bench_search_surrogate import study_config

    work, sec = sections
    trials = RealTrials(study_config("random", 12, 0, sec), work / "cache")
    mcce = trials(first_configuration(sec))
    assert set(mcce) == {"miou", "worst_iou", "iou_std", "train_loss"}
    assert 0.0 <= mcce["worst_iou"] <= mcce["miou"] <= 1.0 and 0.0 <= mcce["iou_std"] <= 0.5
    assert math.isfinite(mcce["train_loss"]) and mcce["train_loss"] > 0
    assert trials(first_configuration(sec)) == mcce  # one thread, train seed 0: the benchmark's cache relies on it
    focal = trials(_config(sec, {"name": "focal", "focal_gamma": 4.0}))
    assert focal["train_loss"] < mcce["train_loss"]  # focal down-weights the easy pixels: a smaller loss value, same model
    stochastic = _config(sec, {"name": "tce_stochastic", "t": 2.0, "gamma": 0.5, "tilt_signal": "class",
                               "weight_floor": 0.1})
    stochastic.update({"sampling/image_power": 1.0, "sampling/class_crop": True})
    s = trials(stochastic)
    assert 0.0 <= s["worst_iou"] <= s["miou"] <= 1.0 and s != mcce


def test_bad_trial_config_is_refused(sections):
    from benchmarks.bench_search_surrogate import study_config

    work, sec = sections
    trials = RealTrials(study_config("random", 12, 0, sec), work / "cache")
    with pytest.raises(ValueError, match="no_such_loss"):
        trials(_config(sec, {"name": "no_such_loss"}))


def test_a_study_on_the_real_objective(sections):
    work, sec = sections
    objective = CachedRealObjective(sec, work)
    rows = run_study("auto", 6, 0, 2, objective, sec)
    assert len(rows) == 6
    assert [r["loss"] for r in rows[: len(CONFIGURATIONS)]] == [c["name"] for c in CONFIGURATIONS]
    assert objective.trained == len(objective.cache) <= 6
    again = run_study("auto", 6, 0, 2, objective, sec)  # same sampler, same seed: all looked up
    assert objective.trained == len(objective.cache) and [r["miou"] for r in again] == [r["miou"] for r in rows]
