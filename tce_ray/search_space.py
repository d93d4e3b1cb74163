"""The define-by-run Optuna search space of a study (``OptunaSearch(space=SearchSpace(...))``).

Conditional structure (the parameters exist only where they act):

- ``loss/name``: categorical over ``search.losses`` (absent: the base loss, not sampled);
- ``loss/t``: the TCE losses (``tce_image``, ``tce_class``, ``tce_stochastic``) only.
  Log-uniform by default. With ``allow_negative`` and ``log``, Optuna samples
  ``search/t_abs`` (log-uniform) and ``search/t_negative`` (categorical) and ``loss/t`` is
  their signed product; with ``log: false`` it is uniform over [low, high];
- ``loss/gamma``, ``loss/tilt_signal``, ``loss/weight_floor``: ``tce_stochastic`` only;
- ``loss/focal_gamma``: ``focal`` only.

A searched setting given as a plain value is fixed (returned as a constant, not sampled);
a setting absent from ``search`` keeps the base run's value.

Explicit configurations (``search.configurations``) run first: :meth:`SearchSpace.enqueue`
puts one waiting Optuna trial per configuration (``study.enqueue_trial``) with the values
it gives as fixed parameters and its index in the trial's user attributes. With
``search.seeds`` it puts one per (configuration, seed) pair, seed by seed (see
``SearchSpec.configuration_runs``): the same fixed parameters are enqueued once per seed
(separate Optuna trials; the sampler sees repeated points with different values) and the
seed is a second user attribute. Sampled trials get the base ``train.seed`` (recorded as
the same user attribute when they start). For such a
trial the space suggests only those given values that lie inside the searched
distributions (so the sampler learns from them) and returns every other setting as a
constant (the configuration's value, else the base run's): nothing is sampled.

The function returns flat keys with ``/``; Ray Tune unflattens them, so a trial's config is
``{"loss": {"name": ..., "t": ...}, "study": {"configuration": i or -1, "number": n,
"seed": s}, "search": {...}}`` (``number``: the Optuna trial number, i.e. the order trials
were created; ``seed``: the trial's ``train.seed``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .config import ConfigurationSpec, FloatRange, SearchSpec, StudyConfig, TSearch
from .runspec import TCE_LOSSES, LossSpec

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = [
    "SearchSpace", "CONFIGURATION_ATTR", "SEED_ATTR", "relevant_settings", "loss_settings_from_config",
    "seed_from_config", "build_sampler",
]

CONFIGURATION_ATTR = "tce_configuration"
"""User attribute of an enqueued Optuna trial: the index of its explicit configuration."""
SEED_ATTR = "tce_seed"
"""User attribute of an Optuna trial: the ``train.seed`` it runs with."""

_STOCHASTIC_ONLY = ("gamma", "tilt_signal", "weight_floor")


def relevant_settings(loss_name: str) -> tuple[str, ...]:
    """The loss settings a loss uses (and that a trial may set or sample)."""
    if loss_name == "focal":
        return ("focal_gamma",)
    if loss_name == "tce_stochastic":
        return ("t",) + _STOCHASTIC_ONLY
    if loss_name in TCE_LOSSES:
        return ("t",)
    return ()


class SearchSpace:
    """Callable define-by-run space: ``space(trial) -> dict`` of constants (flat keys).

    Picklable (Tune checkpoints the searcher with it), holds only validated data.
    """

    def __init__(self, search: SearchSpec, base_loss: LossSpec, base_seed: int = 0):
        self.search = search
        self.base_loss = base_loss
        self.base_seed = int(base_seed)
        """The base run's ``train.seed``: the seed of sampled trials (and of explicit ones
        without ``search.seeds``)."""

    @classmethod
    def from_config(cls, config: StudyConfig) -> SearchSpace:
        return cls(config.search, config.loss, config.train.seed)

    # ---------------------------------------------------------------- define-by-run

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        index = trial.user_attrs.get(CONFIGURATION_ATTR)
        explicit: dict[str, Any] | None = None
        if index is not None:
            explicit = self.search.configurations[int(index)].settings()
        seed = trial.user_attrs.get(SEED_ATTR)
        if seed is None:  # a sampled trial (or one enqueued without seeds): the base seed
            seed = self.base_seed
            trial.set_user_attr(SEED_ATTR, seed)
        out: dict[str, Any] = {
            "study/configuration": -1 if index is None else int(index),
            "study/number": int(trial.number),  # Optuna's ask order: the trials' creation order
            "study/seed": int(seed),
        }

        name = self._loss_name(trial, explicit)
        out["loss/name"] = name
        for key in relevant_settings(name):
            out[f"loss/{key}"] = self._setting(trial, key, explicit)
        if explicit is not None:  # settings an explicit configuration gives beyond those
            for key, value in explicit.items():
                if key != "name" and f"loss/{key}" not in out:
                    out[f"loss/{key}"] = value
        return out

    def _loss_name(self, trial: optuna.Trial, explicit: dict[str, Any] | None) -> str:
        losses = self.search.losses
        if explicit is not None:
            name = explicit["name"]
            if losses is not None and len(losses) > 1 and name in losses:
                trial.suggest_categorical("loss/name", losses)  # the fixed (enqueued) value
            return name
        if losses is None:
            return self.base_loss.name
        if len(losses) == 1:
            return losses[0]
        return trial.suggest_categorical("loss/name", losses)

    def _setting(self, trial: optuna.Trial, key: str, explicit: dict[str, Any] | None) -> Any:
        spec = getattr(self.search, key)
        base = getattr(self.base_loss, key)
        if explicit is not None:
            if key not in explicit:
                return base
            value = explicit[key]
            if _contains(spec, value):
                return self._suggest(trial, key, spec)  # fixed by the enqueue
            return value
        if spec is None:
            return base
        if not _searched(spec):
            return spec[0] if isinstance(spec, list) else spec
        return self._suggest(trial, key, spec)

    @staticmethod
    def _suggest(trial: optuna.Trial, key: str, spec: Any) -> Any:
        if isinstance(spec, TSearch):
            if spec.allow_negative and spec.log:
                mag = trial.suggest_float("search/t_abs", spec.low, spec.high, log=True)
                negative = trial.suggest_categorical("search/t_negative", [False, True])
                return -mag if negative else mag
            return trial.suggest_float("loss/t", spec.low, spec.high, log=spec.log)
        if isinstance(spec, FloatRange):
            return trial.suggest_float(f"loss/{key}", spec.low, spec.high, log=spec.log)
        if isinstance(spec, list):
            return trial.suggest_categorical(f"loss/{key}", list(spec))
        raise TypeError(f"cannot sample {key} from {spec!r}")  # pragma: no cover

    # ---------------------------------------------------------------- configurations

    def configuration_params(self, index: int) -> dict[str, Any]:
        """The fixed Optuna parameters of explicit configuration ``index`` (the values it
        gives that lie inside the searched distributions)."""
        cfg: ConfigurationSpec = self.search.configurations[index]
        settings = cfg.settings()
        params: dict[str, Any] = {}
        losses = self.search.losses
        if losses is not None and len(losses) > 1 and cfg.name in losses:
            params["loss/name"] = cfg.name
        for key in relevant_settings(cfg.name):
            if key not in settings:
                continue
            spec, value = getattr(self.search, key), settings[key]
            if not _contains(spec, value):
                continue
            if isinstance(spec, TSearch) and spec.allow_negative and spec.log:
                params["search/t_abs"] = abs(float(value))
                params["search/t_negative"] = bool(value < 0)
            else:
                params[f"loss/{key}"] = value
        return params

    def enqueue(self, study: optuna.Study) -> None:
        """Queue the explicit configurations as the study's first trials: one per
        configuration, or with ``search.seeds`` one per (configuration, seed) pair, seed by
        seed. Each carries its configuration index and seed as user attributes."""
        for i, seed in self.search.configuration_runs():
            attrs = {CONFIGURATION_ATTR: i, SEED_ATTR: self.base_seed if seed is None else int(seed)}
            # identical params for each seed: skip_if_exists stays False (separate trials)
            study.enqueue_trial(self.configuration_params(i), user_attrs=attrs, skip_if_exists=False)

    def param_names(self) -> list[str]:
        """Every Optuna parameter this space may suggest (for progress/trial tables)."""
        names = []
        if self.search.losses is not None and len(self.search.losses) > 1:
            names.append("loss/name")
        for key in ("t", "gamma", "focal_gamma", "tilt_signal", "weight_floor"):
            spec = getattr(self.search, key)
            if spec is not None and _searched(spec):
                names.append(f"loss/{key}")
        return names


def _searched(spec: Any) -> bool:
    """A distribution (sampled), as opposed to a fixed value."""
    if isinstance(spec, (TSearch, FloatRange)):
        return True
    return isinstance(spec, list) and len(spec) > 1


def _contains(spec: Any, value: Any) -> bool:
    """Whether ``value`` lies in the searched distribution ``spec``."""
    if spec is None or not _searched(spec):
        return False
    if isinstance(spec, list):
        return value in spec
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    if not math.isfinite(v):
        return False
    if isinstance(spec, TSearch) and spec.allow_negative and spec.log:
        return spec.low <= abs(v) <= spec.high
    return spec.low <= v <= spec.high


def loss_settings_from_config(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The loss settings of a Tune trial config (``{"loss": {...}}`` or flat keys)."""
    if isinstance(trial_config.get("loss"), dict):
        return dict(trial_config["loss"])
    return {k.split("/", 1)[1]: v for k, v in trial_config.items() if k.startswith("loss/")}


def seed_from_config(trial_config: dict[str, Any]) -> int | None:
    """The ``train.seed`` of a Tune trial config (``{"study": {"seed": s}}`` or the flat
    ``study/seed``); None when it names none (the base run's seed applies)."""
    study = trial_config.get("study")
    seed = study.get("seed") if isinstance(study, dict) else trial_config.get("study/seed")
    return None if seed is None else int(seed)


def build_sampler(search: SearchSpec, num_objectives: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler: ``search.sampler`` or nsga2 (several objectives) / tpe (one).

    NSGA-II samples its first generation at random; with fewer trials than
    ``population_size`` it is a seeded random search, which is all a tiny study can do."""
    import optuna

    kind = search.sampler or ("nsga2" if num_objectives > 1 else "tpe")
    if kind == "nsga2":
        pop = search.population_size or min(50, max(2, search.total_trials() // 2))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=search.seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed)
    return optuna.samplers.RandomSampler(seed=search.seed)
