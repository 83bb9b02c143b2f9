"""Where a path leads, links followed, and whether that is inside the project. No pydantic:
the project cache resolves its recorded path params again on every hit. atlas.paths builds
the param types on these (and is where handlers import them from)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable


def resolved(root: Path, value: str | Path) -> Path:
    """`value` (relative to `root`, or absolute) with every link followed."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else Path(root) / path).resolve()


class OutsideProject(ValueError):
    """A path that resolves outside every allowed root."""


def resolve_inside(root: Path, value: str | Path, allowed: Iterable[Path] = ()) -> Path:
    """`value` (relative to `root`, or absolute) resolved with its links; OutsideProject when
    it leaves `root` and every path in `allowed`."""
    root = Path(root).resolve()
    target = resolved(root, value)
    roots = [root, *(Path(a).expanduser().resolve() for a in allowed)]
    if not any(target == r or target.is_relative_to(r) for r in roots):
        where = "the project" if len(roots) == 1 else "the project or " + ", ".join(str(r) for r in roots[1:])
        raise OutsideProject(f"{value} resolves to {target}, outside {where}")
    return target
