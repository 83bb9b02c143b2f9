"""Paths a manifest or a param names must stay inside the project (or inside a root the
project defaults name explicitly, such as an external dataset folder). Links count by
where they lead: a symlink out of the project is outside."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable


class OutsideProject(ValueError):
    """A path that resolves outside every allowed root."""


def resolve_inside(root: Path, value: str | Path, allowed: Iterable[Path] = ()) -> Path:
    """`value` (relative to `root`, or absolute) resolved with its links; OutsideProject when
    it leaves `root` and every path in `allowed`."""
    root = Path(root).resolve()
    path = Path(value).expanduser()
    target = (path if path.is_absolute() else root / path).resolve()
    roots = [root, *(Path(a).expanduser().resolve() for a in allowed)]
    if not any(target == r or target.is_relative_to(r) for r in roots):
        where = "the project" if len(roots) == 1 else "the project or " + ", ".join(str(r) for r in roots[1:])
        raise OutsideProject(f"{value} resolves to {target}, outside {where}")
    return target
