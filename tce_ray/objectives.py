"""A registry of study objectives: scalar summaries of a per-class IoU vector (timm style).

An objective is ``fn(per_class_iou: np.ndarray) -> float`` (fractions in [0, 1], NaN = absent
class) with a direction ("max" or "min"). Register with the decorator::

    @register_objective("my_obj", "max")
    def my_obj(iou: np.ndarray) -> float: ...

and look up by name, or by "package.module:function" (the import must register it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tce_ray.metrics import fairness_report, present_iou

__all__ = ["Objective", "register_objective", "get_objective", "list_objectives"]

ObjectiveFn = Callable[[np.ndarray], float]
_MODES = ("max", "min")
_REGISTRY: dict[str, "Objective"] = {}


@dataclass(frozen=True)
class Objective:
    """A registered objective: its name, direction ("max"/"min"), function and docstring."""

    name: str
    mode: Literal["max", "min"]
    fn: ObjectiveFn
    doc: str = ""

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
    name: str, mode: Literal["max", "min"], *, override: bool = False
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged.

    ``mode`` must be "max" or "min". A name already registered raises ValueError unless
    ``override=True``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"objective name must be a non-empty str without ':', got {name!r}")
    if mode not in _MODES:
        raise ValueError(f"objective {name!r}: mode must be 'max' or 'min', got {mode!r}")

    def decorator(fn: ObjectiveFn) -> ObjectiveFn:
        if not callable(fn):
            raise TypeError(f"@register_objective({name!r}) must decorate a function, got {fn!r}")
        if name in _REGISTRY and not override:
            old = _REGISTRY[name].fn
            raise ValueError(
                f"objective {name!r} is already registered (by {old.__module__}.{old.__qualname__}); "
                f"choose another name or pass override=True"
            )
        _REGISTRY[name] = Objective(name, mode, fn, (fn.__doc__ or "").strip())
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
            f"@register_objective(name, mode) from tce_ray.objectives (mode 'max' or 'min')"
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


# ---- built-ins: NaN-aware through tce_ray.metrics, so definitions cannot drift ----


@register_objective("miou", "max")
def miou(iou: np.ndarray) -> float:
    """Mean IoU over the present classes."""
    return fairness_report(iou)["miou"]


@register_objective("worst_iou", "max")
def worst_iou(iou: np.ndarray) -> float:
    """IoU of the worst present class."""
    return fairness_report(iou)["worst"]


@register_objective("iou_std", "min")
def iou_std(iou: np.ndarray) -> float:
    """Sample standard deviation (ddof=1) of the present classes' IoU."""
    return fairness_report(iou)["std"]


@register_objective("bottom25_miou", "max")
def bottom25_miou(iou: np.ndarray) -> float:
    """Mean IoU of the classes at or below their own 25th percentile (fairness_report's p25_mean)."""
    return fairness_report(iou)["p25_mean"]


@register_objective("p25_iou", "max")
def p25_iou(iou: np.ndarray) -> float:
    """25th percentile (linear interpolation) of the present classes' IoU."""
    return fairness_report(iou)["p25"]


@register_objective("iou_gap", "min")
def iou_gap(iou: np.ndarray) -> float:
    """Best minus worst IoU over the present classes."""
    u = present_iou(iou)
    return float(np.max(u) - np.min(u))
