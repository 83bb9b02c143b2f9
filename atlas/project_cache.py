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
When only manifests changed (edited, added, removed; not tasks/project.yaml), only those
are read again, and checked with everything that links them to the others
(atlas.loader.load_changed). The order of the graph is kept once a command asked for it:
a load only checks that there is no cycle, and the first plan or run after it orders the
graph with networkx and writes the order here.
Anything else, or any doubt (a missing or unreadable cache, another atlas version, a
problem in a changed manifest), is a miss: the full load runs, reports every problem as
before, and rewrites the cache only for a valid project. Only projects whose handlers
come from entry points are cached.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from atlas import __version__, signature
from atlas.project import DEFAULTS_FILE, TASKS_DIR, Project, Step, StepInfo
from atlas.resolve import resolved

if TYPE_CHECKING:
    from atlas.graph import Dag
    from atlas.registry import Registry

FORMAT = 3                               # 3: the graph's levels may be null (not ordered yet)
CACHE_FILE = Path(".atlas") / "cache" / "project.json"
# A file changed less than this long ago is not trusted to a signature: a second change
# within one tick of a coarse clock (2 s on FAT, 1 s on some network filesystems) could
# leave size and times as they were (git's "racy" files)
RACY_NS = 2_000_000_000
_ATLAS_DIR = Path(__file__).resolve().parent


def open_project(root: Path, registry: "Registry | None" = None, order: bool = True) -> Project:
    """The project at `root`: from the cache when nothing it depends on changed; with only
    the changed manifests read again when only manifests changed; else loaded in full
    (InvalidManifests listing every problem). A valid result is cached. `order`: the
    command will ask for the graph's order, so a load has networkx order it before the
    cache is written (False for `atlas validate`, which only needs to know it has no cycle)."""
    if registry is None:
        data = _read(root)                  # None: no cache, or not one for this atlas and code
        try:
            # a hit compares every manifest's signature, taken before anything is read (a
            # later edit is a miss next time); without a cache, each read takes its own
            listing = _tasks_listing(root, signed=data is not None)
        except OSError:
            listing = None                  # the full load says what it cannot read
        if data is not None and listing is not None:
            try:
                project = _from_cache(root, data, listing, order)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                project = None              # a cache of the right format, damaged: load in full
            if project is not None:
                return project
    if registry is not None or listing is None:     # in-memory handlers: nothing to key them on
        from atlas.loader import load_project
        return load_project(root, registry)
    # A miss: the manifests are read (on two cores, where there are many) while the loader
    # imports pydantic and the manifest models (and networkx, to order), then checks each
    # one alone as it comes in while the rest are read. A hit imports none of these.
    from atlas import manifest_file

    files = manifest_file.manifest_paths(root, listing)
    manifests = len(files)
    if DEFAULTS_FILE in listing:
        # read with the manifests, last (the other core reads from the end: first), so that
        # this process needs no YAML parser at all for a valid project
        files.append(os.path.join(root, TASKS_DIR, DEFAULTS_FILE))
    prechecks: list = []

    def import_loader() -> None:
        _import_loader_to_order() if order else _import_loader()
        from atlas.loader import Prechecks

        prechecks.append(Prechecks(root))

    def precheck(index: int, read: "manifest_file.Read") -> None:
        if index < manifests:
            prechecks[0].add(files[index], read[1])

    reads = manifest_file.read_all(files, before=import_loader, then=precheck)
    for path, (sig, _) in zip(files, reads):
        name = os.path.basename(path)
        if listing[name] is None:
            listing[name] = sig
    for name, sig in listing.items():
        if sig is None:                     # names no manifest has: before the load reads them
            listing[name] = signature.of_path(root / TASKS_DIR / name)
    from atlas.loader import load_project

    checked_paths: dict = {}
    read_ahead = [(path, located) for path, (_, located) in zip(files[:manifests], reads)]
    defaults_read = reads[manifests][1] if len(files) > manifests else None
    project = load_project(root, checked_paths=checked_paths, read_ahead=read_ahead, prechecked=prechecks[0],
                           defaults_read=defaults_read)
    write(root, project, listing, checked_paths, order=order)
    return project


def _import_loader() -> None:
    from atlas.loader import load_project  # noqa: F401


def _import_loader_to_order() -> None:
    import networkx  # noqa: F401

    _import_loader()


def _from_cache(root: Path, data: dict, listing: dict, order: bool) -> Project | None:
    changed = {name for name in listing.keys() | data["tasks"].keys() if listing.get(name) != data["tasks"].get(name)}
    if not changed:
        return _project_of(root, data) if _paths_hold(root, data["paths"].values()) else None
    if DEFAULTS_FILE in changed:
        return None                         # every manifest is checked against the defaults
    return _reload(root, data, changed, listing, order)


def _reload(root: Path, data: dict, changed: set[str], listing: dict, order: bool) -> Project | None:
    """The cached project with the changed manifests read again (atlas.loader.load_changed);
    None when the full load must decide."""
    from atlas.loader import load_changed
    from atlas.registry import Registry

    known = _project_of(root, data)
    paths = data["paths"]
    checked_paths = {"": paths[""], **{task: paths[task] for task, step in known.steps.items()
                                       if Path(step.file).name not in changed}}
    if not _paths_hold(root, checked_paths.values()):
        return None
    registry = Registry()
    project = load_changed(root, known, changed, registry, checked_paths)
    if project is not None:
        write(root, project, listing, checked_paths, registry, order=order)
    return project


def _tasks_listing(root: Path, signed: bool = True) -> dict[str, list[int] | None]:
    """The YAML files in tasks/, with their signatures (None for each when not `signed`)."""
    listing: dict[str, list[int] | None] = {}
    with os.scandir(root / TASKS_DIR) as entries:
        for entry in entries:
            if entry.name.endswith((".yaml", ".yml")):
                listing[entry.name] = signature.of_path(entry.path) if signed else None
    return listing


def _import_path() -> list[list]:
    # sys.path[0] is left out: it is the script's folder under `atlas`, the current one
    # under `python -m atlas`, and the two should share one cache
    return [[p, signature.of_path(p or ".")] for p in sys.path[1:]]


def _code_signatures(handlers: set[type]) -> dict[str, list[int] | None] | None:
    """Signatures of the handlers' code files, their folders, and atlas's own modules;
    None when a handler names code that does not exist (its digest would change the day
    it appears, which no signature here would notice)."""
    from atlas.codedigest import code_files

    files: set[Path] = {p for p in _ATLAS_DIR.glob("*.py")}
    for handler in handlers:
        for _, file in code_files(handler.__module__, tuple(handler.code_modules)):
            if file is None:
                return None
            files.add(file)
    folders = {f.parent for f in files}
    return {str(p): signature.of_path(p) for p in sorted(files | folders)}


def write(root: Path, project: Project, listing: dict, checked_paths: dict,
          registry: "Registry | None" = None, order: bool = False) -> None:
    """Keep a valid project; a cache that cannot be written is no error (a read-only
    project works without it). The handlers are the steps' own, or (for a project whose
    steps are not all loaded) the registry's classes of their names. `order`: networkx
    orders the graph first, so that the cache keeps the order."""
    project.graph.on_ordered = None      # a graph kept from the cache read: this call decides
    if order:
        project.graph.order()
    recent = time.time_ns() - RACY_NS
    if any(sig is not None and sig[0] > recent for sig in listing.values()):
        return                           # written by a later call, once the manifests have settled
    if registry is None:
        handlers = {step.handler for step in project.steps.values()}
    else:
        from atlas.registry import HandlerLoadError

        try:
            handlers = {registry.load(name) for name in {step.info.handler for step in project.steps.values()}}
        except HandlerLoadError:
            return                       # the next full load reports it at its manifest
    code = _code_signatures(handlers)
    if code is None:
        return
    if any(sig is not None and sig[0] > recent for sig in code.values()):
        return                           # the same for handler code edited just now
    data = {"format": FORMAT, "atlas": __version__, "root": str(root), "import_path": _import_path(),
            "tasks": listing, "files": code,
            "paths": {"": checked_paths.get("", []), **{task: checked_paths.get(task, []) for task in project.steps}},
            "settings": project.settings,
            "graph": {"levels": project.graph.levels if project.graph.is_ordered else None,
                      "preds": project.graph.preds},
            "steps": {task: [step.file, *step.info.as_row()] for task, step in project.steps.items()}}
    _store(root, data)
    _keep_order(root, project.graph, data)


def _store(root: Path, data: dict) -> None:
    from atlas.atomic import write_atomically

    try:
        # ASCII with escapes: C encodes and decodes it a third faster than UTF-8 text, and
        # nothing in it can refer back to itself (no check for circular references)
        write_atomically(root / CACHE_FILE, json.dumps(data, separators=(",", ":"), check_circular=False))
    except OSError:
        pass                             # a read-only project works without it


def _keep_order(root: Path, graph: "Dag", data: dict) -> None:
    """When a command orders the graph of a cache written without its order, the cache
    keeps the order. It is written over whatever is there: a cache that another call wrote
    meanwhile is checked on every read like any other, so the worst that can come of it is
    one miss."""
    if not graph.is_ordered:
        graph.on_ordered = lambda levels: _store(root, {**data, "graph": {**data["graph"], "levels": levels}})


def _read(root: Path) -> dict | None:
    """The cache when it was written for this root, atlas, import path and handler code;
    its manifests and paths are for the caller to check."""
    from atlas.atomic import read_regular

    raw = read_regular(root / CACHE_FILE)       # none yet, or not a regular file
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT or data.get("atlas") != __version__ or data.get("root") != str(root):
            return None
        if data["import_path"] != _import_path():
            return None
        if any(signature.of_path(path) != sig for path, sig in data["files"].items()):
            return None
        if not (isinstance(data["tasks"], dict) and isinstance(data["paths"], dict) and "" in data["paths"]):
            return None
        return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _paths_hold(root: Path, groups) -> bool:
    """Does every checked path param still resolve where it did?"""
    try:
        return all(str(resolved(root, value)) == target for group in groups for value, target in group)
    except (OSError, ValueError, TypeError):
        return False


def _project_of(root: Path, data: dict) -> Project:
    from atlas.graph import Dag

    def load_fully() -> Project:
        from atlas.loader import load_project

        return load_project(root)

    graph = Dag(data["graph"]["levels"], data["graph"]["preds"])
    _keep_order(root, graph, data)
    project = Project(root, data["settings"], {}, graph, load=load_fully)
    project.steps = {task: Step(task, row[0], StepInfo.from_row(row[1:]), load=project.load_fully)
                     for task, row in data["steps"].items()}
    return project
