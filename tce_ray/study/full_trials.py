"""The trials a model-based sampler learns from in a flat search space (GP, NSGA-II).

Optuna's GPSampler and NSGAIISampler model only the *intersection* search space: the
parameters that every completed trial has. A study's space is conditional (``loss/t`` only
for the TCE losses, ``loss/focal_gamma`` only for focal, ...) and its first explicit
configuration is usually the guard's MCCE reference, which samples no parameter at all, so
the intersection was empty and both samplers were seeded random search, trial for trial
(benchmarks/RESULTS.md, issue 22). Two changes fix it:

- the study samples every searched parameter on every trial for these samplers (a *flat*
  space, ``SearchSpace(flat=True)``; a loss ignores the values it does not take);
- :class:`FullTrialsOnly` makes the sampler see only the completed trials that carry every
  parameter any completed trial carries: an explicit configuration outside the space (MCCE
  when ``search.losses`` does not list it, a value outside a range) is left out of the
  model instead of emptying it. It still runs, counts and enters the Pareto front.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["FullTrialsOnly", "FullParentsOnly", "full_trials", "shared_space"]


def full_trials(trials: Sequence[FrozenTrial], names: set[str] | None = None) -> list[FrozenTrial]:
    """The finished trials carrying every parameter in ``names`` (default: every parameter
    any finished trial of ``trials`` carries); unfinished trials are kept as they are."""
    finished = [t for t in trials if t.state.is_finished()]
    if names is None:
        names = set().union(*(t.params.keys() for t in finished)) if finished else set()
    return [t for t in trials if not t.state.is_finished() or names <= t.params.keys()]


def shared_space(trials: Sequence[FrozenTrial]) -> dict[str, BaseDistribution]:
    """The parameters (with their distributions) that all of ``trials`` share, sorted by
    name; a parameter whose distribution differs between trials is left out."""
    space: dict[str, BaseDistribution] | None = None
    for t in trials:
        if space is None:
            space = dict(t.distributions)
        else:
            space = {k: d for k, d in space.items() if t.distributions.get(k) == d}
    return dict(sorted((space or {}).items()))


class _StudyView:
    """A study whose ``_get_trials`` lists only :func:`full_trials` (with ``names``)."""

    def __init__(self, study: optuna.Study, names: set[str] | None):
        self._study, self._names = study, names

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return full_trials(self._study._get_trials(*args, **kwargs), self._names)

    def get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return full_trials(self._study.get_trials(*args, **kwargs), self._names)


class _FullSpace:
    """Infers the relative search space from the trials :func:`full_trials` keeps."""

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
        return {k: d for k, d in shared_space(full_trials(done)).items() if not d.single()}


class FullTrialsOnly(_FullSpace):
    """Mixin for an Optuna sampler that models the intersection search space (GPSampler):
    it infers the space from, and samples with, only the trials :func:`full_trials` keeps."""

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        view: Any = _StudyView(study, set(search_space))
        return super().sample_relative(view, trial, search_space)  # type: ignore[misc]


class FullParentsOnly(_FullSpace):
    """Mixin for NSGA-II: the space of :class:`FullTrialsOnly`, and parents drawn only from
    the trials carrying all of it (Optuna's generations, numbered by trial, are kept)."""

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        ga: Any = self
        parents = full_trials(ga.get_parent_population(study, ga.get_trial_generation(study, trial)), set(search_space))
        if len(parents) < 2:
            return {}
        return ga._child_generation_strategy(study, search_space, parents)
