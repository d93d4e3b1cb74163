"""Issue 22: GP and NSGA-II see a flat space and learn only from trials carrying every parameter.

Before the fix the MCCE reference configuration (no parameter) and the conditional space
emptied Optuna's intersection search space, and both samplers were random search.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tce_ray.study.config import parse_config
from tce_ray.study.full_trials import full_trials, shared_space
from tce_ray.study.search_space import SearchSpace, build_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAME = CategoricalDistribution(["focal", "tce_class"])
T = FloatDistribution(0.1, 10.0, log=True)
G = FloatDistribution(0.5, 5.0)


def _trial(params: dict, dists: dict, state=TrialState.COMPLETE):
    return create_trial(params=params, distributions=dists, values=[0.1, 0.2] if state == TrialState.COMPLETE else None,
                        state=state)


def test_full_trials_keep_the_trials_with_every_parameter():
    ref = _trial({}, {})  # the MCCE reference: no parameter
    full = _trial({"loss/name": "focal", "loss/t": 1.0, "loss/focal_gamma": 2.0}, {"loss/name": NAME, "loss/t": T, "loss/focal_gamma": G})
    part = _trial({"loss/name": "tce_class", "loss/t": 1.0}, {"loss/name": NAME, "loss/t": T})
    running = _trial({}, {}, state=TrialState.RUNNING)
    assert full_trials([ref, full, part, running]) == [full, running]
    assert full_trials([ref, full, part], {"loss/name", "loss/t"}) == [full, part]
    assert full_trials([]) == []


def test_shared_space_is_the_intersection_by_name_and_distribution():
    a = _trial({"loss/name": "focal", "loss/t": 1.0}, {"loss/name": NAME, "loss/t": T})
    b = _trial({"loss/name": "focal", "loss/t": 1.0}, {"loss/name": NAME, "loss/t": FloatDistribution(0.1, 5.0, log=True)})
    assert shared_space([a]) == {"loss/name": NAME, "loss/t": T}
    assert shared_space([a, b]) == {"loss/name": NAME}  # t's range differs: left out
    assert shared_space([]) == {}


SEARCH = {"losses": ["focal", "tce_class", "tce_stochastic"], "num_samples": 12, "seed": 0,
          "t": {"low": 0.1, "high": 5.0}, "gamma": {"low": 0.05, "high": 0.9}, "focal_gamma": {"low": 0.5, "high": 4.0},
          "tilt_signal": ["batch", "class"], "configurations": [{"name": "mcce"}, {"name": "focal", "focal_gamma": 2.0}]}


def _cfg(sampler: str, **extra):
    return parse_config({"name": "s", "loss": {"name": "mcce", "t": 1.0, "gamma": 0.1}, "objectives": ["worst_iou", "iou_std"],
                         "search": {**SEARCH, "sampler": sampler, **extra}})


def _run(cfg, n: int):
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=build_sampler(cfg.search, 2))
    space.enqueue(study)
    outs = []
    for i in range(n):
        trial = study.ask()
        out = space(trial)
        trial.set_constraint("front_guard", -1.0)
        study.tell(trial, [0.01 * i, 0.3])
        outs.append(out)
    return study, outs


def test_flat_space_asks_every_parameter_but_runs_only_the_losses_own():
    cfg = _cfg("gp")
    assert SearchSpace.from_config(cfg).flat and not SearchSpace.from_config(_cfg("tpe_scaled")).flat
    study, outs = _run(cfg, 5)
    every = {"loss/name", "loss/t", "loss/gamma", "loss/focal_gamma", "loss/tilt_signal"}
    assert study.trials[0].params == {}  # MCCE: outside the space, asks nothing
    assert study.trials[1].params["loss/focal_gamma"] == 2.0 and set(study.trials[1].params) == every
    for t, out in zip(study.trials[2:], outs[2:]):
        assert set(t.params) == every
        if out["loss/name"] == "focal":
            assert "loss/t" not in out and "loss/gamma" not in out  # asked, recorded, not run


@pytest.mark.parametrize("sampler", ["gp", "nsga2"])
def test_the_model_sees_the_loss_and_its_settings(sampler):
    cfg = _cfg(sampler, population_size=3)
    study, _ = _run(cfg, 6)
    sampler_obj = study.sampler
    space = sampler_obj.infer_relative_search_space(study, study.trials[-1])
    assert {"loss/name", "loss/t", "loss/focal_gamma"} <= set(space)  # before the fix: {}


def test_nsga2_children_come_from_full_parents():
    cfg = _cfg("nsga2", population_size=3, num_samples=10)
    study, _ = _run(cfg, 12)
    later = study.trials[6:]  # from the third generation on, children are bred
    sampler = study.sampler
    space = sampler.infer_relative_search_space(study, later[-1])
    assert space
    trial = study.ask()
    assert sampler.sample_relative(study, study._storage.get_trial(trial._trial_id), space)


@pytest.mark.parametrize("sampler", ["gp", "nsga2"])
def test_the_trial_configs_tune_builds_hold_only_what_the_loss_runs(sampler, tmp_path):
    """Through Ray Tune's own ``OptunaSearch.suggest`` (which merges every value asked
    through its wrapper into the trial's config): the flat space's extra values must not reach
    the config. Before the fix, the shipped synthetic study's class-tilt configurations got a
    sampled ``sampling.image_power`` and failed validation at the trial's start."""
    from tce_ray.core.objectives import resolve_objectives
    from tce_ray.study.optuna_store import make_searcher
    from tce_ray.study.search_space import trial_run

    search = {"sampler": sampler, "num_samples": 6, "seed": 0, "losses": ["tce_stochastic", "tce_class"],
              "t": {"low": 0.1, "high": 2.0, "log": True}, "tilt_signal": ["batch", "class"],
              "image_power": {"low": 0.0, "high": 2.0}, "class_crop": [False, True],
              "configurations": [{"name": "mcce"}, {"name": "tce_class", "t": 1.0},
                                 {"name": "tce_stochastic", "t": 0.5}]}
    cfg = parse_config({"name": "flat", "storage": str(tmp_path / "res"), "loss": {"name": "mcce", "t": 1.0},
                        "objectives": ["worst_iou", "iou_std"], "search": search})
    searcher, _ = make_searcher(cfg, resolve_objectives(cfg.run.objectives))
    searcher.set_search_properties(None, None, {})
    for i in range(9):
        config = searcher.suggest(f"t{i}")
        name = config["loss"]["name"]
        if name != "tce_stochastic":
            assert "sampling" not in config, (i, config)
            assert "tilt_signal" not in config["loss"], (i, config)
        if i == 1:
            assert config["loss"] == {"name": "tce_class", "t": 1.0}, config
        trial_run(cfg.run, config)  # validates: raises on a setting the loss does not take
        searcher.on_trial_complete(f"t{i}", {"worst_iou": 0.1 * i, "iou_std": 0.3 - 0.01 * i, "miou": 0.5, "step": 4})
    assert all(len(t.params) >= 4 for t in searcher._ot_study.trials[3:])  # still asked: the model sees them
