"""The public API exported from ``tce_ray/__init__.py``, pinned: names and parameters.

A rename or a changed parameter fails here, so it is a decision (a shim for the old
spelling and a CHANGELOG.md line), not an accident. After such a decision, regenerate
the snapshot and commit it with the CHANGELOG entry:

    python -m tests.test_public_api --update
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import tce_ray

SNAPSHOT = Path(__file__).parent / "golden" / "public_api.json"


def _params(fn: Any) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ["<no signature>"]
    out = []
    for p in sig.parameters.values():
        text = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            text = "kw:" + text
        elif p.kind is inspect.Parameter.POSITIONAL_ONLY:
            text = "pos:" + text
        if p.default is not inspect.Parameter.empty:
            text += "=" + (repr(p.default) if isinstance(p.default, (int, float, str, bool, type(None), tuple)) else "<default>")
        out.append(text)
    return out


def _describe(obj: Any) -> dict[str, Any]:
    if inspect.isclass(obj):
        methods = {}
        for name, member in vars(obj).items():
            if name.startswith("_") or not callable(member) and not isinstance(member, (classmethod, staticmethod)):
                continue
            fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            methods[name] = _params(fn)
        return {"kind": "class", "init": _params(obj), "methods": dict(sorted(methods.items()))}
    if callable(obj):
        return {"kind": "function", "params": _params(obj)}
    return {"kind": type(obj).__name__}


def current_api() -> dict[str, Any]:
    return {name: _describe(getattr(tce_ray, name)) for name in sorted(tce_ray.__all__) if name != "__version__"}


def test_the_public_api_matches_its_snapshot():
    want = json.loads(SNAPSHOT.read_text())
    got = current_api()
    missing = sorted(set(want) - set(got))
    assert not missing, f"public names removed from tce_ray: {missing} (keep a shim, or update the snapshot and CHANGELOG.md)"
    changed = {k: {"snapshot": want[k], "now": got[k]} for k in want if want[k] != got[k]}
    assert not changed, (
        "public signatures changed (keep the old spelling working, then run "
        "`python -m tests.test_public_api --update` and add a CHANGELOG.md line):\n"
        + json.dumps(changed, indent=1)
    )
    added = sorted(set(got) - set(want))
    assert not added, f"new public names {added}: run `python -m tests.test_public_api --update` and add a CHANGELOG.md line"


def test_every_exported_name_resolves():
    for name in tce_ray.__all__:
        assert getattr(tce_ray, name) is not None


if __name__ == "__main__":
    if "--update" in sys.argv:
        SNAPSHOT.write_text(json.dumps(current_api(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {SNAPSHOT}")
    else:
        print(json.dumps(current_api(), indent=1, sort_keys=True))
