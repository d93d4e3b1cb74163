"""A strict, safe YAML loader for study files: bounded size, no duplicate keys, line numbers.

:func:`load_yaml` parses a document with PyYAML's safe parser and builds plain Python
values (dict, list, str, int, float, bool, None, dates) itself, so that it can refuse
what ``yaml.safe_load`` accepts silently or dies on:

- **alias bombs** ("billion laughs": a few lines of anchors and aliases that expand to
  gigabytes): values are counted while the tree is built, aliases expanded included;
  past ``max_values`` the load stops with one line naming the outermost alias being
  expanded, its line and key path. A recursive alias (``a: &a [*a]``) is refused too.
- **duplicate keys** in one mapping: an error naming both lines (``<<`` merge keys are
  supported: merged keys may be overridden, explicit keys may not repeat).
- over-long files (``max_chars``) and over-deep nesting (``max_depth``).

Numbers follow YAML 1.2's core schema as well as YAML 1.1: ``1e-3``, ``1e400`` and
``1.0e5`` are floats (PyYAML alone reads them as strings), so a number that overflows
(``1e400`` -> inf) reaches the schema as the non-finite float it is. Non-finite numbers
(``.inf``, ``.nan``, overflows) are NOT refused here: the schema decides which settings
may be infinite (``allow_inf_nan=False`` on the study's models; none may today).

Every key and every sequence item gets its 1-based line in :attr:`YamlDocument.lines`,
keyed by the key path as a tuple (``("search", "configurations", 1, "t")``; ``()`` is the
document itself). Errors are :class:`YamlLoadError` with ``line`` and ``path``; this module
knows nothing of the study schema and imports only PyYAML.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["YamlDocument", "YamlLoadError", "load_yaml", "MAX_VALUES", "MAX_DEPTH", "MAX_CHARS"]

MAX_VALUES = 100_000
"""Values (scalars, lists, mappings) a document may expand to; a study file has a few hundred."""
MAX_DEPTH = 64
"""Nesting of lists and mappings (a study file needs 5)."""
MAX_CHARS = 256 * 1024
"""Characters of text (a study file has a few thousand; parsing 256 KiB takes about a second)."""

_MERGE = "tag:yaml.org,2002:merge"
_STD_TAGS = {
    "tag:yaml.org,2002:seq": SequenceNode,
    "tag:yaml.org,2002:map": MappingNode,
}
_PLAIN_TYPES = (str, int, float, bool, type(None), datetime.date, datetime.datetime, bytes)


class YamlLoadError(ValueError):
    """The text is not a usable YAML document. ``line`` is 1-based (None when unknown),
    ``path`` the dotted key path where it happened ("" for the document), ``message``
    the explanation without the location."""

    def __init__(self, message: str, *, line: int | None = None, path: str = ""):
        self.message = message
        self.line = line
        self.path = path
        where = f"line {line}: " if line else ""
        super().__init__(f"{where}{path + ': ' if path else ''}{message}")


@dataclass(frozen=True)
class YamlDocument:
    """A loaded document: ``data`` (a tree without shared objects: aliases are copied)
    and ``lines`` (key path tuple -> 1-based line of the key or item)."""

    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)


class _Alias:
    """What our composer returns for ``*name``: the anchored node and where the alias is."""

    __slots__ = ("node", "anchor", "mark")

    def __init__(self, node: Node, anchor: str, mark: Any):
        self.node = node
        self.anchor = anchor
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, composing aliases as :class:`_Alias` markers (the
    C loader hides them) and resolving YAML 1.2 exponent numbers (``1e-3``) as floats."""

    def compose_node(self, parent: Node | None, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # consumes the event; undefined alias: ComposerError
            return _Alias(node, event.anchor, event.start_mark)
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|[-+]?\.[0-9][0-9_]*[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


class _Builder:
    """Builds plain values from the composed node graph, counting every value made."""

    def __init__(self, loader: _Loader, max_values: int, max_depth: int):
        self.loader = loader
        self.max_values = max_values
        self.max_depth = max_depth
        self.count = 0
        self.lines: dict[tuple[Any, ...], int] = {}
        # the aliases being expanded, outermost first: (alias, key path where it is used)
        self.expanding: list[tuple[_Alias, tuple[Any, ...]]] = []

    # -- errors ------------------------------------------------------------------------

    def _too_big(self, node: Node, path: tuple[Any, ...]) -> YamlLoadError:
        if self.expanding:
            alias, where = self.expanding[0]
            chain = " -> ".join(f"*{a.anchor}" for a, _ in self.expanding[:4])
            more = " -> ..." if len(self.expanding) > 4 else ""
            return YamlLoadError(
                f"the alias *{alias.anchor} makes the document expand to more than {self.max_values:,} values "
                f"(through {chain}{more}); a study file needs a few hundred: write the values out or remove "
                "the aliases that repeat other aliases",
                line=alias.mark.line + 1, path=_dotted(where),
            )
        return YamlLoadError(
            f"the document has more than {self.max_values:,} values; a study file needs a few hundred",
            line=node.start_mark.line + 1, path=_dotted(path),
        )

    def _tick(self, node: Node, path: tuple[Any, ...]) -> None:
        self.count += 1
        if self.count > self.max_values:
            raise self._too_big(node, path)

    # -- building ----------------------------------------------------------------------

    def build(self, item: Any, path: tuple[Any, ...]) -> Any:
        """The value of ``item`` (a node or an alias) found at ``path``."""
        if isinstance(item, _Alias):
            for active, _ in self.expanding:
                if active.node is item.node:
                    raise YamlLoadError(
                        f"the alias *{item.anchor} refers to a value that contains it (a recursive alias); "
                        "a study file cannot hold a cycle",
                        line=item.mark.line + 1, path=_dotted(path),
                    )
            self.expanding.append((item, path))
            try:
                return self.build(item.node, path)
            finally:
                self.expanding.pop()
        node: Node = item
        if len(path) > self.max_depth:
            raise YamlLoadError(
                f"lists and mappings are nested more than {self.max_depth} levels deep",
                line=node.start_mark.line + 1, path=_dotted(path[:8]) + (".…" if len(path) > 8 else ""),
            )
        self._tick(node, path)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        expected = _STD_TAGS.get(node.tag)
        if expected is None or not isinstance(node, expected):
            raise YamlLoadError(
                f"the tag {node.tag!r} is not supported in a study file; use plain lists and mappings",
                line=node.start_mark.line + 1, path=_dotted(path),
            )
        if isinstance(node, SequenceNode):
            out = []
            for i, child in enumerate(node.value):
                self.lines[path + (i,)] = _node_of(child).start_mark.line + 1
                out.append(self.build(child, path + (i,)))
            return out
        return self._mapping(node, path)

    def _scalar(self, node: ScalarNode, path: tuple[Any, ...]) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            raise YamlLoadError(
                f"the tag {node.tag!r} is not supported in a study file; write a plain value",
                line=node.start_mark.line + 1, path=_dotted(path),
            ) from None
        except (ValueError, OverflowError) as exc:  # e.g. a timestamp such as 2024-13-45
            raise YamlLoadError(f"cannot read the value {node.value!r}: {exc}", line=node.start_mark.line + 1,
                                path=_dotted(path)) from None
        if not isinstance(value, _PLAIN_TYPES):
            raise YamlLoadError(f"the tag {node.tag!r} is not supported in a study file",
                                line=node.start_mark.line + 1, path=_dotted(path))
        return value

    def _key(self, node: Any, path: tuple[Any, ...]) -> Any:
        key_node = _node_of(node)
        if not isinstance(key_node, ScalarNode):
            raise YamlLoadError("a key must be a plain value (a name or a number), not a list or a mapping",
                                line=key_node.start_mark.line + 1, path=_dotted(path))
        self._tick(key_node, path)
        return self._scalar(key_node, path)

    def _mapping(self, node: MappingNode, path: tuple[Any, ...]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        explicit: dict[Any, int] = {}  # key -> line of its first explicit occurrence
        merged: dict[Any, Any] = {}
        merged_lines: dict[Any, int] = {}
        for key_item, value_item in node.value:
            key_node = _node_of(key_item)
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                self._merge(value_item, path, merged, merged_lines)
                continue
            key = self._key(key_item, path)
            line = key_node.start_mark.line + 1
            if key in explicit:
                raise YamlLoadError(
                    f"duplicate key {key!r}: first at line {explicit[key]}, again at line {line}; "
                    "a key may appear once per mapping (YAML would silently keep the last one): remove one",
                    line=line, path=_dotted(path + (key,)),
                )
            explicit[key] = line
            self.lines[path + (key,)] = line
            out[key] = self.build(value_item, path + (key,))
        for key, value in merged.items():  # explicit keys override merged ones
            if key not in out:
                out[key] = value
                self.lines.setdefault(path + (key,), merged_lines[key])
        return {k: out[k] for k in [*merged, *explicit] if k in out} if merged else out

    def _merge(self, item: Any, path: tuple[Any, ...], merged: dict[Any, Any], lines: dict[Any, int]) -> None:
        """``<<: *base`` or ``<<: [*a, *b]``: earlier sources win, as in YAML 1.1."""
        target = _node_of(item)
        sources = [item] if isinstance(target, MappingNode) else list(target.value) if isinstance(target, SequenceNode) else None
        if sources is None or not all(isinstance(_node_of(s), MappingNode) for s in sources):
            raise YamlLoadError("a merge key (<<) needs a mapping or a list of mappings",
                                line=target.start_mark.line + 1, path=_dotted(path))
        for src in sources:
            before = dict(self.lines)
            value = self.build(src, path)  # counts the merged values; records lines under path
            self.lines = before
            src_node = _node_of(src)
            key_lines = {}
            for k_item, _ in src_node.value:
                k_node = _node_of(k_item)
                if isinstance(k_node, ScalarNode) and k_node.tag != _MERGE:
                    key_lines[self._scalar(k_node, path)] = k_node.start_mark.line + 1
            for k, v in value.items():
                if k not in merged:
                    merged[k] = v
                    lines[k] = key_lines.get(k, src_node.start_mark.line + 1)
                    self._record_lines(v, path + (k,), lines[k])

    def _record_lines(self, value: Any, path: tuple[Any, ...], line: int) -> None:
        """Merged values: every path inside gets the line of its merged key (good enough
        for error messages; the exact lines are in the merged source)."""
        if isinstance(value, dict):
            for k, v in value.items():
                self.lines.setdefault(path + (k,), line)
                self._record_lines(v, path + (k,), line)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.lines.setdefault(path + (i,), line)
                self._record_lines(v, path + (i,), line)


def _node_of(item: Any) -> Node:
    return item.node if isinstance(item, _Alias) else item


def load_yaml(
    text: str, *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH, max_chars: int = MAX_CHARS
) -> YamlDocument:
    """Parse one YAML document strictly (see the module docstring). An empty document
    gives ``data=None``. Raises :class:`YamlLoadError`."""
    if len(text) > max_chars:
        raise YamlLoadError(f"the file has {len(text):,} characters, more than the {max_chars:,} a study file may have")
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
            if problem.startswith("but found another document"):
                problem = "a study file is one YAML document; remove the second one (after ---)"
            elif context and context.startswith("found duplicate anchor") and context_mark is not None:
                problem = f"{context.split(';')[0]}: first at line {context_mark.line + 1}, again here; rename one"
            raise YamlLoadError(f"YAML syntax error: {problem}", line=mark.line + 1 if mark else None) from None
        except RecursionError:
            raise YamlLoadError(f"lists and mappings are nested too deeply (a study file needs 5 levels, at most {max_depth})") from None
        if root is None:
            return YamlDocument(None, {})
        builder = _Builder(loader, max_values, max_depth)
        builder.lines[()] = _node_of(root).start_mark.line + 1
        data = builder.build(root, ())
        return YamlDocument(data, builder.lines)
    finally:
        loader.dispose()
