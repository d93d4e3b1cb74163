"""Optuna samplers that survive pickling: Tune pickles the searcher, sampler included.

Ray Tune writes the searcher twice: inside ``tuner.pkl`` when the ``Tuner`` is built
(``ray.cloudpickle``) and in every experiment checkpoint (``OptunaSearch.save``, plain
``pickle`` of its ``__dict__``). A sampler holding a live handle fails both. Optuna 5.1
gave the genetic samplers (``NSGAIISampler``, ``NSGAIIISampler``) a ``threading.Lock``
(``BaseGASampler._thread_lock``), and every study died in ``tune.Tuner`` with
``cannot pickle '_thread.lock' object``.

:class:`LockFreePickling` drops every ``threading.Lock``/``RLock`` held in the sampler's
attributes when it is pickled and makes a fresh one when it is unpickled (a lock guards
only in-process threads, so nothing is lost). The samplers here are Optuna's, with that
behaviour added; GP and NSGA-II also learn only from the trials that carry every
parameter (:mod:`tce_ray.study.full_trials`: the study gives them a flat space). The
genetic samplers keep Optuna's own system-attribute keys, so a study started with the
plain class resumes with these.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

from tce_ray.study.full_trials import FullParentsOnly, FullTrialsOnly

__all__ = ["LockFreePickling", "NSGAIISampler", "TPESampler", "RandomSampler", "GPSampler", "picklable"]

_LOCK_TYPES: dict[type, Any] = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}
_LOCK_MARK = "__tce_ray_lock__"


class LockFreePickling:
    """Mixin: pickles without the object's thread locks, re-creates them on unpickling."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key, value in state.items():
            for lock_type in _LOCK_TYPES:
                if isinstance(value, lock_type):
                    state[key] = (_LOCK_MARK, "rlock" if _LOCK_TYPES[lock_type] is threading.RLock else "lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for key, value in state.items():
            if isinstance(value, tuple) and len(value) == 2 and value[0] == _LOCK_MARK:
                state[key] = threading.RLock() if value[1] == "rlock" else threading.Lock()
        self.__dict__.update(state)


def _keep_optuna_keys(cls: type, base: type) -> type:
    """Optuna's genetic samplers name their study system attributes after the class
    (``__init_subclass__``): give the subclass the base class's names back."""
    for attr in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
        if hasattr(base, attr):
            setattr(cls, attr, getattr(base, attr))
    return cls


class NSGAIISampler(FullParentsOnly, LockFreePickling, optuna.samplers.NSGAIISampler):
    """``optuna.samplers.NSGAIISampler`` that Tune can pickle (see the module docstring) and
    that breeds from the trials carrying every parameter (``full_trials.FullParentsOnly``)."""


_keep_optuna_keys(NSGAIISampler, optuna.samplers.NSGAIISampler)


class TPESampler(LockFreePickling, optuna.samplers.TPESampler):
    """``optuna.samplers.TPESampler`` that Tune can pickle (see the module docstring)."""


class RandomSampler(LockFreePickling, optuna.samplers.RandomSampler):
    """``optuna.samplers.RandomSampler`` that Tune can pickle (see the module docstring)."""


class GPSampler(FullTrialsOnly, LockFreePickling, optuna.samplers.GPSampler):
    """``optuna.samplers.GPSampler`` that Tune can pickle (see the module docstring) and that
    models the trials carrying every parameter (``full_trials.FullTrialsOnly``)."""


def picklable(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """Checks that ``sampler`` pickles as Tune will pickle it; raises ``TypeError`` naming
    the sampler and the fix when it does not."""
    import pickle

    try:
        pickle.dumps(sampler)
    except Exception as exc:  # noqa: BLE001 - any failure is the same problem for Tune
        raise TypeError(
            f"the Optuna sampler {type(sampler).__name__} cannot be pickled ({exc}); Ray Tune pickles the "
            "searcher with its sampler: wrap the sampler class with tce_ray.study.samplers.LockFreePickling"
        ) from exc
    return sampler
