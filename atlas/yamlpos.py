"""YAML loading that remembers where every key and value stood.

PyYAML's composer gives nodes with marks; we build plain Python data from them and keep
a map from field path (a tuple of keys/indices) to (line, col), both 1-based, so a
pydantic error location like ('params', 'workspace_gb') points at the right line.
Duplicate keys, which PyYAML silently accepts, are reported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[Any, ...]
# libyaml's composer when available: 5-10x faster on big projects, same marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Located:
    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Path_, tuple[int, int]]] = field(default_factory=list)

    def where(self, path: Path_, key: bool = False) -> tuple[int, int]:
        """Closest known position for a path: the path itself, else its nearest parent."""
        path = tuple(path)
        table = self.key_positions if key else self.positions
        while path:
            if path in table:
                return table[path]
            if not key and path in self.key_positions:
                return self.key_positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))


class YamlSyntaxError(Exception):
    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load(text: str) -> Located:
    """Parse one YAML document; raise YamlSyntaxError with its position."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}: {problem}"
        raise YamlSyntaxError(f"YAML syntax error: {problem}", line, col) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"YAML error: {exc}", 1, 1) from None
    located = Located(None)
    if root is None:
        return located
    constructor = yaml.SafeLoader("")
    try:
        located.data = _build(root, (), located, constructor)
    except yaml.MarkedYAMLError as exc:       # unknown tag (!foo), bad merge value
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML error: {exc.problem or exc}", line, col) from None
    except RecursionError:                    # `a: &x [*x]`
        raise YamlSyntaxError("YAML error: an anchor is used inside itself (recursive alias)",
                              *_mark(root)) from None
    return located


_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _pairs(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node, bool]]:
    """(key, value, merged) of a mapping, `<<` merge keys expanded as yaml.safe_load does:
    merged entries first (so the mapping's own keys override them), earlier sources win."""
    merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
    own: list[tuple[yaml.Node, yaml.Node, bool]] = []
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE:
            own.append((key_node, value_node, False))
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise YamlSyntaxError("YAML error: a merge key (<<) takes a mapping or a list of "
                                      "mappings", *_mark(source))
            merged += [(k, v, True) for k, v, _ in _pairs(source)]
    return merged + own


def _build(node: yaml.Node, path: Path_, out: Located, constructor: yaml.SafeLoader) -> Any:
    out.positions[path] = _mark(node)
    if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_TAGS:   # !!set, !secret {...}
        raise YamlSyntaxError(f"YAML error: the tag {node.tag!r} is not supported here", *_mark(node))
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        own_keys: set[Any] = set()
        for key_node, value_node, merged in _pairs(node):
            key = _construct(key_node, constructor)
            if isinstance(key, list):
                key = tuple(key)
            try:
                hash(key)
            except TypeError:
                raise YamlSyntaxError("YAML error: a mapping key must be a plain value, "
                                      "not a mapping or a nested list", *_mark(key_node)) from None
            child = path + (key,)
            if not merged:
                if key in own_keys:
                    out.duplicates.append((child, _mark(key_node)))
                own_keys.add(key)
            out.key_positions[child] = _mark(key_node)
            result[key] = _build(value_node, child, out, constructor)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), out, constructor) for i, item in enumerate(node.value)]
    return _construct(node, constructor)


_STR = "tag:yaml.org,2002:str"


def _construct(node: yaml.Node, constructor: yaml.SafeLoader) -> Any:
    if node.tag == _STR and isinstance(node, yaml.ScalarNode):
        return node.value          # most scalars: skip the constructor (a third of load time)
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError:
        raise
    except Exception as exc:                  # `!!int foo`, `!!timestamp nope`
        raise YamlSyntaxError(f"YAML error: {node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]} "
                              f"({exc})", *_mark(node)) from None
