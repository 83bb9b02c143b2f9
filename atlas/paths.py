"""Paths a manifest or a param names must stay inside the project (or inside a root the
project defaults name explicitly, such as an external dataset folder). Links count by
where they lead: a symlink out of the project is outside."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Iterable

from pydantic import AfterValidator, ValidationInfo

from atlas.resolve import OutsideProject, resolve_inside

__all__ = ["OutsideProject", "ProjectPath", "WeightsChoice", "files_inside", "lexical_problem", "resolve_inside"]


def lexical_problem(value: str) -> str | None:
    """Why `value` cannot name a place inside the project by its text alone (before any
    link is followed): absolute, climbing out with `..`, empty, or holding a NUL byte."""
    if not value or not value.strip():
        return "an empty path"
    if "\0" in value:
        return "a path with a NUL byte"
    if value.startswith(("/", "\\", "~")) or (len(value) > 1 and value[1] == ":"):
        return f"{value!r} is absolute; give a path relative to the project"
    if ".." not in value:                # the common case, decided without splitting
        return None
    depth = 0
    for part in value.replace("\\", "/").split("/"):
        depth += -1 if part == ".." else (0 if part in (".", "") else 1)
        if depth < 0:
            return f"{value!r} climbs out of the project with '..'"
    return None


def _inside_project(value: str, info: ValidationInfo) -> str:
    problem = lexical_problem(value)
    if problem:
        raise ValueError(problem)
    context = info.context or {}
    root = context.get("project_root")
    if root is not None:                 # validating against a real project: follow its links
        try:
            target = resolve_inside(Path(root), value)
        except OutsideProject as exc:
            raise ValueError(f"{exc} (a link that leaves the project counts as outside)") from None
        if context.get("checked_paths") is not None:     # the project cache checks them again
            context["checked_paths"].append((value, str(target)))
    return value


WEIGHT_WORDS = ("imagenet", "auto", "none")


def _weights_choice(value: str | None, info: ValidationInfo) -> str | None:
    """model weights: a keyword, or a .pth file inside the project."""
    return value if value is None or value in WEIGHT_WORDS else _inside_project(value, info)


WeightsChoice = Annotated[str, AfterValidator(_weights_choice)]


# A param naming a file or folder of the project: checked by its text, and where the
# loader passes the project root as validation context, by where its links lead.
ProjectPath = Annotated[str, AfterValidator(_inside_project)]


def files_inside(root: Path, paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Split files into those that resolve inside `root` and those
    a link takes outside it (never read: that would leak outside files)."""
    inside, outside = [], []
    for path in paths:
        try:
            resolve_inside(root, path)
            inside.append(path)
        except OutsideProject:
            outside.append(path)
    return inside, outside
