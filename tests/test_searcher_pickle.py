"""The study's searcher pickles exactly as Ray Tune pickles it (no Ray instance needed).

Tune writes the searcher into ``tuner.pkl`` when the ``Tuner`` is built (``ray.cloudpickle``
of ``TunerInternal.__getstate__()``, the ``TuneConfig`` and its ``search_alg`` inside) and
into each experiment checkpoint (``Searcher.save``: plain ``pickle`` of its ``__dict__``).
Optuna 5.1 put a ``threading.Lock`` in ``NSGAIISampler`` and every study died in
``tune.Tuner``: these tests fail fast on the next such change.
"""

from __future__ import annotations

import pickle
import threading

import optuna
import pytest
import ray.cloudpickle

from tce_ray.study import samplers
from tce_ray.study.config import parse_config
from tce_ray.core.objectives import resolve_objectives
from tce_ray.study.optuna_store import make_searcher
from tce_ray.study.search_space import build_sampler

SAMPLER_KINDS = ["nsga2", "tpe", "tpe_scaled", "gp", "random", "auto"]


def _cfg(tmp_path, sampler: str | None, storage: str | None = None, **extra):
    search = {"num_samples": 3, "seed": 0, "losses": ["mcce", "tce_class"], "t": {"low": 0.1, "high": 2.0, "log": True},
              "configurations": [{"name": "mcce"}]}
    if sampler:
        search["sampler"] = sampler
    return parse_config({"name": "pk", "storage": storage or str(tmp_path / "res"), "loss": {"name": "mcce", "t": 1.0},
                         "objectives": ["worst_iou", "iou_std"], "search": search, **extra})


@pytest.mark.parametrize("kind", SAMPLER_KINDS)
def test_every_sampler_the_study_builds_pickles(kind, tmp_path):
    s = build_sampler(_cfg(tmp_path, kind).search, 2)
    clone = pickle.loads(pickle.dumps(s))
    assert type(clone) is type(s)
    clone2 = ray.cloudpickle.loads(ray.cloudpickle.dumps(s))
    assert type(clone2) is type(s)


def test_a_lock_is_dropped_on_pickling_and_made_again():
    s = samplers.NSGAIISampler(seed=0, population_size=4)
    s.__dict__["_extra_rlock"] = threading.RLock()
    s.__dict__["_extra_lock"] = threading.Lock()
    state = s.__getstate__()
    assert not any(isinstance(v, (type(threading.Lock()), type(threading.RLock()))) for v in state.values())
    clone = pickle.loads(pickle.dumps(s))
    assert isinstance(clone._extra_lock, type(threading.Lock()))
    assert isinstance(clone._extra_rlock, type(threading.RLock()))
    with clone._extra_lock, clone._extra_rlock:  # live locks, usable
        pass
    assert clone._extra_lock is not s._extra_lock


def test_the_genetic_sampler_keeps_optunas_system_attribute_keys():
    for attr in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
        if hasattr(optuna.samplers.NSGAIISampler, attr):
            assert getattr(samplers.NSGAIISampler, attr) == getattr(optuna.samplers.NSGAIISampler, attr)


def test_a_pickled_sampler_continues_the_same_sequence():
    """The clone draws what the original would have drawn (its RNG state travels)."""
    def draws(sampler, n=6):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        out = []
        for _ in range(n):
            tr = study.ask()
            x = tr.suggest_float("x", 0.0, 1.0)
            study.tell(tr, [x, 1 - x])
            out.append(x)
        return out

    a = samplers.NSGAIISampler(seed=3, population_size=2)
    b = pickle.loads(pickle.dumps(samplers.NSGAIISampler(seed=3, population_size=2)))
    assert draws(a) == draws(b)


def test_an_unpicklable_sampler_is_refused_with_the_fix():
    s = optuna.samplers.RandomSampler(seed=0)
    s.__dict__["_lock"] = threading.Lock()
    with pytest.raises(TypeError, match="LockFreePickling"):
        samplers.picklable(s)


@pytest.mark.parametrize("kind", SAMPLER_KINDS)
def test_the_searcher_pickles_as_the_tuner_and_its_checkpoints_do(kind, tmp_path):
    """``tuner.pkl`` (cloudpickle of the TuneConfig holding the searcher) and the searcher's
    experiment checkpoint (``save``/``restore``), after a trial has been suggested and told."""
    from ray import tune

    cfg = _cfg(tmp_path, kind)
    searcher, _ = make_searcher(cfg, resolve_objectives(cfg.run.objectives))
    tc = tune.TuneConfig(search_alg=searcher, num_samples=cfg.search.total_trials())
    blob = ray.cloudpickle.dumps({"_tune_config": tc})
    assert isinstance(ray.cloudpickle.loads(blob)["_tune_config"].search_alg, type(searcher))

    searcher.set_search_properties(None, None, {})
    config = searcher.suggest("t1")
    assert config is not None
    searcher.on_trial_complete("t1", {"worst_iou": 0.1, "iou_std": 0.2, "miou": 0.3, "step": 4})
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    fresh, _ = make_searcher(_cfg(tmp_path / "other", kind), resolve_objectives(cfg.run.objectives))
    fresh.restore(str(path))
    assert len(fresh._ot_study.trials) == len(searcher._ot_study.trials)
    assert fresh.suggest("t2") is not None  # the restored sampler still samples


def test_the_searcher_pickles_with_an_rdb_storage(tmp_path):
    cfg = _cfg(tmp_path, None, optuna_storage=f"sqlite:///{tmp_path / 'o.db'}")
    searcher, _ = make_searcher(cfg, resolve_objectives(cfg.run.objectives))
    ray.cloudpickle.loads(ray.cloudpickle.dumps(searcher))
    searcher.save(str(tmp_path / "s.pkl"))
