"""The ``sampling:`` section: validation (RunSpec, study files), the search space, and runs
that use it (rare-class sampling with MCCE; stochastic TCE with image_power and class crops)."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from tce_ray.study.config import ConfigError, parse_config
from tce_ray.train.runspec import RunSpec, SamplingSpec
from tce_ray.study.search_space import SearchSpace, trial_run
from tce_ray.train.trainer import needs_class_index, start_weight_actor

from test_train import fit_local, tiny_run

torch.set_num_threads(1)


def test_defaults_are_the_paper():
    s = RunSpec().sampling
    assert (s.mode, s.image_power, s.class_crop, s.temperature) == ("default", 0.0, False, 0.01)


@pytest.mark.parametrize(
    "loss, sampling, match",
    [
        ("mcce", {"image_power": 1.0}, r"sampling\.image_power: .*act only when batches are drawn by class"),
        ("focal", {"class_crop": True}, r"sampling\.class_crop: .*act only when batches are drawn by class"),
        ("tce_stochastic", {"mode": "rare_class"}, r"sampling\.mode: rare_class draws classes from fixed"),
        ("mcce", {"mode": "rare_class", "temperature": 0.0}, "greater than 0"),
        ("mcce", {"mode": "rare_class", "image_power": -1}, "greater than or equal to 0"),
        ("mcce", {"mode": "rare_class", "image_power": float("inf")}, "finite"),
        ("mcce", {"mode": "rare_class", "image_power": float("nan")}, "finite"),
        ("mcce", {"mode": "rare_class", "image_power": True}, "boolean"),
        ("mcce", {"mode": "often"}, "'default' or 'rare_class'"),
        ("mcce", {"mode": "rare_class", "power": 1}, "Extra inputs"),
    ],
)
def test_bad_sampling_settings(loss, sampling, match):
    with pytest.raises(ValueError, match=match):
        RunSpec.model_validate({"loss": {"name": loss}, "sampling": sampling})


def test_good_sampling_settings_and_class_index_need():
    r = RunSpec.model_validate({"loss": {"name": "mcce"}, "sampling": {"mode": "rare_class", "class_crop": True}})
    assert needs_class_index(r)
    assert not needs_class_index(RunSpec.model_validate({"loss": {"name": "mcce"}}))
    r2 = RunSpec.model_validate({"loss": {"name": "tce_stochastic"}, "sampling": {"image_power": 1, "class_crop": True}})
    assert r2.sampling == SamplingSpec(image_power=1.0, class_crop=True)
    assert RunSpec.model_validate(r2.model_dump(mode="json")) == r2  # JSON round trip (to the workers)


STUDY = {"name": "s", "data": {"name": "synthetic"}, "loss": {"name": "mcce"}, "train": {"steps": 2},
         "search": {"num_samples": 1}}


def test_configurations_override_sampling():
    cfg = parse_config({
        **STUDY,
        "search": {"configurations": [
            {"name": "mcce"},
            {"name": "tce_stochastic", "t": 1.0, "sampling": {"image_power": 1, "class_crop": True}},
            {"name": "mcce", "sampling": {"mode": "rare_class", "temperature": 0.05}},
        ]},
    })
    runs = [cfg.run.merged({**c.overrides(), "train": {"seed": 3}}) for c in cfg.search.configurations]
    assert runs[0].sampling == SamplingSpec()
    assert runs[1].sampling == SamplingSpec(image_power=1.0, class_crop=True) and runs[1].loss.name == "tce_stochastic"
    assert runs[2].sampling == SamplingSpec(mode="rare_class", temperature=0.05) and runs[2].train.seed == 3


@pytest.mark.parametrize(
    "conf, match",
    [
        ({"name": "mcce", "sampling": {"image_power": 1}}, r"configurations\.0.*drawn by class"),
        ({"name": "tce_stochastic", "sampling": {"mode": "rare_class"}}, r"configurations\.0.*fixed probabilities"),
        ({"name": "mcce", "sampling": {"mode": "rare_class", "temperature": -1}}, r"configurations\.0.*temperature"),
    ],
)
def test_study_file_errors_name_the_configuration(conf, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({**STUDY, "search": {"configurations": [conf]}})


def test_base_sampling_must_fit_the_base_loss():
    with pytest.raises(ConfigError, match=r"sampling\.class_crop"):
        parse_config({**STUDY, "sampling": {"class_crop": True}})
    cfg = parse_config({**STUDY, "loss": {"name": "tce_stochastic"}, "sampling": {"class_crop": True}})
    assert cfg.run.sampling.class_crop


def _sampled_runs(cfg, n=40):
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    runs = []
    for _ in range(n):
        trial = study.ask()
        run = trial_run(cfg.run, space(trial))
        runs.append((trial.params, run))
    return runs


def test_search_over_sampling_settings_only_where_they_act():
    cfg = parse_config({
        **STUDY,
        "search": {"num_samples": 40, "losses": ["mcce", "tce_stochastic"], "sampling_mode": ["default", "rare_class"],
                   "temperature": {"low": 0.01, "high": 0.5, "log": True}, "image_power": {"low": 0.0, "high": 2.0},
                   "class_crop": [False, True]},
    })
    seen = set()
    for params, run in _sampled_runs(cfg):
        stochastic = run.loss.name == "tce_stochastic"
        by_class = stochastic or run.sampling.mode == "rare_class"
        assert ("sampling/mode" in params) == (not stochastic)
        assert ("sampling/temperature" in params) == (not stochastic and run.sampling.mode == "rare_class")
        assert ("sampling/image_power" in params) == by_class and ("sampling/class_crop" in params) == by_class
        if not by_class:  # every sampled run is valid: the settings that do not act keep their defaults
            assert run.sampling.image_power == 0.0 and not run.sampling.class_crop
        else:
            assert 0.0 <= run.sampling.image_power <= 2.0
        seen.add((run.loss.name, run.sampling.mode, run.sampling.class_crop))
    assert {("tce_stochastic", "default", True), ("mcce", "rare_class", True), ("mcce", "default", False)} <= seen


def test_searched_sampling_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"search\.image_power"):
        parse_config({**STUDY, "search": {"num_samples": 1, "image_power": {"low": -1.0, "high": 2.0}}})
    with pytest.raises(ConfigError, match=r"search\.sampling_mode"):
        parse_config({**STUDY, "search": {"num_samples": 1, "sampling_mode": ["often"]}})


# ----------------------------------------------------------------------------- runs (local mode)


def test_rare_class_sampling_run_with_class_crops(tmp_path):
    run = tiny_run("mcce", steps=4, eval_every=4).merged(
        {"sampling": {"mode": "rare_class", "temperature": 0.05, "image_power": 1.0, "class_crop": True},
         "data": {"crop_size": 24}})
    m = fit_local(run, "rare", tmp_path).metrics
    assert m["step"] == 4 and math.isfinite(m["loss"]) and not any(k.startswith("weights/") for k in m)
    assert m["drawn_class_missing"] == 0.0  # every crop holds its drawn class


def test_random_crops_can_miss_the_drawn_class(tmp_path):
    run = tiny_run("mcce", steps=6, eval_every=6).merged(
        {"sampling": {"mode": "rare_class", "temperature": 0.01}, "data": {"crop_size": 8}})
    m = fit_local(run, "rare-random-crop", tmp_path).metrics
    assert 0.0 < m["drawn_class_missing"] <= 1.0  # 8x8 random crops of 48x64 images miss rare classes


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_stochastic_run_with_image_power_and_class_crop(ray_session, tmp_path):
    run = tiny_run("tce_stochastic", steps=4, eval_every=4).merged(
        {"sampling": {"image_power": 1.0, "class_crop": True}, "loss": {"tilt_signal": "class"},
         "data": {"crop_size": 24}})
    actor = start_weight_actor(run, name="stoch-crop", storage_path=str(tmp_path))
    try:
        m = fit_local(run, "stoch-crop", tmp_path).metrics
    finally:
        ray_session.kill(actor)
    assert m["step"] == 4 and m["drawn_class_missing"] == 0.0
    assert m["tilt_reports_skipped"] == 0 and m["weight_updates"] == 4  # the class is always in the crop
