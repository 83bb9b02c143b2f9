"""YAML loading that remembers where every key and value stood.

PyYAML's composer gives nodes with marks; we build plain Python data from them and keep
a map from field path (a tuple of keys/indices) to (line, col), both 1-based, so a
pydantic error location like ('params', 'workspace_gb') points at the right line.
Duplicate keys, which PyYAML silently accepts, are reported here.
"""
from __future__ import annotations

from typing import Any

import yaml

from atlas.located import Located, Path_


class YamlSyntaxError(Exception):
    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# What one document may cost. A manifest is a few dozen values a handful of levels deep;
# these bounds are far above any real one and far below what hurts: `billion laughs`
# (nine levels of ten aliases: 10^9 values from 1.3 KB) or 100,000 `[` would otherwise
# take gigabytes, minutes, or the interpreter's stack.
MAX_VALUES = 100_000        # values built, keys and every alias re-visit included
MAX_DEPTH = 64              # nested mappings/lists (libyaml itself stops at 1,000)
MAX_INT_CHARS = 1_000       # an integer's text: `1:59:59:...` (base 60) is quadratic to build,
                            # and a longer one may not even print (Python's 4,300-digit limit)

_DEPTH_MESSAGE = f"YAML error: nested deeper than {MAX_DEPTH} levels"
_LIBYAML_DEPTH = "exceeded maximum nesting depth"


class _BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's own (pure-Python) loader, stopped where nesting passes MAX_DEPTH while it
    scans: its scanner revisits every open `[` for each new one, so 2,000 of them took
    1.4 s before the composer's RecursionError ended it. The error is libyaml's, so both
    loaders end the same way."""

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        # the block collections around it count too, as they do for the C loader's bound
        if self.flow_level + len(self.indents) >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, _LIBYAML_DEPTH, self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) > MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, _LIBYAML_DEPTH, self.get_mark())
        return super().add_indent(column)


# libyaml's composer when available: 5-10x faster on big projects, same marks.
_LOADER = getattr(yaml, "CSafeLoader", _BoundedSafeLoader)
# PyYAML's C composer recurses once per level. libyaml 0.2.6 stops at 1,000 levels; an
# older one (0.2.5, as some distributions build PyYAML) lets it recurse until the C stack
# runs out: 100,000 `[` killed Python 3.12 with SIGSEGV. There, a text that may nest that
# deep goes to the bounded pure-Python loader instead.
_LIBYAML_LEVELS = 1_000


def _libyaml_bounds_nesting() -> bool:
    try:
        from yaml import _yaml

        return tuple(_yaml.get_version()) >= (0, 2, 6)
    except (ImportError, AttributeError, TypeError):
        return _LOADER is _BoundedSafeLoader          # no libyaml at all: nothing to bound


_BOUNDED_BY_LIBYAML = _libyaml_bounds_nesting()


def _nesting_bound(text: str) -> int:
    """More levels than `text` can nest: one per `[` or `{`, and two per column of its
    longest line (a block collection starts right of its parent's, or at the same column
    for a list under a key)."""
    longest = max(map(len, text.split("\n")), default=0)
    return text.count("[") + text.count("{") + 2 * (longest + 1)


def _loader_for(text: str) -> type:
    if _BOUNDED_BY_LIBYAML or _LOADER is _BoundedSafeLoader or _nesting_bound(text) < _LIBYAML_LEVELS:
        return _LOADER
    return _BoundedSafeLoader


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index."""
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def load(text: str) -> Located:
    """Parse one YAML document; raise YamlSyntaxError with its position."""
    root = _compose(text)
    if root is None:
        return Located(None)
    try:
        return Located(_plain(root, 0, _Budget()), text=text)
    except _NotPlain:
        return _build_located(root)


def _load_located(text: str) -> Located:
    """`load`, with every position worked out now."""
    root = _compose(text)
    return Located(None) if root is None else _build_located(root)


def _compose(text: str) -> yaml.Node | None:
    loader = _loader_for(text)(text)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if exc.problem == _LIBYAML_DEPTH:     # libyaml's own bound on flow/block levels
            raise YamlSyntaxError(_DEPTH_MESSAGE, line, col) from None
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}: {problem}"
        raise YamlSyntaxError(f"YAML syntax error: {problem}", line, col) from None
    except yaml.reader.ReaderError as exc:   # a control character, or not UTF-8 after all
        line, col = _position(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlSyntaxError(f"YAML error: {exc.reason} (character U+{code:04X})", line, col) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"YAML error: {exc}", 1, 1) from None
    except RecursionError:                    # the pure-Python composer recurses per level
        line, col = getattr(loader, "line", 0) + 1, getattr(loader, "column", 0) + 1
        raise YamlSyntaxError(_DEPTH_MESSAGE, line, col) from None
    finally:
        loader.dispose()


def _build_located(root: yaml.Node) -> Located:
    located = Located(None)
    builder = _Builder(located)
    try:
        located.data = builder.build(root, (), 0)
    except yaml.MarkedYAMLError as exc:       # unknown tag (!foo), bad merge value
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML error: {exc.problem or exc}", line, col) from None
    except RecursionError:                    # not expected below MAX_DEPTH; never a traceback
        raise YamlSyntaxError(_DEPTH_MESSAGE, *_mark(root)) from None
    return located


class _NotPlain(Exception):
    """The document needs the full builder: a merge key, a key that is a list, a duplicate
    key, a tag, a bound reached, a value that does not construct."""


class _Budget:
    """What one fast build may still spend, and its constructor (made on first use: most
    values are text, which needs none)."""
    __slots__ = ("left", "_constructor")

    def __init__(self) -> None:
        self.left = MAX_VALUES
        self._constructor: yaml.SafeLoader | None = None

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:    # as _construct calls it
        if self._constructor is None:
            self._constructor = yaml.SafeLoader("")
        return self._constructor.construct_object(node, deep=deep)


def _plain(node: yaml.Node, depth: int, budget: _Budget) -> Any:
    """Plain data as _Builder makes it, counted as it counts, without positions; anything
    but a plain document raises _NotPlain and _Builder does it again, with its own error.
    An alias is built once per use here too: a recursive one reaches MAX_DEPTH."""
    budget.left -= 1
    if budget.left < 0:
        raise _NotPlain
    cls = type(node)
    if cls is yaml.ScalarNode:
        if node.tag == _STR:
            return node.value
        try:
            return _construct(node, budget)
        except Exception:
            raise _NotPlain from None
    if node.tag not in _PLAIN_TAGS or depth >= MAX_DEPTH:
        raise _NotPlain
    depth += 1
    if cls is yaml.SequenceNode:
        return [_plain(item, depth, budget) for item in node.value]
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if type(key_node) is not yaml.ScalarNode or key_node.tag == _MERGE:
            raise _NotPlain
        budget.left -= 1
        try:
            key = key_node.value if key_node.tag == _STR else _construct(key_node, budget)
            result[key] = _plain(value_node, depth, budget)
        except _NotPlain:
            raise
        except Exception:                     # a key that does not construct or hash
            raise _NotPlain from None
    if len(result) != len(node.value):        # a duplicate key: the full builder lists it
        raise _NotPlain
    return result


_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_NOT_PLAIN_KEY = "YAML error: a mapping key must be a plain value, not a mapping or a nested list"


class _Builder:
    """Plain data from a node graph, within MAX_VALUES and MAX_DEPTH.

    An alias is the very node object it names, so a repeated anchor is built (and counted)
    once per use; a node met again inside itself is a recursive alias.
    """

    def __init__(self, out: Located) -> None:
        self.positions, self.key_positions, self.duplicates = out._positions, out._key_positions, out.duplicates
        self.constructor = yaml.SafeLoader("")
        self.values = 0
        self.seen: set[int] = set()        # nodes built so far: meeting one again = an alias
        self.repeated = False
        self.open: set[int] = set()        # collections being built (the current path)

    def count(self, node: yaml.Node, n: int = 1) -> None:
        self.values += n
        if id(node) in self.seen:
            self.repeated = True
        else:
            self.seen.add(id(node))
        if self.values > MAX_VALUES:
            why = "aliases repeat a large anchor" if self.repeated else "far more than a manifest holds"
            raise YamlSyntaxError(f"YAML error: the document expands to more than {MAX_VALUES:,} "
                                  f"values ({why})", *_mark(node))

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.count(node)
        self.positions[path] = _mark(node)
        if not isinstance(node, yaml.CollectionNode):
            return _construct(node, self.constructor)
        if node.tag not in _PLAIN_TAGS:      # !!set, !secret {...}
            raise YamlSyntaxError(f"YAML error: the tag {node.tag!r} is not supported here", *_mark(node))
        if id(node) in self.open:            # `a: &x [*x]`
            raise YamlSyntaxError("YAML error: an anchor is used inside itself (recursive alias)",
                                  *_mark(node))
        if depth >= MAX_DEPTH:
            raise YamlSyntaxError(_DEPTH_MESSAGE, *_mark(node))
        self.open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            result: Any = self._mapping(node, path, depth + 1)
        else:
            result = [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        self.open.discard(id(node))
        return result

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        own_keys: set[Any] = set()
        for key_node, value_node, merged in self._pairs(node, {id(node)}):
            key = self._key(key_node)
            child = path + (key,)
            if not merged:
                if key in own_keys:
                    self.duplicates.append((child, _mark(key_node)))
                own_keys.add(key)
            self.key_positions[child] = _mark(key_node)
            result[key] = self.build(value_node, child, depth)
        return result

    def _key(self, node: yaml.Node) -> Any:
        """A scalar, or a flat list of scalars as a tuple: built without recursing."""
        if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_TAGS:
            raise YamlSyntaxError(f"YAML error: the tag {node.tag!r} is not supported here", *_mark(node))
        if isinstance(node, yaml.MappingNode) or (
                isinstance(node, yaml.SequenceNode)
                and not all(isinstance(item, yaml.ScalarNode) for item in node.value)):
            raise YamlSyntaxError(_NOT_PLAIN_KEY, *_mark(node))
        if isinstance(node, yaml.SequenceNode):
            self.count(node, 1 + len(node.value))
            key: Any = tuple(_construct(item, self.constructor) for item in node.value)
        else:
            self.count(node)
            key = _construct(node, self.constructor)
        try:
            hash(key)
        except TypeError:
            raise YamlSyntaxError(_NOT_PLAIN_KEY, *_mark(node)) from None
        return key

    def _pairs(self, node: yaml.MappingNode, merging: set[int]) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """(key, value, merged) of a mapping, `<<` merge keys expanded as yaml.safe_load does:
        merged entries first (so the mapping's own keys override them), earlier sources win.
        `merging` holds the mappings whose merges are being expanded: a loop, and the
        chain's length, are bounded like nesting."""
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
                if id(source) in merging:
                    raise YamlSyntaxError("YAML error: a mapping merges itself (<< with a recursive "
                                          "alias)", *_mark(source))
                if len(merging) >= MAX_DEPTH:
                    raise YamlSyntaxError(f"YAML error: merge keys (<<) nested deeper than {MAX_DEPTH} "
                                          "levels", *_mark(source))
                merging.add(id(source))
                pairs = self._pairs(source, merging)
                merging.discard(id(source))
                self.count(source, len(pairs))
                merged += [(k, v, True) for k, v, _ in pairs]
        return merged + own


def _construct(node: yaml.Node, constructor: yaml.SafeLoader | _Budget) -> Any:
    if node.tag == _STR and isinstance(node, yaml.ScalarNode):
        return node.value          # most scalars: skip the constructor (a third of load time)
    if node.tag == _INT and isinstance(node, yaml.ScalarNode):
        text = node.value
        if len(text) > MAX_INT_CHARS:
            raise YamlSyntaxError(f"YAML error: a number of {len(text):,} characters is too long "
                                  f"(the limit is {MAX_INT_CHARS:,})", *_mark(node))
        if text.isascii() and text.isdigit() and (text[0] != "0" or text == "0"):
            return int(text)       # plain decimal, as SafeConstructor reads it (0... is octal)
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError:
        raise
    except Exception as exc:                  # `!!int foo`, `!!timestamp nope`
        raise YamlSyntaxError(f"YAML error: {node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]} "
                              f"({exc})", *_mark(node)) from None
