"""The project cache: a valid project, as the last full load found it, in
.atlas/cache/project.json.

A hit needs no YAML parsing, no pydantic, no handler import and no networkx: `atlas
validate` and `atlas plan` on unchanged manifests cost a few stat() calls. The cache is
trusted only while everything the load read is as it was (size, mtime, ctime and inode,
as make, ninja and DVC judge files):
- every manifest in tasks/ (and the listing itself: a file added or removed),
- the handlers' code (the files their fingerprints digest, and the folders holding them)
  and atlas's own modules,
- the import path but its first entry (installing a package changes a folder on it,
  and with it the handlers that entry points name),
- every path param: each is resolved again, links followed, and must lead where it led.
Anything else, or any doubt (a missing or unreadable cache, another atlas version), is a
miss: the full load runs, reports every problem as before, and rewrites the cache only
for a valid project. Only projects whose handlers come from entry points are cached.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from atlas import __version__
from atlas.project import TASKS_DIR, Project, Step, StepInfo
from atlas.resolve import resolved

if TYPE_CHECKING:
    from atlas.registry import Registry

FORMAT = 1
CACHE_FILE = Path(".atlas") / "cache" / "project.json"
# A file changed less than this long ago is not trusted to a signature: a second change
# within one tick of a coarse clock (2 s on FAT, 1 s on some network filesystems) could
# leave size and times as they were (git's "racy" files)
RACY_NS = 2_000_000_000
_ATLAS_DIR = Path(__file__).resolve().parent


def open_project(root: Path, registry: "Registry | None" = None) -> Project:
    """The project at `root`: from the cache when nothing it depends on changed, else
    loaded in full (InvalidManifests listing every problem), and then cached."""
    if registry is None:
        cached = read(root)
        if cached is not None:
            return cached
    from atlas.loader import load_project

    if registry is not None:            # in-memory handler classes: nothing to key them on
        return load_project(root, registry)
    try:
        manifests = _tasks_listing(root)    # taken before reading: a later edit is a miss next time
    except OSError:
        return load_project(root)           # it says what it cannot read
    checked_paths: list = []
    project = load_project(root, checked_paths=checked_paths)
    write(root, project, manifests, checked_paths)
    return project


def _signature(path: Path | str) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino]


def _tasks_listing(root: Path) -> dict[str, list[int] | None]:
    listing: dict[str, list[int] | None] = {}
    with os.scandir(root / TASKS_DIR) as entries:
        for entry in entries:
            if entry.name.endswith((".yaml", ".yml")):
                listing[entry.name] = _signature(entry.path)     # links followed, as the loader reads
    return listing


def _import_path() -> list[list]:
    # sys.path[0] is left out: it is the script's folder under `atlas`, the current one
    # under `python -m atlas`, and the two should share one cache
    return [[p, _signature(p or ".")] for p in sys.path[1:]]


def _code_signatures(project: Project) -> dict[str, list[int] | None] | None:
    """Signatures of the handlers' code files, their folders, and atlas's own modules;
    None when a handler names code that does not exist (its digest would change the day
    it appears, which no signature here would notice)."""
    from atlas.codedigest import code_files

    files: set[Path] = {p for p in _ATLAS_DIR.glob("*.py")}
    seen: set[type] = set()
    for step in project.steps.values():
        handler = step.handler
        if handler in seen:
            continue
        seen.add(handler)
        for _, file in code_files(handler.__module__, tuple(handler.code_modules)):
            if file is None:
                return None
            files.add(file)
    folders = {f.parent for f in files}
    return {str(p): _signature(p) for p in sorted(files | folders)}


def write(root: Path, project: Project, manifests: dict, checked_paths: list) -> None:
    """Keep a valid project; a cache that cannot be written is no error (a read-only
    project works without it)."""
    from atlas.atomic import write_atomically

    code = _code_signatures(project)
    if code is None:
        return
    recent = time.time_ns() - RACY_NS
    if any(sig is not None and sig[0] > recent for sig in [*manifests.values(), *code.values()]):
        return                           # written again by a later call, once the files have settled
    data = {"format": FORMAT, "atlas": __version__, "root": str(root), "import_path": _import_path(),
            "tasks": manifests, "files": code, "paths": [list(p) for p in checked_paths],
            "settings": project.settings,
            "graph": {"levels": project.graph.levels, "preds": project.graph.preds},
            "steps": {task: {"file": step.file, "info": step.info.as_data()} for task, step in project.steps.items()}}
    try:
        write_atomically(root / CACHE_FILE, json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    except OSError:
        pass


def read(root: Path) -> Project | None:
    """The cached project when every signature still holds, else None."""
    from atlas.atomic import read_regular

    raw = read_regular(root / CACHE_FILE)       # none yet, or not a regular file
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if not _still_holds(root, data):
            return None
        return _project_of(root, data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _still_holds(root: Path, data: dict) -> bool:
    if data.get("format") != FORMAT or data.get("atlas") != __version__ or data.get("root") != str(root):
        return False
    if data["import_path"] != _import_path() or data["tasks"] != _tasks_listing(root):
        return False
    if any(_signature(path) != sig for path, sig in data["files"].items()):
        return False
    return all(str(resolved(root, value)) == target for value, target in data["paths"])


def _project_of(root: Path, data: dict) -> Project:
    from atlas.graph import Dag

    def load_fully() -> Project:
        from atlas.loader import load_project

        return load_project(root)

    project = Project(root, data["settings"], {}, Dag(data["graph"]["levels"], data["graph"]["preds"]),
                      load=load_fully)
    project.steps = {task: Step(task, entry["file"], StepInfo.from_data(entry["info"]), load=project.load_fully)
                     for task, entry in data["steps"].items()}
    return project

