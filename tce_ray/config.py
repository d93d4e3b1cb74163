"""The study's YAML schema: validated before Ray starts, with key paths and line numbers.

A study file is a :class:`~tce_ray.runspec.RunSpec` (the base run: ``data``, ``model``,
``loss``, ``optim``, ``train``, ``objectives``) plus what turns it into a study
(``name``, ``storage``, ``search``, ``scheduler``, ``resources``, ``optuna_storage``)::

    name: synthetic_fairness          # results go to <storage>/<name>/
    storage: ./results                # a local path or a URI Ray accepts (s3://...)
    data: {name: synthetic, options: {num_images: 64, image_size: [48, 64]}}
    loss: {name: mcce, gamma: 0.1}    # the base run; a trial overrides loss settings
    train: {steps: 40, batch_size: 4, num_workers: 2}
    objectives: [worst_iou, iou_std]  # registry names or "package.module:function"
    search:
      sampler: nsga2                  # nsga2 | tpe | random (default: nsga2 for several
                                      # objectives, tpe for one)
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
    resources: {max_concurrent_trials: 1}
    optuna_storage: sqlite:///results/optuna.db   # optional

Seeds: with ``search.seeds`` (a non-empty list of distinct ints in [0, 2**32)) every
explicit configuration runs once per seed, the seed replacing ``train.seed`` (model
initialisation, batch sampler, data loader) of that trial; the (configuration, seed)
pairs are queued seed by seed (every configuration with the first seed, then every
configuration with the second, ...) so an interrupted study still has whole rounds to
compare. Sampled trials use the base ``train.seed`` (one run each: the sampler explores
settings, the explicit configurations measure the spread over seeds).

String values may use ``${VAR}`` and ``${VAR:-default}``; an unset variable without a
default is an error naming it. Relative local paths (``storage``, ``data.root``) are taken
relative to the current working directory.

:func:`load_config` raises :class:`ConfigError` (one message: file, line, key path, what
is wrong and how to fix it). This module imports neither Ray nor torch.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_SEED = 2**32
"""Seeds of ``search.seeds`` lie in [0, MAX_SEED) (what numpy and torch accept everywhere)."""

from .runspec import DataSpec, LossName, LossSpec, ModelSpec, OptimSpec, RunSpec, TrainSpec

__all__ = [
    "ConfigError",
    "StudyConfig",
    "SearchSpec",
    "TSearch",
    "FloatRange",
    "ConfigurationSpec",
    "SchedulerSpec",
    "AshaSpec",
    "ResourcesSpec",
    "DATASET_NAMES",
    "load_config",
    "parse_config",
    "expand_env",
    "is_uri",
]

DATASET_NAMES: tuple[str, ...] = ("synthetic", "cityscapes", "ade20k", "camvid", "folder")
"""The data sets of ``tce_ray.data.build_dataset`` (checked without importing torch)."""

_DATA_HINTS: dict[str, tuple[str, str]] = {
    # name -> (what the root holds, the usual environment variable)
    "cityscapes": ("leftImg8bit/ and gtFine/ (from cityscapes-dataset.com)", "CITYSCAPES_DATASET"),
    "ade20k": ("ADEChallengeData2016/ (images/ and annotations/)", "ADE20K_ROOT"),
    "camvid": ("train/, trainannot/, val/, valannot/ (the 11-class SegNet version)", "TCE_CAMVID_ROOT"),
    "folder": ("<split>/ images and <split>annot/ label maps", ""),
}
BUILTIN_STUDY = "studies/synthetic_fairness.yaml"


class ConfigError(ValueError):
    """A study file (or dict) is invalid. ``path`` is the key path (``train.lr``), ``line``
    the 1-based line in ``file`` when known. ``str(err)`` is the whole message."""

    def __init__(self, message: str, *, path: str = "", line: int | None = None, file: str | None = None):
        self.message = message
        self.path = path
        self.line = line
        self.file = file
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        elif line:
            where = f"line {line}: "
        super().__init__(f"{where}{path + ': ' if path else ''}{message}")


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatRange(_Strict):
    """A float searched in [low, high], uniform or log-uniform."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise _PathError("high", f"high ({self.high}) must be above low ({self.low}); use a plain number to fix the value")
        if self.log and self.low <= 0:
            raise _PathError("low", f"a log range needs low > 0 (got {self.low}); set log: false for a uniform range")
        return self


class TSearch(_Strict):
    """The tilt t: log-uniform over [low, high] by default. Negative t (robust tilting)
    only with ``allow_negative: true``: with ``log: true`` |t| is drawn log-uniform from
    [low, high] and its sign is a categorical parameter; with ``log: false`` t is uniform
    over [low, high] and low may be negative."""

    low: float = 0.01
    high: float = 10.0
    log: bool = True
    allow_negative: bool = False

    @model_validator(mode="after")
    def _check(self) -> TSearch:
        if not self.low < self.high:
            raise _PathError("high", f"high ({self.high}) must be above low ({self.low}); use a plain number to fix t")
        if self.log and self.low <= 0:
            raise _PathError("low", 
                f"log-uniform t needs low > 0 (got {self.low}); for negative t set allow_negative: true "
                "(|t| is then drawn from [low, high] with a random sign) or log: false"
            )
        if not self.log and self.low < 0 and not self.allow_negative:
            raise _PathError("low", f"low = {self.low} is negative: set allow_negative: true to search negative t")
        return self


class ConfigurationSpec(_Strict):
    """An explicit trial: loss settings evaluated before the sampled trials. Settings
    left out come from the base run's ``loss`` section (they are not sampled)."""

    name: LossName
    t: float | None = None
    gamma: float | None = Field(None, gt=0.0, le=1.0)
    focal_gamma: float | None = Field(None, ge=0.0)
    focal_alpha: Literal["inverse_frequency", "none"] | list[float] | None = None
    tilt_signal: Literal["batch", "class"] | None = None
    weight_floor: float | None = Field(None, ge=0.0, le=1.0)
    min_pixels: int | None = Field(None, ge=1)

    def settings(self) -> dict[str, Any]:
        """The fields given (loss settings, ``name`` included)."""
        return self.model_dump(exclude_none=True)


def _check_range(v: Any, what: str, ok: Any, interval: str) -> None:
    if v is None:
        return
    if isinstance(v, FloatRange):
        for key in ("low", "high"):
            x = getattr(v, key)
            if not ok(x):
                raise _PathError(key, f"{what} must lie in {interval} (got {key} = {x})")
    elif not ok(v):
        raise _PathError("", f"{what} must lie in {interval} (got {v})")


class SearchSpec(_Strict):
    """What Optuna samples (define-by-run, conditional on the loss; see search_space.py)."""

    sampler: Literal["nsga2", "tpe", "random"] | None = None
    num_samples: int = Field(0, ge=0)
    """Sampled trials, run after the explicit ``configurations``."""
    seed: int = 0
    population_size: int | None = Field(None, ge=2)
    """NSGA-II's population (default: min(50, max(2, total trials // 2)))."""
    losses: list[LossName] | None = None
    t: TSearch | float | None = None
    gamma: FloatRange | float | None = None
    focal_gamma: FloatRange | float | None = None
    tilt_signal: list[Literal["batch", "class"]] | Literal["batch", "class"] | None = None
    weight_floor: FloatRange | float | None = None
    configurations: list[ConfigurationSpec] = Field(default_factory=list)
    seeds: list[int] | None = None
    """Run every explicit configuration once per seed (the seed replaces ``train.seed`` of
    that trial); sampled trials keep the base ``train.seed``. None: one run each."""

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

    @field_validator("losses")
    @classmethod
    def _nonempty_losses(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("an empty list; name at least one loss or leave losses out")
            if len(set(v)) != len(v):
                raise ValueError(f"duplicate loss names in {v}")
        return v

    @field_validator("t")
    @classmethod
    def _finite_t(cls, v: Any) -> Any:
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise ValueError("t must be finite")
        return v

    @field_validator("gamma")
    @classmethod
    def _gamma_range(cls, v: Any) -> Any:
        _check_range(v, "gamma", lambda x: 0.0 < x <= 1.0, "(0, 1]")
        return v

    @field_validator("focal_gamma")
    @classmethod
    def _focal_range(cls, v: Any) -> Any:
        _check_range(v, "focal_gamma", lambda x: x >= 0.0, "[0, inf)")
        return v

    @field_validator("weight_floor")
    @classmethod
    def _floor_range(cls, v: Any) -> Any:
        _check_range(v, "weight_floor", lambda x: 0.0 <= x <= 1.0, "[0, 1]")
        return v

    @field_validator("tilt_signal")
    @classmethod
    def _nonempty_signal(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list; give [batch], [class], [batch, class] or leave it out")
        return v

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


class ResourcesSpec(_Strict):
    """How many trials run at once. Workers, CPUs and GPUs per worker come from ``train``
    (``num_workers``, ``cpus_per_worker``, ``use_gpu``)."""

    max_concurrent_trials: int | None = Field(None, ge=1)
    """Default: as many as the cluster's CPUs (and GPUs) fit."""


class StudyConfig(_Strict):
    """One study: a base :class:`RunSpec`, the search space, objectives and resources."""

    name: str
    """Also the results folder's name: letters, digits, ``_ . -``."""
    storage: str = "./results"
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    objectives: list[str] = Field(default_factory=lambda: ["worst_iou", "iou_std"])
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    optuna_storage: str | None = None
    """An Optuna RDB URL (``sqlite:///path.db``, ``postgresql://...``) to browse the study
    with optuna-dashboard; default: in memory (saved with Tune's searcher state)."""

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", v):
            raise ValueError(f"{v!r} is not usable as a folder name: use letters, digits, '_', '.', '-'")
        return v

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one objective (e.g. [worst_iou, iou_std])")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate objectives in {v}")
        from .objectives import get_objective  # numpy only

        for name in v:
            get_objective(name)  # ValueError listing the registered names
        return v

    @field_validator("optuna_storage")
    @classmethod
    def _rdb_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z][a-z0-9+]*://", v):
            raise ValueError(f"{v!r} is not a database URL; use e.g. sqlite:///results/optuna.db")
        return v

    @field_validator("data")
    @classmethod
    def _dataset(cls, v: DataSpec) -> DataSpec:
        if v.name not in DATASET_NAMES:
            close = difflib.get_close_matches(v.name, DATASET_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _PathError("name", f"unknown data set {v.name!r}{hint}; valid names: {', '.join(DATASET_NAMES)}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
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
                LossSpec.model_validate({**self.loss.model_dump(), **c.settings()})
            except ValidationError as exc:
                err = exc.errors()[0]
                raise _PathError(f"search.configurations.{i}.{'.'.join(map(str, err['loc']))}", err["msg"]) from None
        if self.scheduler is not None and self.scheduler.asha is not None:
            metric = self.scheduler.asha.metric
            if metric not in self.objectives:
                raise _PathError(
                    "scheduler.asha.metric", f"{metric!r} is not one of the study's objectives {self.objectives}"
                )
        return self

    # ------------------------------------------------------------------ helpers

    def base_run(self) -> RunSpec:
        """The base run (every section but the study's own)."""
        return RunSpec(
            data=self.data, model=self.model, loss=self.loss, optim=self.optim, train=self.train,
            objectives=list(self.objectives),
        )

    def run_for(self, loss_settings: dict[str, Any], seed: int | None = None) -> RunSpec:
        """The base run with a trial's loss settings (``name``, ``t``, ...) applied, and
        ``train.seed`` replaced by ``seed`` when one is given."""
        run = self.base_run().model_dump(mode="json")
        run["loss"].update({k: v for k, v in loss_settings.items() if v is not None})
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an int, got {seed!r}")
            run["train"]["seed"] = seed
        return RunSpec.model_validate(run)

    def experiment_path(self) -> str:
        """``<storage>/<name>`` (a URI stays a URI)."""
        return self.storage.rstrip("/") + "/" + self.name

    def evaluations_per_run(self) -> int:
        """Reports of a full run (every ``eval_every`` steps and at the end)."""
        t = self.train
        return len(set(range(t.eval_every, t.steps + 1, t.eval_every)) | {t.steps})


class _PathError(ValueError):
    """Raised inside validators to name an exact key path, relative to the validated
    value's own location (turned into ConfigError)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


# --------------------------------------------------------------------------- loading


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///...`` (not a Windows drive letter)."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", path))


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
    """Key path -> 1-based line of the key (mappings) or item (sequences), via yaml.compose."""
    lines: dict[tuple[Any, ...], int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, val in node.value:
                p = path + (key.value,)
                lines[p] = key.start_mark.line + 1
                walk(val, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = path + (i,)
                lines[p] = item.start_mark.line + 1
                walk(item, p)

    if root is not None:
        lines[()] = root.start_mark.line + 1
        walk(root, ())
    return lines


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
            if model is not None and part in model.model_fields:
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
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f" in '{_dotted(parent)}'" if parent else ""
        return f"unknown key {key!r}{where}{hint}; valid keys: {', '.join(valid)}"
    if kind == "missing":
        return "this required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("missing",) and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model of a (dict) key path, for 'valid keys' hints."""
    model: type[BaseModel] | None = StudyConfig
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _first_model(field.annotation)
    return model


def _first_model(tp: Any) -> type[BaseModel] | None:
    import typing

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


def parse_config(data: Any, *, file: str | None = None, text: str | None = None) -> StudyConfig:
    """Validate a study given as a mapping (``${VAR}`` expanded first). ``file``/``text``
    only improve the messages (line numbers). Raises :class:`ConfigError`."""
    lines = _line_map(text) if text is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"a study must be a mapping of keys (name, data, train, search, ...), got {type(data).__name__}", file=file, line=1 if text else None)
    data, env_errors = _expand_tree(data)
    if env_errors:
        path, exc = env_errors[0]
        raise ConfigError(exc.message, path=exc.path, line=_lookup(lines, path), file=file)
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err, path = _pick(errors, data)
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _PathError):
            rel = tuple(int(p) if p.isdigit() else p for p in ctx_err.path.split(".") if p)
            path = path + rel
            raise ConfigError(ctx_err.message, path=_dotted(path), line=_lookup(lines, path), file=file) from None
        message = _describe(err, data, path)
        if sum(_data_path(tuple(e["loc"]), data) == path for e in errors) > 1 and err["type"] in _TYPE_ERRORS:
            got = _get(data, path)
            if path and path[-1] == "tilt_signal":
                message = f"expected 'batch', 'class' or a list of them (got {got!r})"
            else:
                message = f"expected a number (a fixed value) or a range {{low, high[, log]}} (got {got!r})"
        raise ConfigError(message, path=_dotted(path), line=_lookup(lines, path), file=file) from None
    except _PathError as exc:  # pragma: no cover - pydantic wraps these, kept for safety
        path = tuple(int(p) if p.isdigit() else p for p in exc.path.split("."))
        raise ConfigError(exc.message, path=exc.path, line=_lookup(lines, path), file=file) from None
    _check_data_root(cfg, lines, file)
    return cfg


def _check_data_root(cfg: StudyConfig, lines: dict[tuple[Any, ...], int], file: str | None) -> None:
    d = cfg.data
    if d.name == "synthetic":
        if d.root:
            raise ConfigError(
                "the synthetic data set is generated on the fly and takes no root; remove data.root "
                "(or set data.name to the data set that lives there)",
                path="data.root", line=_lookup(lines, ("data", "root")), file=file,
            )
        return
    what, var = _DATA_HINTS.get(d.name, ("the data set's files", ""))
    env_hint = f", or set {var} to where it is" if var else ""
    howto = f"To try the method without downloading anything, run the built-in study: python -m tce_ray.study {BUILTIN_STUDY}"
    if not d.root and var and os.environ.get(var):
        d.root = os.environ[var]  # the data module's own fallback; checked below like a given root
    if not d.root:
        raise ConfigError(
            f"the {d.name} data set needs data.root: the folder holding {what}{env_hint}. {howto}",
            path="data.root", line=_lookup(lines, ("data", "root")), file=file,
        )
    if is_uri(d.root):
        return  # remote data: the data module checks it on the workers
    root = Path(d.root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"no {d.name} data at {str(root)!r} (resolved to {root.resolve()}): put {what} there{env_hint}. {howto}",
            path="data.root", line=_lookup(lines, ("data", "root")), file=file,
        )
    # absolute, so that Ray workers (whose working directory is not the user's) find it too
    d.root = str(root.resolve())


def load_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a study YAML file. Raises :class:`ConfigError` (never a
    traceback-worthy exception) for unreadable files, YAML syntax and schema errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such study file; the shipped studies are in studies/ (e.g. {BUILTIN_STUDY})", file=str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it: {exc}", file=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"YAML syntax error: {problem}", line=mark.line + 1 if mark else None, file=str(p)) from None
    if data is None:
        raise ConfigError("the file is empty; a study needs at least a name (see studies/smoke.yaml)", file=str(p))
    return parse_config(data, file=str(p), text=text)
