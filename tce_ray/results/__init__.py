"""A study's results, without Ray: the tables (``tables``: trials, history, Pareto front,
groups of seeds), the report and its plots (``report``, ``tce-report``), and
``load_study`` (``study_data``).

The names of the 0.1 module ``tce_ray.results`` (``pareto_front``, ``group_table``, ...) are
importable from the package; they load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    tables = importlib.import_module("tce_ray.results.tables")
    if name in getattr(tables, "__all__", ()):
        return getattr(tables, name)
    raise AttributeError(f"module 'tce_ray.results' has no attribute {name!r}")
