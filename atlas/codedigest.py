"""What a handler's code is, for its fingerprint: its own module, every module of its own
package that it imports (at the top or inside a function, transitively), and whatever it
names in `code_modules` (a module run as `python -m`, a folder of templates).

Imports are read from the source lines, never executed: the shared ML code imports torch,
which `atlas plan` must not. So a step re-runs when a file it really uses changes, and
editing one step's own module re-runs that step alone.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

# `from a.b import c, d` / `from .b import (c as e,` / `import a.b` at the start of a line
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+\(?([\w \t,]*)|import[ \t]+([\w.]+))", re.M)
_SKIP = {"__pycache__"}


@lru_cache(maxsize=None)
def _top_location(top: str) -> tuple[Path | None, bool]:
    """(folder of a top-level package or file of a top-level module, is-package)."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None, False
    if spec is None:
        return None, False
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]), True
    return (Path(spec.origin), False) if spec.origin else (None, False)


def module_path(name: str) -> Path | None:
    """The file (module) or folder (package, or a plain folder such as templates) that a
    dotted name stands for, found without importing it; None when it does not exist."""
    top, *rest = name.split(".")
    base, is_package = _top_location(top)
    if base is None or (rest and not is_package):
        return None
    if not rest:
        return base
    path = base.joinpath(*rest)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path if path.is_dir() else None


def _resolve(current: str, is_package: bool, target: str) -> str:
    """An import's absolute module name (relative imports resolved against `current`)."""
    dots = len(target) - len(target.lstrip("."))
    if not dots:
        return target
    parts = current.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (dots - 1)]
    rest = target[dots:]
    return ".".join(base + ([rest] if rest else []))


def imported_names(source: str, current: str, is_package: bool) -> set[str]:
    """Every module name an import line of `source` may load, parents included."""
    found: set[str] = set()
    for frm, names, plain in _IMPORT.findall(source):
        if plain:
            found.add(plain)
            continue
        base = _resolve(current, is_package, frm)
        found.add(base)
        for item in names.split(","):
            word = item.split()
            if word:
                found.add(f"{base}.{word[0]}")   # `from pkg import module` loads pkg.module
    parents = {".".join(n.split(".")[:i]) for n in found for i in range(1, n.count(".") + 1)}
    return {n for n in found | parents if n}


@lru_cache(maxsize=None)
def code_closure(module_name: str) -> tuple[tuple[str, Path], ...]:
    """(name, file) of the module and of every module of its top-level package it imports,
    transitively, sorted by name."""
    top = module_name.split(".")[0]
    seen: dict[str, Path] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name)
        if path is None:
            continue
        file = path / "__init__.py" if path.is_dir() else path
        if not file.is_file():
            continue
        seen[name] = file
        source = file.read_text(encoding="utf-8", errors="replace")
        todo += [n for n in imported_names(source, name, path.is_dir())
                 if n.split(".")[0] == top and n not in seen]
    return tuple(sorted(seen.items()))


def _files_of(name: str) -> list[tuple[str, Path]]:
    """(label, file) of a module, or of every file in a package or folder."""
    path = module_path(name)
    if path is None:
        return []
    if path.is_file():
        return [(name, path)]
    return sorted((f"{name}/{f.relative_to(path).as_posix()}", f) for f in path.rglob("*")
                  if f.is_file() and not _SKIP & set(f.parts) and f.suffix != ".pyc")


def code_files(module_name: str, extra: tuple[str, ...] = ()) -> list[tuple[str, Path | None]]:
    """(label, file) of everything code_digest reads; None for an extra that does not exist."""
    files: list[tuple[str, Path | None]] = list(code_closure(module_name))
    for name in sorted(extra):
        files += _files_of(name) or [(name, None)]
    return files


@lru_cache(maxsize=None)
def code_digest(module_name: str, extra: tuple[str, ...] = ()) -> str:
    """12 hex digits over the closure's files and the extra modules or folders."""
    h = hashlib.sha256()
    for label, file in code_files(module_name, extra):
        h.update(label.encode() + b"\0")
        if file is None:
            h.update(b"missing\0")
            continue
        try:
            h.update(file.read_bytes())
        except OSError:
            h.update(b"unreadable\0")
    return h.hexdigest()[:12]


def clear_cache() -> None:
    """Forget the digests (tests edit sources within one process)."""
    for cached in (_top_location, code_closure, code_digest):
        cached.cache_clear()
