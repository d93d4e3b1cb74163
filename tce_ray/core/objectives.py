"""A registry of study objectives: scalar summaries of a per-class IoU vector (timm style).

An objective is ``fn(per_class_iou: np.ndarray) -> float`` (fractions in [0, 1], NaN = absent
class) with a direction in Optuna's spelling, "maximize" or "minimize" (the short "max" /
"min" are accepted and stored as the long form). Register with the decorator::

    @register_objective("my_obj", "maximize")
    def my_obj(iou: np.ndarray) -> float: ...

and look up by name, or by "package.module:function" (the import must register it).
:func:`resolve_objectives` turns what a study names into objectives with their metric
``key``. ``Objective.mode`` ("max"/"min") is the same direction in Ray Tune's spelling and
in the result files' (``study.json``), derived, never stored.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

__all__ = ["Objective", "register_objective", "get_objective", "list_objectives", "resolve_objectives"]

ObjectiveFn = Callable[[np.ndarray], float]
Direction = Literal["maximize", "minimize"]
_DIRECTIONS: dict[str, Direction] = {"maximize": "maximize", "minimize": "minimize", "max": "maximize", "min": "minimize"}
_REGISTRY: dict[str, "Objective"] = {}


def _direction(name: str, value: Any) -> Direction:
    if value not in _DIRECTIONS:
        raise ValueError(f"objective {name!r}: direction must be 'maximize' or 'minimize' (or 'max'/'min'), got {value!r}")
    return _DIRECTIONS[value]


@dataclass(frozen=True)
class Objective:
    """An objective: its name, direction ("maximize"/"minimize"), function and docstring.

    ``key`` is the metric key a study's runs report it under (the name, or the
    "package.module:function" string a study gave); ``by_workers`` says whether the Train
    workers compute it (they import it by ``key``) or the driver does, from each report's
    per-class IoU (an objective registered on the fly). Both are set by
    :func:`resolve_objectives`."""

    name: str
    direction: Direction
    fn: ObjectiveFn
    doc: str = ""
    key: str = ""
    by_workers: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _direction(self.name, self.direction))
        if not self.key:
            object.__setattr__(self, "key", self.name)

    @property
    def mode(self) -> Literal["max", "min"]:
        """The direction as Ray Tune and the result files spell it ("max"/"min")."""
        return "max" if self.direction == "maximize" else "min"

    def __call__(self, iou: Any) -> float:
        """Evaluate on a 1-D per-class IoU vector; the result must be a finite scalar."""
        try:
            v = np.asarray(iou, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"objective {self.name!r} needs a numeric per-class IoU vector: {e}") from e
        if v.ndim != 1:
            raise ValueError(f"objective {self.name!r} needs a 1-D per-class IoU vector, got shape {v.shape}")
        try:
            out = self.fn(v)
        except ValueError as e:
            raise ValueError(f"objective {self.name!r}: {e}") from e
        if isinstance(out, np.ndarray) and out.ndim == 0:
            out = out[()]
        if isinstance(out, (bool, np.bool_)) or not isinstance(out, (int, float, np.integer, np.floating)):
            raise ValueError(
                f"objective {self.name!r} returned {out!r} ({type(out).__name__}); "
                f"it must return one finite float"
            )
        value = float(out)
        if not np.isfinite(value):
            raise ValueError(f"objective {self.name!r} returned the non-finite value {value!r}; it must be finite")
        return value


def register_objective(
    name: str, direction: Direction | Literal["max", "min"] | None = None, *, override: bool = False,
    mode: Literal["max", "min"] | None = None,
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged.

    ``direction`` is "maximize" or "minimize" ("max"/"min" accepted). A name already
    registered raises ValueError unless ``override=True``. ``mode=`` is the first
    release's spelling of ``direction``: accepted with a ``DeprecationWarning``.
    """
    if mode is not None:
        import warnings

        if direction is not None:
            raise TypeError(f"register_objective({name!r}): give direction= or the old mode=, not both")
        warnings.warn("register_objective(mode=...) is deprecated; use direction= ('maximize'/'minimize' or 'max'/'min')",
                      DeprecationWarning, stacklevel=2)
        direction = mode
    if direction is None:
        raise TypeError(f"register_objective({name!r}) needs direction= ('maximize' or 'minimize')")
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"objective name must be a non-empty str without ':', got {name!r}")
    direction = _direction(name, direction)

    def decorator(fn: ObjectiveFn) -> ObjectiveFn:
        if not callable(fn):
            raise TypeError(f"@register_objective({name!r}) must decorate a function, got {fn!r}")
        if name in _REGISTRY and not override:
            old = _REGISTRY[name].fn
            raise ValueError(
                f"objective {name!r} is already registered (by {old.__module__}.{old.__qualname__}); "
                f"choose another name or pass override=True"
            )
        _REGISTRY[name] = Objective(name, direction, fn, (fn.__doc__ or "").strip())
        return fn

    return decorator


def list_objectives() -> list[str]:
    """Sorted names of all registered objectives."""
    return sorted(_REGISTRY)


def _from_path(spec: str) -> Objective:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"objective path {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"objective {spec!r}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"objective {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if isinstance(fn, Objective):
        return fn
    for obj in _REGISTRY.values():
        if obj.fn is fn:
            return obj
    if callable(fn):
        raise ValueError(
            f"objective {spec!r} is a plain function, not a registered objective; decorate it with "
            f"@register_objective(name, direction) from tce_ray.core.objectives (direction 'maximize' or 'minimize')"
        )
    raise ValueError(f"objective {spec!r} is {type(fn).__name__}, not a function")


def get_objective(name: str | Objective) -> Objective:
    """The objective registered as ``name``, or found at "package.module:function".

    Unknown names raise ValueError listing the registered ones.
    """
    if isinstance(name, Objective):
        return name
    if not isinstance(name, str):
        raise TypeError(f"objective name must be a str, got {type(name).__name__}")
    if ":" in name:
        return _from_path(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; registered: {', '.join(list_objectives())} "
            f"(or give 'package.module:function' of a function decorated with @register_objective)"
        ) from None


def resolve_objectives(items: Sequence[Any]) -> list[Objective]:
    """The objectives a study names, each with its metric ``key``: registry names and
    ``"package.module:function"`` strings (computed by the workers, reported under that
    string), :class:`Objective` objects (registered on the fly when new) and registered
    functions (both computed by the driver from the reports' per-class IoU)."""
    out: list[Objective] = []
    for item in items:
        if isinstance(item, str):
            out.append(replace(get_objective(item), key=item))
            continue
        if isinstance(item, Objective):
            if item.name in _REGISTRY:
                known = _REGISTRY[item.name]
                if known.fn is not item.fn or known.direction != item.direction:
                    raise ValueError(
                        f"objective {item.name!r} is already registered with another function or direction; "
                        "give yours another name"
                    )
            else:
                register_objective(item.name, item.direction)(item.fn)
            obj = item
        elif callable(item):
            found = [o for o in _REGISTRY.values() if o.fn is item]
            if not found:
                raise TypeError(
                    f"{getattr(item, '__name__', item)!r} is a plain function; decorate it with "
                    "@register_objective(name, direction) or pass Objective(name, direction, fn)"
                )
            obj = found[0]
        else:
            raise TypeError(f"an objective is a name, 'module:function' or an Objective, got {type(item).__name__}")
        out.append(replace(obj, key=obj.name, by_workers=False))
    names = [o.name for o in out]
    if not out or len(set(names)) != len(names):
        raise ValueError(f"objectives must be a non-empty list of distinct objectives, got {names}")
    return out


# ---- built-ins: NaN-aware through tce_ray.core.metrics, so definitions cannot drift ----
# (imported on first use: naming an objective in a study file imports no torch)


def _report(iou: np.ndarray) -> dict[str, Any]:
    from tce_ray.core.metrics import fairness_report

    return fairness_report(iou)


@register_objective("miou", "maximize")
def miou(iou: np.ndarray) -> float:
    """Mean IoU over the present classes."""
    return _report(iou)["miou"]


@register_objective("worst_iou", "maximize")
def worst_iou(iou: np.ndarray) -> float:
    """IoU of the worst present class."""
    return _report(iou)["worst"]


@register_objective("iou_std", "minimize")
def iou_std(iou: np.ndarray) -> float:
    """Sample standard deviation (ddof=1) of the present classes' IoU."""
    return _report(iou)["std"]


@register_objective("bottom25_miou", "maximize")
def bottom25_miou(iou: np.ndarray) -> float:
    """Mean IoU of the classes at or below their own 25th percentile (fairness_report's p25_mean)."""
    return _report(iou)["p25_mean"]


@register_objective("p25_iou", "maximize")
def p25_iou(iou: np.ndarray) -> float:
    """25th percentile (linear interpolation) of the present classes' IoU."""
    return _report(iou)["p25"]


@register_objective("iou_gap", "minimize")
def iou_gap(iou: np.ndarray) -> float:
    """Best minus worst IoU over the present classes."""
    from tce_ray.core.metrics import present_iou

    u = present_iou(iou)
    return float(np.max(u) - np.min(u))
