"""The define-by-run Optuna search space of a study (``OptunaSearch(space=SearchSpace(...))``).

The parameters are the registry's (``tce_ray.core.registry.search_params()``): every searchable
loss setting, at ``loss.<setting>`` (Optuna name ``loss/<setting>``), and the parameters
registered at other ``section.field`` paths. Conditional structure (a parameter exists
only where it acts, ``SearchParam.applies``):

- ``loss/name``: categorical over ``search.losses`` (absent: the base loss, not sampled);
- a loss setting only for the losses whose registry entry takes it: ``loss/t`` for the TCE
  losses (``tce_image``, ``tce_class``, ``tce_stochastic``), ``loss/gamma``,
  ``loss/tilt_signal``, ``loss/weight_floor`` for ``tce_stochastic``, ``loss/focal_gamma``
  for ``focal``; ``loss/t``, ``loss/gamma``, ``loss/weight_floor``, ``loss/class_signal`` and
  ``loss/weight_cap`` for the class tilt on the loss (``class_tilt_ce``, ``class_tilt_lovasz``);
- ``t`` (the ``tilt`` kind) is log-uniform by default. With ``allow_negative`` and
  ``log``, Optuna samples ``search/t_abs`` (log-uniform) and ``search/t_negative``
  (categorical) and ``loss/t`` is their signed product; with ``log: false`` it is uniform
  over [low, high].

Parameters are asked in the registry's order (the sampled values depend on it).

Flat space (``flat``, on for the samplers in :data:`FLAT_SAMPLERS`: GP and NSGA-II, which
model only the parameters every trial has): after the loss's own parameters a trial also
asks every other searched parameter (in the same order); its value is recorded in Optuna
and ignored by the run (it is not in the trial's config). An explicit configuration asks
them too, except when it lies outside the space (a loss not in ``search.losses``, a value
outside a range): that trial lacks a parameter and the sampler leaves it out of its model
(:mod:`tce_ray.study.full_trials`).

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
were created; ``seed``: the trial's ``train.seed``), plus a section per other searched path
(``{"sampling": {...}}``). :func:`trial_run` turns it into the trial's :class:`RunSpec`
(one validated merge into the base run).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tce_ray.study.config import ConfigurationSpec, FloatRange, SearchSpec, StudyConfig, TSearch
from tce_ray.core.registry import SearchParam, get_loss, get_setting, search_params
from tce_ray.train.runspec import RunSpec

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = [
    "SearchSpace", "CONFIGURATION_ATTR", "SEED_ATTR", "relevant_settings", "loss_settings_from_config",
    "seed_from_config", "run_overrides", "trial_run", "build_sampler", "sampler_kind", "startup_trials",
    "SAMPLER_KINDS", "AUTO_MULTI_OBJECTIVE", "FLAT_SAMPLERS",
]

CONFIGURATION_ATTR = "tce_configuration"
"""User attribute of an enqueued Optuna trial: the index of its explicit configuration."""
SEED_ATTR = "tce_seed"
"""User attribute of an Optuna trial: the ``train.seed`` it runs with."""


def relevant_settings(loss_name: str) -> tuple[str, ...]:
    """The searchable loss settings a loss takes (that a trial may set or sample)."""
    return tuple(s for s in get_loss(loss_name).settings if get_setting(s).search is not None)


class _View(Mapping[str, Any]):
    """A trial's values by ``section.field`` path so far, over the base run's."""

    def __init__(self, base: RunSpec, values: Mapping[str, Any]):
        self._base, self.values = base, dict(values)

    def __getitem__(self, path: str) -> Any:
        if path in self.values:
            return self.values[path]
        section, _, field = path.partition(".")
        try:
            return getattr(getattr(self._base, section), field)
        except AttributeError:
            raise KeyError(path) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def _explicit_paths(cfg: ConfigurationSpec) -> dict[str, Any]:
    """An explicit configuration's values by path: ``loss.name``, ``loss.t``, ``sampling.x``."""
    return {f"{section}.{k}": v for section, values in cfg.overrides().items() for k, v in values.items()}


class SearchSpace:
    """Callable define-by-run space: ``space(trial) -> dict`` of constants (flat keys).

    Picklable (Tune checkpoints the searcher with it), holds only validated data; the
    parameters come from the registry when it is called.
    """

    def __init__(self, search: SearchSpec, base_run: RunSpec, *, flat: bool | None = None):
        self.search = search
        self.base_run = base_run
        self.flat = (search.sampler in FLAT_SAMPLERS) if flat is None else bool(flat)

    @property
    def base_seed(self) -> int:
        """The base run's ``train.seed``: the seed of sampled trials (and of explicit ones
        without ``search.seeds``)."""
        return int(self.base_run.train.seed)

    @classmethod
    def from_config(cls, config: StudyConfig) -> SearchSpace:
        return cls(config.search, config.run)

    # ---------------------------------------------------------------- define-by-run

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        index = trial.user_attrs.get(CONFIGURATION_ATTR)
        explicit = None if index is None else _explicit_paths(self.search.configurations[int(index)])
        seed = trial.user_attrs.get(SEED_ATTR)
        if seed is None:  # a sampled trial (or one enqueued without seeds): the base seed
            seed = self.base_seed
            trial.set_user_attr(SEED_ATTR, seed)
        out: dict[str, Any] = {
            "study/configuration": -1 if index is None else int(index),
            "study/number": int(trial.number),  # Optuna's ask order: the trials' creation order
            "study/seed": int(seed),
        }
        view = _View(self.base_run, {**(explicit or {}), "loss.name": self._loss_name(trial, explicit)})
        out["loss/name"] = view["loss.name"]
        for p in search_params():
            if p.used_by(view) and (p.section == "loss" or self._given(p, explicit)):
                view.values[p.path] = out[p.optuna_name] = self._value(trial, p, explicit, view)
        for path, value in (explicit or {}).items():  # what an explicit configuration gives beyond those
            name = path.replace(".", "/")
            if name not in out:
                out[name] = value
        if getattr(self, "flat", False):  # getattr: a space pickled before issue 22 has no flag
            self._ask_the_rest(trial, explicit)
        return out

    def _ask_the_rest(self, trial: optuna.Trial, explicit: dict[str, Any] | None) -> None:
        """Flat space: ask every searched parameter the trial has not asked (Optuna returns
        the value already asked for one it has); the run ignores them. They are asked on the
        Optuna trial itself, not through Ray Tune's capturing wrapper (``ot_trial``): Tune's
        ``OptunaSearch`` puts every value asked through the wrapper into the trial's config,
        and a ``sampling.image_power`` meant to be ignored failed a class-tilt trial's
        validation (and would have changed the trial's labels and groups)."""
        trial = getattr(trial, "ot_trial", trial)  # Ray's _OptunaTrialSuggestCaptor holds the real trial
        losses = self.search.losses
        if losses is not None and len(losses) > 1 and "loss/name" not in trial.params:
            return  # an explicit configuration outside the space: the model leaves it out
        for p in search_params():
            spec = self.search.param(p.key)
            if spec is None or not _searched(spec):
                continue
            if explicit is not None and p.path in explicit and not _contains(spec, explicit[p.path]):
                continue  # a given value outside the space: the trial leaves the model
            _suggest(trial, p, spec)

    def _given(self, p: SearchParam, explicit: dict[str, Any] | None) -> bool:
        """Whether the study searches or fixes ``p``, or the trial's configuration gives it. A
        parameter outside ``loss`` that is neither (``sampling.*``) keeps the base run's value
        without appearing in the trial's config (so its labels and groups stay as they were)."""
        return self.search.param(p.key) is not None or (explicit is not None and p.path in explicit)

    def _loss_name(self, trial: optuna.Trial, explicit: dict[str, Any] | None) -> str:
        losses = self.search.losses
        if explicit is not None:
            name = explicit["loss.name"]
            if losses is not None and len(losses) > 1 and name in losses:
                trial.suggest_categorical("loss/name", losses)  # the fixed (enqueued) value
            return name
        if losses is None:
            return self.base_run.loss.name
        if len(losses) == 1:
            return losses[0]
        return trial.suggest_categorical("loss/name", losses)

    def _value(self, trial: optuna.Trial, p: SearchParam, explicit: dict[str, Any] | None, view: _View) -> Any:
        spec = self.search.param(p.key)
        if explicit is not None:
            if p.path not in explicit:
                return view[p.path]  # the base run's
            value = explicit[p.path]
            if _contains(spec, value):
                return _suggest(trial, p, spec)  # fixed by the enqueue
            return value
        if spec is None:
            return view[p.path]
        if not _searched(spec):
            return spec[0] if isinstance(spec, list) else spec
        return _suggest(trial, p, spec)

    # ---------------------------------------------------------------- configurations

    def configuration_params(self, index: int) -> dict[str, Any]:
        """The fixed Optuna parameters of explicit configuration ``index`` (the values it
        gives that lie inside the searched distributions)."""
        cfg: ConfigurationSpec = self.search.configurations[index]
        explicit = _explicit_paths(cfg)
        params: dict[str, Any] = {}
        losses = self.search.losses
        if losses is not None and len(losses) > 1 and cfg.name in losses:
            params["loss/name"] = cfg.name
        view = _View(self.base_run, explicit)
        for p in search_params():
            if p.path not in explicit or not p.used_by(view):
                continue
            spec, value = self.search.param(p.key), explicit[p.path]
            if not _contains(spec, value):
                continue
            if isinstance(spec, TSearch) and spec.allow_negative and spec.log:
                params[f"search/{p.key}_abs"] = abs(float(value))
                params[f"search/{p.key}_negative"] = bool(value < 0)
            else:
                params[p.optuna_name] = value
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
        for p in search_params():
            spec = self.search.param(p.key)
            if spec is not None and _searched(spec):
                names.append(p.optuna_name)
        return names


def _suggest(trial: optuna.Trial, p: SearchParam, spec: Any) -> Any:
    if isinstance(spec, TSearch):
        if spec.allow_negative and spec.log:
            mag = trial.suggest_float(f"search/{p.key}_abs", spec.low, spec.high, log=True)
            negative = trial.suggest_categorical(f"search/{p.key}_negative", [False, True])
            return -mag if negative else mag
        return trial.suggest_float(p.optuna_name, spec.low, spec.high, log=spec.log)
    if isinstance(spec, FloatRange):
        return trial.suggest_float(p.optuna_name, spec.low, spec.high, log=spec.log)
    if isinstance(spec, list):
        return trial.suggest_categorical(p.optuna_name, list(spec))
    raise TypeError(f"cannot sample {p.key} from {spec!r}")  # pragma: no cover


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


def _nested(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune trial config with its flat ``section/key`` keys nested (Tune nests them itself)."""
    out: dict[str, Any] = {}
    for k, v in trial_config.items():
        if isinstance(k, str) and "/" in k:
            section, key = k.split("/", 1)
            out.setdefault(section, {})[key] = v
        else:
            out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def loss_settings_from_config(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """The loss settings of a Tune trial config (``{"loss": {...}}`` or flat keys)."""
    return dict(_nested(trial_config).get("loss", {}))


def seed_from_config(trial_config: Mapping[str, Any]) -> int | None:
    """The ``train.seed`` of a Tune trial config (``{"study": {"seed": s}}`` or the flat
    ``study/seed``); None when it names none (the base run's seed applies)."""
    study = _nested(trial_config).get("study")
    seed = study.get("seed") if isinstance(study, dict) else None
    return None if seed is None else int(seed)


def run_overrides(trial_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What a Tune trial config changes in the base run: its run sections (``loss``,
    ``sampling``, ...) and ``train.seed`` from ``study.seed``."""
    nested = _nested(trial_config)
    out = {k: dict(v) for k, v in nested.items() if k in RunSpec.model_fields and isinstance(v, dict)}
    seed = seed_from_config(nested)
    if seed is not None:
        out["train"] = {**out.get("train", {}), "seed": seed}
    return out


def trial_run(base_run: RunSpec, trial_config: Mapping[str, Any]) -> RunSpec:
    """The trial's run: the base run with the trial's values, one validated merge."""
    return base_run.merged(run_overrides(trial_config))


SAMPLER_KINDS = ("auto", "nsga2", "tpe", "tpe_scaled", "gp", "random")
"""The values of ``search.sampler``. ``auto`` (the default) is :data:`AUTO_MULTI_OBJECTIVE` for
several objectives and ``tpe`` for one."""
FLAT_SAMPLERS = ("gp", "nsga2")
"""The samplers that get the flat space (``SearchSpace.flat``): they model the intersection
search space, which the conditional space empties."""
AUTO_MULTI_OBJECTIVE = "tpe_scaled"
"""What ``search.sampler: auto`` runs for a multi-objective study: the winner of
``python -m benchmarks.bench_search`` (benchmarks/RESULTS.md, issue 22; docs/search.md)."""


def sampler_kind(search: SearchSpec, num_objectives: int) -> str:
    """The sampler a study runs: ``search.sampler``, with ``auto`` (or none) resolved."""
    kind = search.sampler or "auto"
    if kind == "auto":
        return AUTO_MULTI_OBJECTIVE if num_objectives > 1 else "tpe"
    return kind


def startup_trials(total_trials: int) -> int:
    """Random start-up trials of the model-based samplers scaled to the budget: ``max(3,
    total // 5)`` (Optuna's fixed 10 is the whole of a 12-trial study). The explicit
    configurations count: they are completed trials of the Optuna study when the sampled
    ones start."""
    return max(3, int(total_trials) // 5)


def build_sampler(search: SearchSpec, num_objectives: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of :func:`sampler_kind`. All read the front guard's constraint
    (``Trial.set_constraint``) except ``random``.

    - ``tpe_scaled``: multivariate TPE (``group=True`` for the conditional space), start-up
      :func:`startup_trials`; the default for several objectives (``auto``);
    - ``gp``: Optuna's GPSampler (log-EHVI with the constraint), start-up :func:`startup_trials`;
      it models only the parameters every trial has (the others are sampled at random);
    - ``nsga2``: NSGA-II, population ``search.population_size`` or min(50, max(2, total // 2));
      its first generation is random search;
    - ``tpe``: Optuna's TPE defaults (10 random start-up trials); ``random``."""
    from tce_ray.study import samplers

    kind, total, seed = sampler_kind(search, num_objectives), search.total_trials(), search.seed
    if kind == "nsga2":
        pop = search.population_size or min(50, max(2, total // 2))
        return samplers.picklable(samplers.NSGAIISampler(population_size=pop, seed=seed))
    if kind == "tpe":
        return samplers.picklable(samplers.TPESampler(seed=seed))
    if kind == "tpe_scaled":
        import warnings

        import optuna as _optuna

        with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna 5.1
            warnings.simplefilter("ignore", _optuna.exceptions.ExperimentalWarning)
            return samplers.picklable(samplers.TPESampler(
                seed=seed, n_startup_trials=startup_trials(total), multivariate=True, group=True))
    if kind == "gp":
        return samplers.picklable(samplers.GPSampler(
            seed=seed, n_startup_trials=startup_trials(total), warn_independent_sampling=False))
    return samplers.picklable(samplers.RandomSampler(seed=seed))
