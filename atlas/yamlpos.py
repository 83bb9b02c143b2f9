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
    located.data = _build(root, (), located, constructor)
    return located


def _build(node: yaml.Node, path: Path_, out: Located, constructor: yaml.SafeLoader) -> Any:
    out.positions[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if isinstance(key, list):
                key = tuple(key)
            child = path + (key,)
            if key in result:
                out.duplicates.append((child, _mark(key_node)))
            out.key_positions[child] = _mark(key_node)
            result[key] = _build(value_node, child, out, constructor)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), out, constructor) for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)
