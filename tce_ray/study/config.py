"""The study's YAML schema: validated before Ray starts, with key paths and line numbers.

A study file is a :class:`~tce_ray.train.runspec.RunSpec` (the base run: ``data``, ``model``,
``loss``, ``optim``, ``train``, ``objectives``) plus what turns it into a study
(``name``, ``storage``, ``search``, ``scheduler``, ``resources``, ``optuna_storage``,
``plugins``). :class:`StudyConfig` is composed the same way: ``cfg.run`` is the base
:class:`RunSpec` (the file keeps its sections at the top level) and the study's own
sections sit beside it::

    name: synthetic_fairness          # results go to <storage>/<name>/
    storage: ./results                # a local path or a URI Ray accepts (s3://...)
    data: {name: synthetic, options: {num_images: 64, image_size: [48, 64]}}
    loss: {name: mcce, gamma: 0.1}    # the base run; a trial overrides loss settings
    train: {steps: 40, batch_size: 4, num_workers: 2}
    objectives: [worst_iou, iou_std]  # registry names or "package.module:function"
    search:
      sampler: auto                   # auto | tpe_scaled | gp | nsga2 | tpe | random (auto:
                                      # tpe_scaled for several objectives, tpe for one)
      num_samples: 4                  # sampled trials, run AFTER the configurations
      seed: 0
      losses: [tce_image, tce_stochastic]   # categorical; absent: the base loss
      t: {low: 0.05, high: 5, log: true}    # or a fixed number; TCE losses only
      gamma: {low: 0.05, high: 1}           # or fixed; tce_stochastic only
      focal_gamma: {low: 0.5, high: 5}      # or fixed; focal only
      tilt_signal: [batch, class]           # or fixed; tce_stochastic only
      weight_floor: {low: 0, high: 0.5}     # or fixed; tce_stochastic only
      configurations:                       # explicit loss settings, evaluated first
        - {name: mcce}
        - {name: tce_stochastic, t: 0.1}
      seeds: [0, 1, 2]                      # optional: each configuration once per seed
    scheduler:                        # optional; see SchedulerSpec for the caveat
      asha: {metric: worst_iou, grace_period: 2}
    front_guard: {metric: miou, max_drop: 0.05, reference: 0}   # optional; see tce_ray.core.front_guard
    resources: {max_concurrent_trials: 1}
    optuna_storage: sqlite:///results/optuna.db   # optional
    tracking: {mlflow: {tracking_uri: "sqlite:///mlflow.db"}}   # optional: MLflow / W&B (tce_ray.study.tracking)
    plugins: [mypackage.losses]       # optional: modules imported first (they register
                                      # losses, data sets, objectives; see tce_ray.core.registry)

The loss names, the loss settings (``loss``, ``search.configurations``) and the searched
keys of ``search`` (``t``, ``gamma``, ... and those plugins register) come from
``tce_ray.core.registry``: each setting's type and bounds are stated once there.

Seeds: with ``search.seeds`` (a non-empty list of distinct ints in [0, 2**32)) every
explicit configuration runs once per seed, the seed replacing ``train.seed`` (model
initialisation, batch sampler, data loader) of that trial; the (configuration, seed)
pairs are queued seed by seed (every configuration with the first seed, then every
configuration with the second, ...) so an interrupted study still has whole rounds to
compare. Sampled trials use the base ``train.seed`` (one run each: the sampler explores
settings, the explicit configurations measure the spread over seeds).

String values may use ``${VAR}`` and ``${VAR:-default}``; an unset variable without a
default is an error naming it. Relative local paths (``storage``, ``data.root``) are taken
relative to the current working directory; ``data.root`` is checked and made absolute
during validation (``parse_config`` validates with the context ``check_paths``).

:func:`load_config` raises :class:`ConfigError` (one message: file, line, key path, what
is wrong and how to fix it). Validation imports neither Ray nor torch (the registries name
the classes they would build; nothing is built).
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from tce_ray.core.registry import SearchParam, get_search_param, list_losses, list_settings, search_params
from tce_ray.train.runspec import BUILTIN_STUDY, KeyPathError, RegistryShaped, RunSpec, is_uri, reject_bools
from tce_ray.study.errors import ConfigError
from tce_ray.study.overrides import apply_overrides
from tce_ray.study.tracking import TrackingSpec
from tce_ray.study.yaml_load import MAX_CHARS, YamlLoadError, load_yaml

MAX_SEED = 2**32
"""Seeds of ``search.seeds`` lie in [0, MAX_SEED) (what numpy and torch accept everywhere)."""

__all__ = [
    "ConfigError",
    "StudyConfig",
    "SearchSpec",
    "TSearch",
    "FloatRange",
    "ConfigurationSpec",
    "SchedulerSpec",
    "AshaSpec",
    "FrontGuardSpec",
    "ResourcesSpec",
    "load_config",
    "parse_config",
    "expand_env",
    "is_uri",
]

_PathError = KeyPathError



# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    """Unknown keys are errors, booleans are not numbers, floats must be finite (see runspec)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, v: Any, info: Any) -> Any:
        return reject_bools(cls, v, info)


class _Range(_Strict):
    """A range ``[low, high]`` searched uniform or log-uniform (``log``)."""

    low: float
    high: float
    log: bool = False

    def _ordered(self, fix: str) -> None:
        if not self.low < self.high:
            raise _PathError("high", f"high ({self.high}) must be above low ({self.low}); use a plain number to fix {fix}")


class FloatRange(_Range):
    """A float searched in [low, high], uniform or log-uniform."""

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        self._ordered("the value")
        if self.log and self.low <= 0:
            raise _PathError("low", f"a log range needs low > 0 (got {self.low}); set log: false for a uniform range")
        return self


class TSearch(_Range):
    """The tilt t (the ``tilt`` kind of search parameter): log-uniform over [low, high] by
    default. Negative t (robust tilting) only with ``allow_negative: true``: with ``log:
    true`` |t| is drawn log-uniform from [low, high] and its sign is a categorical
    parameter; with ``log: false`` t is uniform over [low, high] and low may be negative."""

    low: float = 0.01
    high: float = 10.0
    log: bool = True
    allow_negative: bool = False

    @model_validator(mode="after")
    def _check(self) -> TSearch:
        self._ordered("t")
        if self.log and self.low <= 0:
            raise _PathError("low", 
                f"log-uniform t needs low > 0 (got {self.low}); for negative t set allow_negative: true "
                "(|t| is then drawn from [low, high] with a random sign) or log: false"
            )
        if not self.log and self.low < 0 and not self.allow_negative:
            raise _PathError("low", f"low = {self.low} is negative: set allow_negative: true to search negative t")
        return self


def _other_sections() -> list[str]:
    """Run sections beside ``loss`` that hold search parameters (``sampling``): an explicit
    configuration may give their values too, nested under the section's name."""
    return sorted({p.section for p in search_params() if p.section != "loss"})


class ConfigurationSpec(RegistryShaped):
    """An explicit trial, evaluated before the sampled ones: a loss ``name`` and any loss
    settings, flat (``{name: tce_stochastic, t: 0.1}``), and values of other searchable
    sections nested (``sampling: {...}``). What it leaves out comes from the base run (it
    is not sampled)."""

    @classmethod
    def build_schema(cls) -> type[BaseModel]:
        fields: dict[str, Any] = {"name": (Literal[tuple(list_losses())], ...)}
        for s in list_settings():
            fields[s.name] = (s.annotation() | None, None)
        for section in _other_sections():
            fields[section] = (dict[str, Any] | None, None)
        return create_model("ConfigurationSpec", __base__=_Strict, **fields)

    def settings(self) -> dict[str, Any]:
        """The loss settings given (``name`` included)."""
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in _other_sections()}

    def overrides(self) -> dict[str, dict[str, Any]]:
        """What it changes in the base run: ``{"loss": {...}, <section>: {...}}``."""
        given = self.model_dump(exclude_none=True)
        return {"loss": self.settings(), **{k: given[k] for k in _other_sections() if k in given}}


def _check_range(v: Any, param: SearchParam) -> Any:
    """A searched range or a fixed value must lie in the parameter's bounds."""
    b = param.bounds
    if isinstance(v, FloatRange):
        for key in ("low", "high"):
            if not b.contains(getattr(v, key)):
                raise _PathError(key, f"{param.key} must lie in {b.interval()} (got {key} = {getattr(v, key)})")
    elif v is not None and not b.contains(v):
        raise _PathError("", f"{param.key} must lie in {b.interval()} (got {v})")
    return v


def _check_fixed_finite(v: Any, param: SearchParam) -> Any:
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        raise ValueError(f"{param.key} must be finite")
    return v


def _check_choices(v: Any, param: SearchParam) -> Any:
    if isinstance(v, list) and not v:
        raise ValueError(f"an empty list; give one or more of {_choices_text(param)} or leave it out")
    return v


def _choices_text(param: SearchParam) -> str:
    return ", ".join(repr(c) for c in param.choices)


def _param_annotation(p: SearchParam) -> Any:
    """How a search parameter is given in ``search:``: a fixed value or what is searched."""
    def bind(check: Any) -> AfterValidator:
        return AfterValidator(lambda v: check(v, p))

    if p.kind == "choice":
        one = Literal[p.choices]
        return Annotated[list[one] | one | None, bind(_check_choices)]
    if p.kind == "tilt":
        return Annotated[TSearch | float | None, bind(_check_fixed_finite)]
    return Annotated[FloatRange | float | None, bind(_check_range)]


class _SearchFields(_Strict):
    """The fixed keys of ``search`` (the searched ones come from the registry)."""

    sampler: Literal["auto", "nsga2", "tpe", "tpe_scaled", "gp", "random"] | None = None
    num_samples: int = Field(0, ge=0)
    seed: int = 0
    population_size: int | None = Field(None, ge=2)
    configurations: list[ConfigurationSpec] = Field(default_factory=list)
    seeds: list[int] | None = None

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_list(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, list):
            raise ValueError("expected a list of integer seeds such as [0, 1, 2]")
        if not v:
            raise ValueError("an empty list; give at least one seed (e.g. [0, 1, 2]) or leave seeds out")
        bad = [x for x in v if isinstance(x, bool) or not isinstance(x, int)]
        if bad:
            raise ValueError(f"seeds must be integers, got {bad[0]!r} in {v}")
        out_of_range = [x for x in v if not 0 <= x < MAX_SEED]
        if out_of_range:
            raise ValueError(f"seeds must lie in [0, 2**32), got {out_of_range[0]} in {v}")
        dups = sorted({x for x in v if v.count(x) > 1})
        if dups:
            raise ValueError(f"duplicate seeds {dups} in {v}; each seed runs every configuration once, list it once")
        return v

    @field_validator("losses", check_fields=False)
    @classmethod
    def _nonempty_losses(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("an empty list; name at least one loss or leave losses out")
            if len(set(v)) != len(v):
                raise ValueError(f"duplicate loss names in {v}")
        return v


class SearchSpec(RegistryShaped):
    """What Optuna samples (define-by-run, conditional on the loss; see search_space.py).

    Fixed keys: ``sampler`` (auto | tpe_scaled | gp | nsga2 | tpe | random; see
    ``search_space.build_sampler``), ``num_samples`` (sampled trials, run
    after the explicit ``configurations``), ``seed`` (the sampler's), ``population_size``
    (NSGA-II's; default min(50, max(2, total trials // 2))), ``losses`` (categorical;
    absent: the base loss), ``configurations``, ``seeds`` (run every explicit
    configuration once per seed, the seed replacing ``train.seed`` of that trial; sampled
    trials keep the base ``train.seed``). Then one key per search parameter of the
    registry (``t``, ``gamma``, ``focal_gamma``, ``tilt_signal``, ``weight_floor``, ...):
    a fixed value, a range ``{low, high[, log]}`` or, for a choice, a list."""

    if typing.TYPE_CHECKING:
        sampler: str | None
        num_samples: int
        seed: int
        population_size: int | None
        losses: list[str] | None
        configurations: list[ConfigurationSpec]
        seeds: list[int] | None

    @classmethod
    def build_schema(cls) -> type[BaseModel]:
        fields: dict[str, Any] = {"losses": (list[Literal[tuple(list_losses())]] | None, None)}
        for p in search_params():
            if p.key in _SearchFields.model_fields or p.key == "losses":
                raise ValueError(f"search parameter {p.key!r} clashes with the fixed key search.{p.key}")
            fields[p.key] = (_param_annotation(p), None)
        return create_model("SearchSpec", __base__=_SearchFields, **fields)

    def param(self, key: str) -> Any:
        """What ``search.<key>`` says (None: absent)."""
        return getattr(self, key, None)

    def configuration_runs(self) -> list[tuple[int, int | None]]:
        """The explicit trials in queue order: (configuration index, seed or None), seed by
        seed (every configuration with the first seed, then with the second, ...)."""
        seeds: list[int | None] = list(self.seeds) if self.seeds else [None]
        return [(i, s) for s in seeds for i in range(len(self.configurations))]

    def total_trials(self) -> int:
        """Explicit trials (configurations x seeds) plus the sampled ones."""
        return len(self.configuration_runs()) + self.num_samples


class AshaSpec(_Strict):
    """Asynchronous successive halving on ONE objective (its mode comes from the registry).

    Caveat (Ray Tune + Optuna): with several objectives, a trial ASHA stops early is told
    to Optuna as COMPLETE with its partial (early) values, which skews the Pareto front
    and the sampler. Prefer no scheduler for multi-objective studies."""

    metric: str
    grace_period: int = Field(1, ge=1)
    """Evaluations (reports) a trial gets before it can be stopped."""
    reduction_factor: float = Field(3.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)
    """Reports at most (default: the number of evaluations of a full run)."""


class SchedulerSpec(_Strict):
    asha: AshaSpec | None = None


class FrontGuardSpec(_Strict):
    """The front guard (``tce_ray.core.front_guard``): a trial whose ``metric`` falls more than
    ``max_drop`` below the mean of explicit configuration ``reference`` over its completed
    seeds is never ranked on the Pareto front, and Optuna's sampler is told it is
    infeasible. ``reference`` defaults to the first ``mcce`` configuration."""

    metric: Literal["miou"] = "miou"
    """The guarded metric (every run reports ``miou``)."""
    max_drop: float = Field(0.05, ge=0.0, le=1.0)
    """In the metric's units: 0.05 = 5 points of mIoU below the reference's mean."""
    reference: int | None = Field(None, ge=0)
    """Index into ``search.configurations`` (default: the first ``mcce`` one)."""


class ResourcesSpec(_Strict):
    """How many trials run at once. Workers, CPUs and GPUs per worker come from ``train``
    (``num_workers``, ``cpus_per_worker``, ``use_gpu``)."""

    max_concurrent_trials: int | None = Field(None, ge=1)
    """Default: as many as the cluster's CPUs (and GPUs) fit."""


class StudyConfig(_Strict):
    """One study: the base run (``run``, a :class:`RunSpec`) and the study's own sections.

    The study file (and the dict ``parse_config`` takes) keeps the run's sections at the top
    level (``data``, ``loss``, ``train``, ...); validation gathers them into ``run``."""

    name: str
    """Also the results folder's name: letters, digits, ``_ . -``."""
    storage: str = "./results"
    plugins: list[str] = Field(default_factory=list)
    """Modules imported before the rest is validated: they register losses, data sets,
    search parameters or objectives (``tce_ray.core.registry``, ``tce_ray.core.objectives``)."""
    run: RunSpec = Field(default_factory=RunSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec | None = None
    front_guard: FrontGuardSpec | None = None
    """Keeps trials whose mIoU falls well below the reference's off the Pareto front."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    optuna_storage: str | None = None
    """An Optuna RDB URL (``sqlite:///path.db``, ``postgresql://...``) to keep the Optuna
    study in; default: a journal file ``<storage>/<name>/optuna.journal`` for local storage,
    in memory (saved with Tune's searcher state) for remote storage (see ``optuna_store``)."""
    tracking: TrackingSpec | None = None
    """MLflow / W&B logging of every trial's reports (:mod:`tce_ray.study.tracking`)."""

    @model_validator(mode="before")
    @classmethod
    def _compose(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _import_plugins(data.get("plugins"))
        flat = {k: data[k] for k in RunSpec.model_fields if k in data}
        if not flat:
            return data
        if "run" in data:
            raise _PathError("run", "give the run's sections (data, model, loss, ...) at the top level or under run, not both")
        return {**{k: v for k, v in data.items() if k not in flat}, "run": flat}

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", v):
            raise ValueError(f"{v!r} is not usable as a folder name: use letters, digits, '_', '.', '-'")
        return v

    @field_validator("optuna_storage")
    @classmethod
    def _rdb_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z][a-z0-9+]*://", v):
            raise ValueError(f"{v!r} is not a database URL; use e.g. sqlite:///results/optuna.db")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        from tce_ray.core.objectives import get_objective  # numpy only

        for name in self.run.objectives:
            try:
                get_objective(name)
            except ValueError as e:  # the message lists the registered names
                raise _PathError("objectives", str(e)) from None
        s = self.search
        if s.total_trials() < 1:
            raise _PathError("search.num_samples", "the study has no trial: set num_samples >= 1 or list configurations")
        if s.seeds is not None and not s.configurations:
            raise _PathError(
                "search.seeds", "seeds apply to the explicit configurations and there are none: list "
                "search.configurations or remove seeds (sampled trials use train.seed)"
            )
        for i, c in enumerate(s.configurations):
            try:
                self.run.merged(c.overrides())
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = [str(p) for p in err["loc"]]
                msg = err["msg"]
                ctx_err = (err.get("ctx") or {}).get("error")
                if isinstance(ctx_err, _PathError):  # a check across sections (sampling vs loss) names its key
                    loc, msg = loc + [p for p in ctx_err.path.split(".") if p], ctx_err.message
                where = loc[1:] if loc and loc[0] == "loss" else loc  # loss settings sit flat in a configuration
                raise _PathError(".".join(["search", "configurations", str(i), *where]), msg) from None
        self._resolve_front_guard()
        if self.scheduler is not None and self.scheduler.asha is not None:
            metric = self.scheduler.asha.metric
            if metric not in self.run.objectives:
                raise _PathError(
                    "scheduler.asha.metric", f"{metric!r} is not one of the study's objectives {self.run.objectives}"
                )
        return self

    def _resolve_front_guard(self) -> None:
        """``front_guard.reference``: a valid configuration index (default: the first mcce one)."""
        g = self.front_guard
        if g is None:
            return
        confs = self.search.configurations
        if g.reference is None:
            mcce = [i for i, c in enumerate(confs) if c.settings().get("name") == "mcce"]
            if not mcce:
                raise _PathError(
                    "front_guard.reference", "the guard needs a reference configuration and search.configurations "
                    "has no mcce one: list {name: mcce} under search.configurations or give reference: <index>"
                )
            g.reference = mcce[0]
        elif g.reference >= len(confs):
            raise _PathError(
                "front_guard.reference", f"configuration index {g.reference} does not exist: search.configurations "
                f"has {len(confs)} entr{'y' if len(confs) == 1 else 'ies'} (indices from 0)"
            )

    def guard(self) -> Any:
        """The resolved :class:`~tce_ray.core.front_guard.FrontGuard`, or None without ``front_guard``."""
        from tce_ray.core.front_guard import FrontGuard

        g = self.front_guard
        return None if g is None else FrontGuard(reference=int(g.reference or 0), max_drop=g.max_drop, metric=g.metric)

    # ------------------------------------------------------------------ helpers

    def run_for(self, loss_settings: dict[str, Any], seed: int | None = None) -> RunSpec:
        """The base run with a trial's loss settings (``name``, ``t``, ...) applied, and
        ``train.seed`` replaced by ``seed`` when one is given (one validated merge)."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        return self.run.merged({"loss": loss_settings, "train": {"seed": seed}})

    def file_dict(self) -> dict[str, Any]:
        """The study as its file has it (the run's sections at the top level), JSON-safe."""
        out = self.model_dump(mode="json")
        return {**{k: v for k, v in out.items() if k != "run"}, **out["run"]}

    def experiment_path(self) -> str:
        """``<storage>/<name>`` (a URI stays a URI)."""
        from tce_ray.train.run_state import storage_join  # pyarrow: only when a path is built

        return storage_join(self.storage, self.name)

    def evaluations_per_run(self) -> int:
        """Reports of a full run (every ``eval_every`` steps and at the end)."""
        t = self.run.train
        return t.steps // t.eval_every + (0 if t.steps % t.eval_every == 0 else 1)  # arithmetic: no list of steps


def _import_plugins(modules: Any) -> None:
    """Import the study's ``plugins`` (before validation: they register what it names)."""
    if modules is None:
        return
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise _PathError("plugins", f"expected a list of module names such as [mypackage.losses], got {modules!r}")
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure of the user's module is the message
            raise _PathError(f"plugins.{i}", f"cannot import module {name!r}: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------- loading


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, *, where: str = "", environ: dict[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (default used when VAR is unset or empty).
    An unset variable without default raises ConfigError naming it."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        val = env.get(var)
        if val:
            return val
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {var} is not set (used as ${{{var}}}); export {var}=... "
            f"or write ${{{var}:-default}} in the file",
            path=where,
        )

    return _ENV.sub(sub, value)


def _line_map(text: str) -> dict[tuple[Any, ...], int]:
    """Key path -> 1-based line of the key (mappings) or item (sequences); {} for bad YAML."""
    try:
        return load_yaml(text).lines
    except YamlLoadError:
        return {}


def _expand_tree(data: Any, path: tuple[Any, ...] = ()) -> tuple[Any, list[tuple[tuple[Any, ...], ConfigError]]]:
    errors: list[tuple[tuple[Any, ...], ConfigError]] = []
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out[k], e = _expand_tree(v, path + (k,))
            errors += e
        return out, errors
    if isinstance(data, list):
        out_l = []
        for i, v in enumerate(data):
            x, e = _expand_tree(v, path + (i,))
            out_l.append(x)
            errors += e
        return out_l, errors
    if isinstance(data, str) and "${" in data:
        try:
            return expand_env(data, where=_dotted(path)), errors
        except ConfigError as exc:
            return data, [(path, exc)]
    return data, errors


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Keep the parts of a pydantic error location that exist in the input or name a
    field of the schema (a missing key); drops union member tags (``TSearch``, ``float``)."""
    out: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str):
            model = _model_at(tuple(out))
            if model is not None and part in _fields(model):
                out.append(part)  # a missing key
                break
    return tuple(out)


_TYPE_ERRORS = ("float_type", "float_parsing", "model_type", "dict_type", "model_attributes_type", "list_type", "literal_error")


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        data = data[p]
    return data


def _lookup(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _describe(err: dict[str, Any], data: Any, path: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = path[:-1]
        model = _model_at(parent)
        key = path[-1]
        valid = sorted(_fields(model)) if model else []
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f" in '{_dotted(parent)}'" if parent else ""
        return f"unknown key {key!r}{where}{hint}; valid keys: {', '.join(valid)}"
    if kind == "missing":
        return "this required key is missing"
    if kind == "finite_number":
        return (f"must be a finite number (got {err.get('input')!r}); .inf, .nan and numbers beyond 1.8e308 "
                "are not allowed here")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("missing",) and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """The keys a model takes as the file spells them: a registry-shaped section's from the
    registry, the study's with the run's sections at the top level."""
    if issubclass(model, RegistryShaped):
        model = model.schema_model()
    fields = dict(model.model_fields)
    if model is StudyConfig:
        del fields["run"]
        fields.update(RunSpec.model_fields)
    return fields


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model of a (dict) key path, for 'valid keys' hints."""
    model: type[BaseModel] | None = StudyConfig
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = _fields(model).get(str(part))
        if field is None:
            return None
        model = _first_model(field.annotation)
    return model


def _first_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        m = _first_model(arg)
        if m is not None:
            return m
    return None


def _pick(errors: list[dict[str, Any]], data: Any) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The one error to show: the deepest location in the input (for a union of a number
    and a mapping, the member the input looks like)."""
    best, best_path, best_score = errors[0], _data_path(tuple(errors[0]["loc"]), data), -1
    for err in errors:
        path = _data_path(tuple(err["loc"]), data)
        score = len(path) * 10 + (1 if err["type"] not in ("float_type", "float_parsing", "model_type", "dict_type") else 0)
        if score > best_score:
            best, best_path, best_score = err, path, score
    return best, best_path


def _file_loc(loc: tuple[Any, ...], data: dict[str, Any]) -> tuple[Any, ...]:
    """A pydantic location as the file spells it: the run's sections sit at the top level."""
    return loc[1:] if loc[:1] == ("run",) and "run" not in data else loc


def _union_message(path: tuple[Any, ...], got: Any) -> str:
    """The message for a value that fits no member of a searched key's union."""
    param = get_search_param(str(path[-1])) if len(path) >= 2 and path[-2] == "search" else None
    if param is not None and param.kind == "choice":
        return f"expected {_choices_text(param)} or a list of them (got {got!r})"
    return f"expected a number (a fixed value) or a range {{low, high[, log]}} (got {got!r})"


def parse_config(data: Any, *, file: str | None = None, text: str | None = None) -> StudyConfig:
    """Validate a study given as a mapping (``${VAR}`` expanded first, ``data.root`` checked
    and made absolute). ``file``/``text`` only improve the messages (line numbers). Raises
    :class:`ConfigError`."""
    lines = _line_map(text) if text is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"a study must be a mapping of keys (name, data, train, search, ...), got {type(data).__name__}", file=file, line=1 if text else None)
    data, env_errors = _expand_tree(data)
    if env_errors:
        path, exc = env_errors[0]
        raise ConfigError(exc.message, path=exc.path, line=_lookup(lines, path), file=file)
    try:
        return StudyConfig.model_validate(data, context={"check_paths": True})
    except ValidationError as exc:
        errors = [{**e, "loc": _file_loc(tuple(e["loc"]), data)} for e in exc.errors()]
        err, path = _pick(errors, data)
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _PathError):
            rel = tuple(int(p) if p.isdigit() else p for p in ctx_err.path.split(".") if p)
            path = path + rel
            raise ConfigError(ctx_err.message, path=_dotted(path), line=_lookup(lines, path), file=file) from None
        message = _describe(err, data, path)
        if sum(_data_path(tuple(e["loc"]), data) == path for e in errors) > 1 and err["type"] in _TYPE_ERRORS:
            message = _union_message(path, _get(data, path))
        raise ConfigError(message, path=_dotted(path), line=_lookup(lines, path), file=file) from None


def load_config(path: str | os.PathLike[str], overrides: typing.Sequence[str] = ()) -> StudyConfig:
    """Read and validate a study YAML file. Raises :class:`ConfigError` (never a
    traceback-worthy exception) for unreadable files, YAML syntax and schema errors.
    ``overrides``: ``KEY.PATH=VALUE`` texts (the CLI's ``--set``) applied before validation
    (:mod:`tce_ray.study.overrides`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such study file; the shipped studies are in studies/ (e.g. {BUILTIN_STUDY})", file=str(p))
    if p.stat().st_size > 4 * MAX_CHARS:  # before reading: a study file has a few kB
        raise ConfigError(f"the file has {p.stat().st_size:,} bytes; a study file has a few thousand", file=str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it: {exc}", file=str(p)) from None
    try:
        doc = load_yaml(text)  # refuses alias bombs, duplicate keys, over-deep nesting
    except YamlLoadError as exc:
        raise ConfigError(exc.message, path=exc.path, line=exc.line, file=str(p)) from None
    data = doc.data
    if data is None:
        raise ConfigError("the file is empty; a study needs at least a name (see studies/smoke.yaml)", file=str(p))
    if overrides:
        return parse_with_overrides(data, overrides, file=str(p), text=text)
    return parse_config(data, file=str(p), text=text)


def parse_with_overrides(
    data: dict[str, Any], overrides: typing.Sequence[str], *, file: str | None = None, text: str | None = None
) -> StudyConfig:
    """Validate ``data`` with the overrides applied (:func:`~tce_ray.study.overrides.apply_overrides`).
    An error in an overridden key names the ``--set`` it came from
    (``--set train.stepz=5: train.stepz: unknown key ...``)."""
    merged, given = apply_overrides(data, overrides)
    try:
        return parse_config(merged, file=file, text=text)
    except ConfigError as exc:
        for key, src in given.items():
            if exc.path == key or exc.path.startswith(key + ".") or key.startswith(exc.path + ".") and exc.path:
                raise ConfigError(exc.message, path=exc.path, file=f"--set {src}") from None
        raise
