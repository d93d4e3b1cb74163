"""The package's layers, read from its imports (every ``import`` statement, function-local
ones included): no import cycles, and imports only run downward.

    core (0) -> data, models (1) -> train (2) -> results (3) -> study (4) -> cli (5)

``core/`` imports no Ray, Optuna, pandas, pyarrow or YAML (maths only, no I/O);
``data/`` and ``models/`` do not import each other. Exempt: the root ``tce_ray/__init__.py``
(lazy re-exports and ``__version__``, which any layer may read), ``tce_ray/_moved.py`` (the
0.1 module paths), and ``__main__`` modules (entry points, imported by nothing).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tce_ray"
RANK = {"core": 0, "data": 1, "models": 1, "train": 2, "results": 3, "study": 4, "cli": 5}
EXEMPT_TARGETS = {"tce_ray", "tce_ray._moved"}
NOT_IN_CORE = ("ray", "optuna", "pandas", "pyarrow", "yaml")


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.append((base, node.lineno))
            out.extend((f"{base}.{a.name}", node.lineno) for a in node.names if f"{base}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tce_ray" and parts[1] in RANK else None


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for target, _ in _imports(m, p):
            if target in MODULES and target != m and target not in EXEMPT_TARGETS:
                g[m].add(target)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycles():
    assert _cycles(_graph()) == []


def test_imports_only_run_downward():
    bad = []
    for m, p in MODULES.items():
        src = _layer(m)
        if src is None or m.endswith("__main__"):
            continue
        for target, line in _imports(m, p):
            dst = _layer(target)
            if dst is None or target in EXEMPT_TARGETS:
                continue
            if RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and dst != src):
                bad.append(f"{p.relative_to(PKG.parent)}:{line}: {src} imports {target} ({dst})")
    assert not bad, "imports that run upward or sideways:\n" + "\n".join(bad)


def test_core_imports_no_ray_and_does_no_io():
    bad = []
    for m, p in MODULES.items():
        if _layer(m) != "core":
            continue
        for target, line in _imports(m, p):
            if target.split(".")[0] in NOT_IN_CORE:
                bad.append(f"{p.relative_to(PKG.parent)}:{line}: imports {target}")
    assert not bad, "core/ must stay free of Ray, Optuna and I/O libraries:\n" + "\n".join(bad)


def test_every_module_belongs_to_a_layer():
    loose = sorted(m for m in MODULES if _layer(m) is None and m not in EXEMPT_TARGETS)
    assert loose == [], f"modules outside the layer folders: {loose}"


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checker itself: a made-up graph with a cycle, and a core module importing study."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("tce_ray.study.config") == "study" and RANK["study"] > RANK["core"]


@pytest.mark.parametrize("old", ["tce_ray.config", "tce_ray.losses", "tce_ray.study_data", "tce_ray.report"])
def test_the_old_module_paths_still_import_with_a_warning(old):
    import importlib
    import sys

    from tce_ray._moved import MOVED

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(MOVED[old])


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_60_lines():
    """A function that does one job fits on a screen (decorators and docstring included)."""
    long = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(PKG.parent)}:{node.lineno}: {node.name} has {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
