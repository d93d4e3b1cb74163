"""The define-by-run search space, checked with real Optuna trials (study.ask())."""

from __future__ import annotations

import math

import optuna
import pytest

from tce_ray.study.config import parse_config
from tce_ray.study.search_space import (
    CONFIGURATION_ATTR,
    SEED_ATTR,
    SearchSpace,
    sampler_kind,
    startup_trials,
    build_sampler,
    loss_settings_from_config,
    seed_from_config,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(search: dict, loss: dict | None = None, objectives=("worst_iou", "iou_std"), train: dict | None = None):
    return parse_config({"name": "s", "loss": loss or {"name": "mcce", "gamma": 0.2, "t": 0.7},
                         "objectives": list(objectives), "search": search, "train": train or {}})


def _study(cfg, seed=0):
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    space.enqueue(study)
    return space, study


def _ask(space, study):
    trial = study.ask()
    out = space(trial)
    return trial, out


ALL = {"losses": ["mcce", "focal", "tce_image", "tce_class", "tce_stochastic"], "num_samples": 60,
       "t": {"low": 0.05, "high": 5.0}, "gamma": {"low": 0.05, "high": 0.9}, "focal_gamma": {"low": 0.5, "high": 4.0},
       "tilt_signal": ["batch", "class"], "weight_floor": {"low": 0.0, "high": 0.5}}


def test_conditional_parameters_exist_only_where_they_act():
    space, study = _study(_cfg(ALL))
    expected = {
        "mcce": set(),
        "focal": {"loss/focal_gamma"},
        "tce_image": {"loss/t"},
        "tce_class": {"loss/t"},
        "tce_stochastic": {"loss/t", "loss/gamma", "loss/tilt_signal", "loss/weight_floor"},
    }
    seen = set()
    for _ in range(60):
        trial, out = _ask(space, study)
        name = out["loss/name"]
        seen.add(name)
        assert set(trial.params) == {"loss/name"} | expected[name]
        assert set(out) == {"study/configuration", "study/number", "study/seed", "loss/name"} | expected[name]
        assert out["study/number"] == trial.number
        assert out["study/configuration"] == -1
        assert out["study/seed"] == 0 and trial.user_attrs[SEED_ATTR] == 0  # the base train.seed
        if "loss/t" in out:
            assert 0.05 <= out["loss/t"] <= 5.0
            assert trial.distributions["loss/t"].log  # log-uniform by default
        if "loss/gamma" in out:
            assert 0.05 <= out["loss/gamma"] <= 0.9 and not trial.distributions["loss/gamma"].log
        if "loss/focal_gamma" in out:
            assert 0.5 <= out["loss/focal_gamma"] <= 4.0
        if "loss/weight_floor" in out:
            assert 0.0 <= out["loss/weight_floor"] <= 0.5
        study.tell(trial, [0.5, 0.1])
    assert seen == set(expected)


def test_negative_t_only_when_asked():
    space, study = _study(_cfg({"losses": ["tce_image"], "num_samples": 40,
                                "t": {"low": 0.1, "high": 2.0, "log": True, "allow_negative": True}}))
    ts = []
    for _ in range(40):
        trial, out = _ask(space, study)
        assert set(trial.params) == {"search/t_abs", "search/t_negative"}
        t = out["loss/t"]
        assert 0.1 <= abs(t) <= 2.0
        assert (t < 0) == trial.params["search/t_negative"]
        ts.append(t)
        study.tell(trial, [0.0, 0.0])
    assert min(ts) < 0 < max(ts)
    # uniform range across zero
    space, study = _study(_cfg({"losses": ["tce_class"], "num_samples": 5,
                                "t": {"low": -1.0, "high": 1.0, "log": False, "allow_negative": True}}))
    trial, out = _ask(space, study)
    assert -1.0 <= out["loss/t"] <= 1.0 and not trial.distributions["loss/t"].log
    # default: never negative
    space, study = _study(_cfg({"losses": ["tce_image"], "num_samples": 20, "t": {"low": 0.01, "high": 1.0}}))
    for _ in range(20):
        trial, out = _ask(space, study)
        assert out["loss/t"] > 0
        study.tell(trial, [0.0, 0.0])


def test_fixed_and_absent_settings():
    cfg = _cfg({"losses": ["tce_stochastic"], "num_samples": 3, "t": 0.25, "tilt_signal": "class",
                "gamma": {"low": 0.1, "high": 0.2}})
    space, study = _study(cfg)
    trial, out = _ask(space, study)
    assert set(trial.params) == {"loss/gamma"}  # only the range is sampled; one loss is no choice
    assert out["loss/name"] == "tce_stochastic"
    assert out["loss/t"] == 0.25 and out["loss/tilt_signal"] == "class"
    assert out["loss/weight_floor"] == 0.0  # absent from search: the base run's value
    # no losses list: the base loss, not sampled
    space, study = _study(_cfg({"num_samples": 1, "t": {"low": 0.1, "high": 1.0}}, loss={"name": "tce_image", "t": 3.0}))
    trial, out = _ask(space, study)
    assert out["loss/name"] == "tce_image" and set(trial.params) == {"loss/t"}


def test_configurations_run_first_then_sampled_ones():
    search = dict(ALL, num_samples=3, configurations=[
        {"name": "mcce"},
        {"name": "focal"},
        {"name": "tce_stochastic", "t": 0.1},
        {"name": "tce_stochastic", "t": 1},
        {"name": "tce_image", "t": 50.0},  # outside the searched t range: a constant
    ])
    cfg = _cfg(search, loss={"name": "mcce", "gamma": 0.2, "t": 0.7, "focal_gamma": 2.0})
    space, study = _study(cfg)
    outs = []
    for _ in range(8):
        trial, out = _ask(space, study)
        outs.append((trial, out))
        study.tell(trial, [0.1, 0.2])
    explicit = [o for _, o in outs[:5]]
    assert [o["study/configuration"] for o in explicit] == [0, 1, 2, 3, 4]
    assert explicit[0] == {"study/configuration": 0, "study/number": 0, "study/seed": 0, "loss/name": "mcce"}
    assert explicit[1]["loss/focal_gamma"] == 2.0  # not given: the base run's value, not sampled
    assert explicit[2]["loss/t"] == 0.1 and explicit[3]["loss/t"] == 1
    # unspecified stochastic settings come from the base run
    assert explicit[2]["loss/gamma"] == 0.2 and explicit[2]["loss/tilt_signal"] == "batch"
    assert explicit[4]["loss/t"] == 50.0
    t2 = outs[2][0]
    assert t2.user_attrs[CONFIGURATION_ATTR] == 2
    assert t2.params == {"loss/name": "tce_stochastic", "loss/t": 0.1}  # the sampler learns from them
    assert "loss/t" not in outs[4][0].params
    assert all(o["study/configuration"] == -1 for _, o in outs[5:])
    # every trial config becomes a valid RunSpec
    for _, o in outs:
        nested = {"loss": {k.split("/", 1)[1]: v for k, v in o.items() if k.startswith("loss/")}}
        run = cfg.run_for(loss_settings_from_config(nested))
        assert run.loss.name == o["loss/name"]
        if "loss/t" in o:
            assert math.isclose(run.loss.t, o["loss/t"])


def test_explicit_negative_t_maps_to_sign_params():
    cfg = _cfg({"losses": ["tce_image", "mcce"], "num_samples": 1,
                "t": {"low": 0.1, "high": 2.0, "allow_negative": True},
                "configurations": [{"name": "tce_image", "t": -0.5}]})
    space, study = _study(cfg)
    trial, out = _ask(space, study)
    assert out["loss/t"] == -0.5
    assert trial.params == {"loss/name": "tce_image", "search/t_abs": 0.5, "search/t_negative": True}


def test_build_sampler_defaults():
    two = _cfg({"num_samples": 4})
    auto = build_sampler(two.search, 2)  # auto, several objectives: scaled multivariate TPE
    assert isinstance(auto, optuna.samplers.TPESampler)
    assert auto._n_startup_trials == startup_trials(two.search.total_trials())
    assert auto._multivariate and auto._group
    nsga = _cfg({"num_samples": 4, "sampler": "nsga2"})
    assert isinstance(build_sampler(nsga.search, 2), optuna.samplers.NSGAIISampler)
    gp = _cfg({"num_samples": 4, "sampler": "gp"})
    assert isinstance(build_sampler(gp.search, 2), optuna.samplers.GPSampler)
    assert isinstance(build_sampler(two.search, 1), optuna.samplers.TPESampler)
    rnd = _cfg({"num_samples": 4, "sampler": "random"})
    assert isinstance(build_sampler(rnd.search, 2), optuna.samplers.RandomSampler)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_seed_same_samples(seed):
    cfg = _cfg(dict(ALL, num_samples=5, seed=seed))

    def draw():
        space = SearchSpace.from_config(cfg)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=build_sampler(cfg.search, 2))
        outs = []
        for _ in range(5):
            t = study.ask()
            outs.append(space(t))
            study.tell(t, [0.0, 0.0])
        return outs

    assert draw() == draw()


def test_configurations_times_seeds_are_enqueued_seed_by_seed():
    """3 configurations x seeds [3, 1, 7] = 9 enqueued trials (seed by seed, in the listed
    order), then the sampled ones with the base train.seed (5); NSGA-II, as the study uses."""
    confs = [{"name": "mcce"}, {"name": "tce_stochastic", "t": 0.1}, {"name": "tce_stochastic", "t": 0.1,
                                                                      "tilt_signal": "class"}]
    cfg = _cfg(dict(ALL, num_samples=2, seeds=[3, 1, 7], configurations=confs), train={"seed": 5})
    assert cfg.search.total_trials() == 11
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=build_sampler(cfg.search, 2))
    space.enqueue(study)
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 9
    outs = []
    for k in range(11):
        trial, out = _ask(space, study)
        outs.append((trial, out))
        study.tell(trial, [0.1 * k, 0.5])  # the same params told different values: separate trials
    expected = [(c, s) for s in (3, 1, 7) for c in (0, 1, 2)] + [(-1, 5), (-1, 5)]
    assert [(o["study/configuration"], o["study/seed"]) for _, o in outs] == expected
    assert [o["study/number"] for _, o in outs] == list(range(11))
    for trial, out in outs:
        assert trial.user_attrs[SEED_ATTR] == out["study/seed"]
        if out["study/configuration"] >= 0:
            assert trial.user_attrs[CONFIGURATION_ATTR] == out["study/configuration"]
        else:
            assert CONFIGURATION_ATTR not in trial.user_attrs
    # one configuration's trials share every setting and parameter, whatever the seed
    for c in range(3):
        same = [(t.params, {k: v for k, v in o.items() if k.startswith("loss/")})
                for t, o in outs if o["study/configuration"] == c]
        assert len(same) == 3 and all(x == same[0] for x in same)
    assert outs[1][0].params == {"loss/name": "tce_stochastic", "loss/t": 0.1}  # only the values it gives
    assert outs[2][1]["loss/tilt_signal"] == "class" and outs[2][0].params["loss/tilt_signal"] == "class"
    assert len(study.trials) == 11 and all(t.state.name == "COMPLETE" for t in study.trials)
    # the seed reaches the run: train.seed of the trial's RunSpec
    for _, out in outs:
        nested = {"loss": {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("loss/")},
                  "study": {"seed": out["study/seed"]}}
        run = cfg.run_for(loss_settings_from_config(nested), seed=seed_from_config(nested))
        assert run.train.seed == out["study/seed"]
    assert seed_from_config({"study/seed": 4}) == 4 and seed_from_config({"loss": {}}) is None


def test_without_seeds_every_explicit_trial_uses_the_base_seed():
    cfg = _cfg({"num_samples": 1, "configurations": [{"name": "mcce"}, {"name": "focal"}]}, train={"seed": 11})
    space, study = _study(cfg)
    assert len(study.trials) == 2
    outs = [_ask(space, study)[1] for _ in range(3)]
    assert [(o["study/configuration"], o["study/seed"]) for o in outs] == [(0, 11), (1, 11), (-1, 11)]


def test_startup_trials_scale_with_the_budget():
    # max(3, total // 5), by hand
    assert [startup_trials(n) for n in (1, 12, 14, 15, 20, 30, 100)] == [3, 3, 3, 3, 4, 6, 20]


def test_sampler_kind_resolves_auto():
    assert sampler_kind(_cfg({"num_samples": 1}).search, 2) == "tpe_scaled"
    assert sampler_kind(_cfg({"num_samples": 1}).search, 1) == "tpe"
    assert sampler_kind(_cfg({"num_samples": 1, "sampler": "auto"}).search, 2) == "tpe_scaled"
    assert sampler_kind(_cfg({"num_samples": 1, "sampler": "gp"}).search, 2) == "gp"


def test_an_unknown_sampler_is_refused():
    with pytest.raises(Exception, match="sampler"):
        _cfg({"num_samples": 1, "sampler": "cmaes"})
