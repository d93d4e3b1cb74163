"""The ``sampling:`` section: validation (RunSpec, study files) and a run that uses it."""

from __future__ import annotations

import math

import pytest
import torch

from tce_ray.config import ConfigError, parse_config
from tce_ray.runspec import RunSpec, SamplingSpec
from tce_ray.train import needs_class_index, start_weight_actor

from test_train import fit_local, tiny_run

torch.set_num_threads(1)


def test_defaults_are_the_paper():
    s = RunSpec().sampling
    assert (s.mode, s.image_power, s.class_crop, s.temperature) == ("default", 0.0, False, 0.01)


@pytest.mark.parametrize(
    "loss, sampling, match",
    [
        ("mcce", {"image_power": 1.0}, "act only when batches are drawn by class"),
        ("focal", {"class_crop": True}, "act only when batches are drawn by class"),
        ("tce_stochastic", {"mode": "rare_class"}, "rare_class draws classes from fixed probabilities"),
        ("mcce", {"mode": "rare_class", "temperature": 0.0}, "greater than 0"),
        ("mcce", {"mode": "rare_class", "image_power": -1}, "greater than or equal to 0"),
        ("mcce", {"mode": "rare_class", "image_power": float("inf")}, "finite"),
        ("mcce", {"mode": "rare_class", "image_power": float("nan")}, "image_power"),
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


STUDY = {
    "name": "s",
    "data": {"name": "synthetic"},
    "loss": {"name": "mcce"},
    "train": {"steps": 2},
}


def test_configurations_override_sampling_and_run_for_routes_it():
    cfg = parse_config({
        **STUDY,
        "search": {"configurations": [
            {"name": "mcce"},
            {"name": "tce_stochastic", "t": 1.0, "sampling": {"image_power": 1, "class_crop": True}},
            {"name": "mcce", "sampling": {"mode": "rare_class", "temperature": 0.05}},
        ]},
    })
    runs = [cfg.run_for(c.settings(), seed=3) for c in cfg.search.configurations]
    assert runs[0].sampling == SamplingSpec()
    assert runs[1].sampling == SamplingSpec(image_power=1.0, class_crop=True) and runs[1].loss.name == "tce_stochastic"
    assert runs[2].sampling == SamplingSpec(mode="rare_class", temperature=0.05) and runs[2].train.seed == 3


@pytest.mark.parametrize(
    "conf, match",
    [
        ({"name": "mcce", "sampling": {"image_power": 1}}, r"configurations\.0\.sampling: .*drawn by class"),
        ({"name": "tce_stochastic", "sampling": {"mode": "rare_class"}}, r"configurations\.0\.sampling: "),
        ({"name": "mcce", "sampling": {"mode": "rare_class", "temperature": -1}},
         r"configurations\.0\.sampling\.temperature"),
    ],
)
def test_study_file_errors_name_the_configuration(conf, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({**STUDY, "search": {"configurations": [conf]}})


def test_study_base_sampling_checked_for_sampled_trials():
    with pytest.raises(ConfigError, match="sampled trials' loss 'mcce'"):
        parse_config({**STUDY, "sampling": {"class_crop": True}, "search": {"num_samples": 1, "losses": ["mcce"]}})
    cfg = parse_config({**STUDY, "sampling": {"class_crop": True}, "search": {"num_samples": 1, "losses": ["tce_stochastic"]}})
    assert cfg.run_for({"name": "tce_stochastic"}).sampling.class_crop


# ----------------------------------------------------------------------------- runs (local mode)


def test_rare_class_sampling_run_with_class_crops(tmp_path):
    run = tiny_run("mcce", steps=4, eval_every=4)
    run.sampling = SamplingSpec(mode="rare_class", temperature=0.05, image_power=1.0, class_crop=True)
    run.data.crop_size = 24
    m = fit_local(run, "rare", tmp_path).metrics
    assert m["step"] == 4 and math.isfinite(m["loss"]) and not any(k.startswith("weights/") for k in m)
    assert m["drawn_class_missing"] == 0.0  # every crop holds its drawn class


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_stochastic_run_with_image_power_and_class_crop(ray_session, tmp_path):
    run = tiny_run("tce_stochastic", steps=4, eval_every=4)
    run.sampling = SamplingSpec(image_power=1.0, class_crop=True)
    run.loss.tilt_signal = "class"
    run.data.crop_size = 24
    actor = start_weight_actor(run, name="stoch-crop", storage_path=str(tmp_path))
    try:
        m = fit_local(run, "stoch-crop", tmp_path).metrics
    finally:
        ray_session.kill(actor)
    assert m["step"] == 4 and m["drawn_class_missing"] == 0.0
    assert m["tilt_reports_skipped"] == 0 and m["weight_updates"] == 4  # the class is always in the crop
