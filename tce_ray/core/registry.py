"""What a study can name: losses (with their typed settings), data sets, searchable parameters.

One table per kind; everything else derives from it: the schema of a run's ``loss`` section
(:mod:`tce_ray.train.runspec`), the ``search`` section of a study file (:mod:`tce_ray.study.config`),
the Optuna space (:mod:`tce_ray.study.search_space`), the labels of the result tables
(:mod:`tce_ray.results.tables`), ``make_loss`` (:mod:`tce_ray.core.losses`) and ``build_dataset``
(:mod:`tce_ray.data`). This module imports neither torch nor Ray.

- A :class:`Setting` is one typed loss setting (``t``, ``gamma``, ...): its type, default,
  bounds, whether it must be finite, how it is searched and labelled. A setting is stated
  once and shared by every loss that takes it.
- A :class:`LossEntry` names a loss: its factory (a class or function), the settings it
  takes and the factory keyword each becomes, whether it needs the training set's class
  index (pixel frequencies, image lists) and whether it needs the run's class-weight actor
  (stochastic TCE's sampler).
- A :class:`DatasetEntry` names a data set: its builder, whether it reads a root folder
  and what that folder holds.
- A :class:`SearchParam` is one searchable value of a run at a ``section.field`` path; every
  setting with ``search`` set gives one (``loss.t``, Optuna name ``loss/t``), and
  :func:`register_search_param` adds others (``sampling.image_power``).

Register with :func:`register_loss` (a decorator on the class), :func:`register_setting`,
:func:`register_dataset`, :func:`register_search_param`; a name already taken by a
different entry is an error unless ``override=True``. The built-in entries are registered
by :mod:`tce_ray.core.loss_catalog` and :mod:`tce_ray.data`, imported on the first look-up;
classes and builders may be named ``"package.module:attr"`` and are imported when first
built, so that naming or validating them imports no torch.

Entries registered outside the package reach Ray's processes (Tune trials, Train workers)
with :func:`plugin_snapshot` / :func:`install_snapshot`: the study and the trainer ship
the snapshot (pickled by Ray) and install it there before a ``RunSpec`` is validated.
"""

from __future__ import annotations

import difflib
import importlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import annotated_types as at

__all__ = [
    "Bounds",
    "Setting",
    "LossEntry",
    "LossContext",
    "DatasetEntry",
    "SearchParam",
    "register_setting",
    "register_loss",
    "register_dataset",
    "register_search_param",
    "get_setting",
    "list_settings",
    "get_loss",
    "list_losses",
    "get_dataset",
    "list_datasets",
    "search_params",
    "get_search_param",
    "registry_version",
    "plugin_snapshot",
    "install_snapshot",
    "unknown_name_message",
]

SearchKind = Literal["range", "tilt", "choice"]
"""How a value is searched: ``range`` a float from ``{low, high, log}``; ``tilt`` a range whose
sign may be searched too (``allow_negative``, see ``config.TSearch``); ``choice`` one of a
list (a ``Literal`` or ``bool`` setting)."""

_BUILTIN_MODULES = ("tce_ray.core.loss_catalog", "tce_ray.data", "tce_ray.train.runspec")
"""Modules that register the built-in entries (imported on the first look-up): the losses and
their settings, the data sets, and search parameters of run sections beside ``loss``."""


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Bounds:
    """An interval for a number: ``ge``/``gt`` below, ``le``/``lt`` above (None: open)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, x: float) -> bool:
        return not (
            (self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
            or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt)
        )

    def interval(self) -> str:
        """``(0, 1]``, ``[0, inf)``."""
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else "(-inf"
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else "inf)"
        return f"{lo}, {hi}"

    def metadata(self) -> list[Any]:
        """The bounds as ``annotated_types`` constraints (pydantic's messages come with them)."""
        kinds = (("ge", at.Ge), ("gt", at.Gt), ("le", at.Le), ("lt", at.Lt))
        return [cls(getattr(self, k)) for k, cls in kinds if getattr(self, k) is not None]


@dataclass(frozen=True)
class Setting:
    """One typed loss setting, shared by every loss that takes it.

    ``type`` is a type annotation (``float``, ``int``, ``bool``, ``Literal[...]``, or a union
    such as ``Literal["none"] | list[float]``); ``ge``/``gt``/``le``/``lt`` bound a number;
    ``finite`` rejects NaN and infinities. ``search`` makes it searchable in a study under
    its own name (``search.<name>``, Optuna parameter ``loss/<name>``). ``label`` is its
    short name in the result labels (None: the full name); values in ``label_omit`` are
    left out of labels (the defaults nobody needs to read).
    """

    name: str
    type: Any
    default: Any
    doc: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = False
    search: SearchKind | None = None
    label: str | None = None
    label_omit: tuple[Any, ...] = ()

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.ge, self.gt, self.le, self.lt)

    def annotation(self) -> Any:
        """The pydantic annotation: the type with its bounds and finiteness check."""
        from typing import Annotated

        from pydantic import AfterValidator

        extra: list[Any] = self.bounds.metadata()
        if self.finite:
            extra.append(AfterValidator(_finite_check(self.name)))
        return Annotated[(self.type, *extra)] if extra else self.type

    def choices(self) -> tuple[Any, ...]:
        """The values of a ``Literal`` or ``bool`` setting (empty for others)."""
        if self.type is bool:
            return (False, True)
        if get_origin(self.type) is Literal:
            return get_args(self.type)
        return ()


def _finite_check(name: str) -> Callable[[float], float]:
    def check(v: float) -> float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number")
        return v

    return check


@dataclass(frozen=True)
class LossContext:
    """What a loss factory may need beyond its settings: the number of classes and, for
    entries that need it, the training set's class index (``tce_ray.data.sampling.ClassIndex``)."""

    num_classes: int
    class_index: Any = None

    def pixel_frequencies(self, what: str) -> Any:
        """The training set's per-class pixel frequencies; ``what`` names the setting that
        needs them in the error raised without a class index."""
        if self.class_index is None:
            raise ValueError(f"{what} needs the class index of the training set")
        return self.class_index.pixel_frequencies()


@dataclass(frozen=True)
class LossEntry:
    """A loss a run can name: ``factory(**keywords)`` builds it (an ``nn.Module``).

    ``settings``: the settings it takes (what a study may set or search for it, in this
    order); ``params``: the keyword each setting becomes (settings left out are used
    elsewhere, e.g. stochastic TCE's ``gamma`` by the weight actor); ``fixed``: constant
    keywords; ``prepare(keywords, context)`` turns settings into what the factory takes
    (focal's ``alpha`` from the pixel frequencies). ``needs_class_index`` (a bool, or a
    function of the loss settings) asks for the class index; ``needs_weight_actor`` for
    the run's class-weight actor and the tilted batch sampler (stochastic TCE).
    """

    name: str
    factory: Callable[..., Any] | str
    settings: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    needs_class_index: bool | Callable[[Mapping[str, Any]], bool] = False
    needs_weight_actor: bool = False
    prepare: Callable[[dict[str, Any], LossContext], dict[str, Any]] | None = None
    doc: str = ""

    def uses_class_index(self, settings: Mapping[str, Any]) -> bool:
        """Whether a run with these loss settings needs the class index."""
        if self.needs_weight_actor:
            return True  # the tilted sampler draws images from D_c
        flag = self.needs_class_index
        return bool(flag(settings) if callable(flag) else flag)

    def resolve_factory(self) -> Callable[..., Any]:
        """The factory (a ``"package.module:attr"`` string is imported now)."""
        return _resolve(self.factory, f"loss {self.name!r}")

    def build(self, settings: Mapping[str, Any], context: LossContext) -> Any:
        """The loss module for these loss settings (``LossSpec.model_dump()``)."""
        keywords = {kw: settings[s] for s, kw in self.params.items()}
        if self.prepare is not None:
            keywords = self.prepare(keywords, context)
        return self.resolve_factory()(**self.fixed, **keywords)


@dataclass(frozen=True)
class DatasetEntry:
    """A data set a run can name: ``builder(split, root, **options)``.

    ``builder`` may be a ``"package.module:function"`` string, imported on first use (so
    naming a data set does not import torchvision). ``options_of``: the function whose
    keyword-only parameters are the accepted options (default: the builder). ``root_holds``
    and ``env_var`` make the messages about a missing root say where the data goes.
    """

    name: str
    builder: Callable[..., Any] | str
    takes_root: bool = True
    root_holds: str = "the data set's files"
    env_var: str = ""
    options_of: Callable[..., Any] | str | None = None
    doc: str = ""

    def resolve_builder(self) -> Callable[..., Any]:
        return _resolve(self.builder, f"data set {self.name!r}")

    def resolve_options_of(self) -> Callable[..., Any]:
        return _resolve(self.options_of, f"data set {self.name!r}") if self.options_of else self.resolve_builder()


@dataclass(frozen=True)
class SearchParam:
    """A searchable value of a run: ``path`` is ``section.field`` of the ``RunSpec``.

    ``key`` is its key under ``search:`` in a study file; its Optuna parameter is the path
    with ``/`` (``loss/t``). ``bounds`` check a searched range, ``choices`` are the values a
    ``choice`` may take. ``applies(view)`` says whether a trial uses it, ``view`` mapping
    ``section.field`` paths to the trial's values so far over the base run's (e.g.
    ``view["loss.name"]``); None: always.
    """

    key: str
    path: str
    kind: SearchKind
    bounds: Bounds = Bounds()
    choices: tuple[Any, ...] = ()
    finite: bool = False
    applies: Callable[[Mapping[str, Any]], bool] | None = None

    @property
    def optuna_name(self) -> str:
        return self.path.replace(".", "/")

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.path.split(".", 1)[1]

    def used_by(self, view: Mapping[str, Any]) -> bool:
        return True if self.applies is None else bool(self.applies(view))


@dataclass(frozen=True)
class _LossTakes:
    """``applies`` of a setting's search parameter: the trial's loss takes the setting."""

    setting: str

    def __call__(self, view: Mapping[str, Any]) -> bool:
        name = view.get("loss.name")
        return name in _LOSSES and self.setting in _LOSSES[name].settings


# --------------------------------------------------------------------------- the tables

_SETTINGS: dict[str, Setting] = {}
_LOSSES: dict[str, LossEntry] = {}
_DATASETS: dict[str, DatasetEntry] = {}
_SEARCH: dict[str, SearchParam] = {}  # explicit parameters (not derived from a setting)
_ORIGIN: dict[tuple[str, str], str] = {}  # (kind, name) -> module that registered it
_STATE = {"version": 0, "builtins": "no"}


def registry_version() -> int:
    """A number that changes whenever an entry is added or replaced (for caches)."""
    return _STATE["version"]


def _load_builtins() -> None:
    if _STATE["builtins"] != "no":
        return  # loaded, or loading (a built-in module looking itself up)
    _STATE["builtins"] = "loading"
    try:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)
    except BaseException:
        _STATE["builtins"] = "no"
        raise
    _STATE["builtins"] = "yes"


def _caller_module() -> str:
    """The module that called into this one (an entry's origin)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def _add(table: dict[str, Any], kind: str, name: str, entry: Any, override: bool, origin: str) -> None:
    if not isinstance(name, str) or not name or ":" in name or "." in name or "/" in name:
        raise ValueError(f"{kind} name must be a non-empty str without ':', '.' or '/', got {name!r}")
    old = table.get(name)
    if old is not None and old != entry and not override:
        raise ValueError(
            f"{kind} {name!r} is already registered (by {_ORIGIN.get((kind, name), '?')}) with another "
            f"definition; choose another name or pass override=True"
        )
    if old != entry:
        table[name] = entry
        _STATE["version"] += 1
    _ORIGIN[(kind, name)] = origin


def register_setting(setting: Setting, *, override: bool = False, _origin: str | None = None) -> Setting:
    """Add a loss setting (shared by name with every loss that lists it); returns it."""
    if not isinstance(setting, Setting):
        raise TypeError(f"register_setting takes a Setting, got {type(setting).__name__}")
    if setting.search == "choice" and not setting.choices():
        raise ValueError(f"setting {setting.name!r}: search='choice' needs a Literal[...] or bool type")
    if setting.name in _SEARCH:
        raise ValueError(f"setting {setting.name!r}: a search parameter already uses the key {setting.name!r}")
    _add(_SETTINGS, "setting", setting.name, setting, override, _origin or _caller_module())
    return setting


def register_loss(
    name: str,
    *,
    factory: str | None = None,
    settings: Sequence[str | Setting] = (),
    params: Mapping[str, str] | None = None,
    fixed: Mapping[str, Any] | None = None,
    needs_class_index: bool | Callable[[Mapping[str, Any]], bool] = False,
    needs_weight_actor: bool = False,
    prepare: Callable[[dict[str, Any], LossContext], dict[str, Any]] | None = None,
    doc: str | None = None,
    override: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a loss class (or factory function) under ``name``; returns it
    unchanged. Example (a module outside the package)::

        @register_loss("scaled_ce", settings=[Setting("ce_scale", float, 1.0, gt=0, search="range")],
                       params={"ce_scale": "scale"})
        class ScaledCE(nn.Module):
            def __init__(self, scale: float = 1.0): ...

    ``settings``: names of registered settings or new :class:`Setting` objects (registered
    with the loss); ``params``: setting -> factory keyword (default: every setting under its
    own name). See :class:`LossEntry` for the rest. ``factory="package.module:Class"``
    registers at once without importing the class (the built-ins do, to keep validation
    free of torch). A name already registered with another definition raises ValueError
    unless ``override=True``.
    """
    origin = _caller_module()

    def decorator(factory: Callable[..., Any] | str) -> Callable[..., Any] | str:
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise TypeError(f"@register_loss({name!r}) must decorate a class or function, got {factory!r}")
        _load_builtins()  # a plugin may list the built-in settings by name
        names = []
        for s in settings:
            if isinstance(s, Setting):
                register_setting(s, _origin=origin)
                s = s.name
            if s not in _SETTINGS:
                raise ValueError(
                    f"loss {name!r}: unknown setting {s!r}; registered: {', '.join(_SETTINGS)} "
                    f"(or pass a Setting(...) to define it)"
                )
            names.append(s)
        kw = dict(params) if params is not None else {s: s for s in names}
        stray = sorted(set(kw) - set(names))
        if stray:
            raise ValueError(f"loss {name!r}: params name settings it does not take: {stray}")
        summary = doc if doc is not None else ("" if isinstance(factory, str) else factory.__doc__ or "")
        entry = LossEntry(
            name, factory, tuple(names), kw, dict(fixed or {}), needs_class_index, needs_weight_actor, prepare,
            summary.strip().split("\n")[0],
        )
        _add(_LOSSES, "loss", name, entry, override, origin)
        return factory

    return decorator if factory is None else decorator(factory)


def register_dataset(
    name: str,
    builder: Callable[..., Any] | str | None = None,
    *,
    takes_root: bool = True,
    root_holds: str = "the data set's files",
    env_var: str = "",
    options_of: Callable[..., Any] | str | None = None,
    doc: str = "",
    override: bool = False,
) -> Any:
    """Register a data set. ``builder(split, root, **options)`` returns a
    ``SegmentationDataset``; a ``"package.module:function"`` string is imported on first
    use. Without ``builder`` this is a decorator. Returns the builder."""
    origin = _caller_module()

    def add(b: Callable[..., Any] | str) -> Callable[..., Any] | str:
        if not (callable(b) or (isinstance(b, str) and ":" in b)):
            raise TypeError(f"data set {name!r}: builder must be a function or 'package.module:function', got {b!r}")
        entry = DatasetEntry(name, b, takes_root, root_holds, env_var, options_of, doc)
        _add(_DATASETS, "data set", name, entry, override, origin)
        return b

    return add if builder is None else add(builder)


def register_search_param(param: SearchParam, *, override: bool = False) -> SearchParam:
    """Make a value of a run searchable (a path outside the loss settings, e.g.
    ``SearchParam("image_power", "sampling.image_power", "range", Bounds(ge=0))``)."""
    if not isinstance(param, SearchParam):
        raise TypeError(f"register_search_param takes a SearchParam, got {type(param).__name__}")
    if param.path.count(".") != 1:
        raise ValueError(f"search parameter {param.key!r}: path must be 'section.field', got {param.path!r}")
    if param.kind == "choice" and not param.choices:
        raise ValueError(f"search parameter {param.key!r}: a choice needs its choices")
    _load_builtins()
    if param.key in _SETTINGS:
        raise ValueError(f"search parameter {param.key!r}: the loss setting {param.key!r} already uses that key")
    _add(_SEARCH, "search parameter", param.key, param, override, _caller_module())
    return param


# --------------------------------------------------------------------------- look-ups


def unknown_name_message(kind: str, name: Any, valid: Sequence[str]) -> str:
    """``unknown loss 'x' (did you mean 'y'?); valid names: a, b``."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid names: {', '.join(valid)}"


def _lookup(table: dict[str, Any], kind: str, name: str) -> Any:
    _load_builtins()
    if name not in table:
        raise ValueError(unknown_name_message(kind, name, list(table)))
    return table[name]


def get_setting(name: str) -> Setting:
    return _lookup(_SETTINGS, "loss setting", name)


def list_settings() -> list[Setting]:
    """Every loss setting, in registration order."""
    _load_builtins()
    return list(_SETTINGS.values())


def get_loss(name: str) -> LossEntry:
    return _lookup(_LOSSES, "loss", name)


def list_losses() -> list[str]:
    """Loss names, in registration order (the built-ins first)."""
    _load_builtins()
    return list(_LOSSES)


def get_dataset(name: str) -> DatasetEntry:
    return _lookup(_DATASETS, "data set", name)


def list_datasets() -> list[str]:
    """Data-set names, in registration order (the built-ins first)."""
    _load_builtins()
    return list(_DATASETS)


def search_params() -> list[SearchParam]:
    """Every searchable parameter: the searchable loss settings (in registration order),
    then the explicit ones. The order is the order Optuna is asked for them."""
    _load_builtins()
    derived = [
        SearchParam(s.name, f"loss.{s.name}", s.search, s.bounds, s.choices(), s.finite, _LossTakes(s.name))
        for s in _SETTINGS.values() if s.search is not None
    ]
    return derived + list(_SEARCH.values())


def get_search_param(key: str) -> SearchParam | None:
    return next((p for p in search_params() if p.key == key), None)


def _resolve(spec: Callable[..., Any] | str, what: str) -> Callable[..., Any]:
    if callable(spec):
        return spec
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what}: cannot load {spec!r} ({e})") from e


# --------------------------------------------------------------------------- shipping


_TABLES = {"setting": _SETTINGS, "loss": _LOSSES, "data set": _DATASETS, "search parameter": _SEARCH}


def plugin_snapshot() -> list[tuple[str, str, Any, str]]:
    """The entries registered from outside the package, as ``(kind, name, entry, origin)``:
    what a Ray process must install to validate and build runs that name them. Ray pickles
    it (cloudpickle): the entries' classes and functions travel by reference (their module
    must be importable there) unless registered with ``cloudpickle.register_pickle_by_value``."""
    _load_builtins()
    out = []
    for (kind, name), origin in _ORIGIN.items():
        if not (origin == "tce_ray" or origin.startswith("tce_ray.")):
            out.append((kind, name, _TABLES[kind][name], origin))
    return out


def install_snapshot(snapshot: Sequence[tuple[str, str, Any, str]] | None) -> None:
    """Register what :func:`plugin_snapshot` gave (in a Ray worker, before validating a
    run); entries already there are replaced (the driver's definition wins)."""
    _load_builtins()
    for kind, name, entry, origin in snapshot or ():
        _add(_TABLES[kind], kind, name, entry, True, origin)


def snapshot_modules(snapshot: Sequence[tuple[str, str, Any, str]]) -> list[str]:
    """The modules the snapshot's entries come from (to pickle them by value)."""
    return sorted({origin for _, _, _, origin in snapshot if origin})
