"""Ray at the study's edge: shipping user code (registry plugins) to Ray's processes."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from .registry import plugin_snapshot, snapshot_modules

__all__ = ["pickle_by_value", "shipped_plugins"]

_BY_REFERENCE = ("tce_ray", "numpy", "torch")
"""Top-level packages always pickled by reference (installed on every node)."""


def pickle_by_value(modules: Iterable[str]) -> None:
    """Ship these modules' functions and classes to Ray's processes by value: a user's
    script or test file need not be importable there. ``__main__`` already goes by value;
    the package, numpy and torch stay by reference."""
    from ray import cloudpickle

    for name in modules:
        mod = sys.modules.get(name or "")
        if mod is None or name == "__main__" or name.split(".")[0] in _BY_REFERENCE:
            continue
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:  # a module cloudpickle cannot take by value: leave it by reference
            pass


def shipped_plugins() -> list[Any]:
    """The registry entries registered outside the package (``tce_ray.registry``), their
    modules set to travel by value: pass the result to the Ray process that validates or
    builds runs, which installs it with ``tce_ray.registry.install_snapshot``."""
    snapshot = plugin_snapshot()
    pickle_by_value(snapshot_modules(snapshot))
    return snapshot
