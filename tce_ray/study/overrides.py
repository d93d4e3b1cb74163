"""``--set key.path=value`` overrides of a study file, applied before validation.

The value is read as YAML (``5`` an int, ``0.1`` a float, ``[0, 1]`` a list, ``null``,
``true``; anything else a string), the key path is dotted (``train.steps``,
``search.configurations.0.t``; digits index a list). The merged mapping is validated like
the file itself, so a bad key or value gives the usual one-line :class:`ConfigError`, here
saying which ``--set`` it came from. No Ray, no torch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

from tce_ray.study.errors import ConfigError

__all__ = ["parse_override", "apply_overrides"]


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=5"`` -> ``("train.steps", 5)``. Raises :class:`ConfigError`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"expected KEY.PATH=VALUE (e.g. train.steps=5), got {text!r}", file="--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"the value {raw!r} is not valid YAML ({problem})", path=key, file="--set") from None
    return key, value


def _step_into(node: Any, part: str, key: str, create: bool) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"{part!r} is not an index of this list (it has {len(node)} items)", path=key, file="--set")
        return node[int(part)]
    if not isinstance(node, dict):
        raise ConfigError(f"cannot set a key inside a {type(node).__name__} value", path=key, file="--set")
    if part not in node and create:
        node[part] = {}
    return node[part]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of ``data`` with each ``KEY.PATH=VALUE`` applied in order (a missing mapping on
    the way is created); also returns key path -> the override's text (for the messages)."""
    out = copy.deepcopy(data)
    given: dict[str, str] = {}
    for text in overrides:
        key, value = parse_override(text)
        *parents, last = key.split(".")
        node: Any = out
        for i, part in enumerate(parents):
            node = _step_into(node, part, ".".join(parents[: i + 1]), create=True)
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"{last!r} is not an index of this list (it has {len(node)} items)", path=key, file="--set")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"cannot set a key inside a {type(node).__name__} value", path=key, file="--set")
        given[key] = text
    return out, given
