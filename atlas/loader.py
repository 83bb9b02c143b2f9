"""Load tasks/: parse every manifest, validate it, and report every problem at once.

Each problem is located as `tasks/FILE.yaml:LINE:COL: message [field.path]` using the
node positions kept by atlas.yamlpos (the dvc strictyaml approach).
"""
from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Set

from pydantic import BaseModel, ValidationError

from atlas import manifest_file
from atlas.errors import InvalidManifests, ManifestProblem
from atlas.fingerprint import handler_version
from atlas.graph import checked
from atlas.handler import Handler, Params
from atlas.located import Located
from atlas.manifest import Manifest, ProjectDefaults
from atlas.project import DEFAULTS_FILE, TASKS_DIR, Project, Step, StepInfo, find_root
from atlas.registry import HandlerLoadError, Registry

__all__ = ["DEFAULTS_FILE", "TASKS_DIR", "Project", "Step", "find_root", "load_project", "produces"]


def _field_path(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Collector:
    def __init__(self) -> None:
        self.problems: list[ManifestProblem] = []

    def add(self, file: str, pos: tuple[int, int], message: str, path: tuple = ()) -> None:
        # one problem, one line: a message quoting the manifest (or a library's multi-line
        # text) must not break the `file:line:col: message` shape that editors parse
        message = " ".join(message.split()) if "\n" in message or "\r" in message else message
        self.problems.append(ManifestProblem(file, pos[0], pos[1], message, _field_path(path)))

    def pydantic(self, file: str, located: Located, exc: ValidationError,
                 prefix: tuple = (), model: type[BaseModel] | None = None) -> None:
        seen: set[tuple] = set()
        for err in exc.errors():
            kind = err["type"]
            path = prefix + _data_path(located.data, prefix, err["loc"], missing=kind == "missing")
            if path in seen:          # a Union reports once per branch: keep the first
                continue
            seen.add(path)
            if kind == "extra_forbidden":
                message = f"unknown field {path[-1]!r}" + _suggest(path[-1], _fields_at(model, path, prefix))
                pos = located.where(path, key=True)
            elif kind == "missing":
                message = f"missing required field {path[-1]!r}"
                pos = located.where(path[:-1])
            else:
                text = err["msg"]
                if kind == "value_error":             # our validators' own words, without pydantic's prefix
                    text = text.removeprefix("Value error, ")
                shown = _short(err.get("input"))
                message = text if shown in text else f"{text} (got {shown})"
                pos = located.where(path)
            self.add(file, pos, message, path)


def _data_path(data: Any, prefix: tuple, loc: tuple, missing: bool = False) -> tuple:
    """Drop pydantic's union-branch labels (str, InputSpec, ...) that are not in the data."""
    node = data
    for key in prefix:
        node = node.get(key) if isinstance(node, dict) else None
    path: list = []
    for i, key in enumerate(loc):
        if isinstance(node, dict) and key in node:
            path.append(key)
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            path.append(key)
            node = node[key]
        elif missing and i == len(loc) - 1 and isinstance(node, dict):
            path.append(key)      # a missing key (not a union label such as 'int')
    return tuple(path)


def _fields_at(model: type[BaseModel] | None, path: tuple, prefix: tuple) -> list[str]:
    if model is None or len(path) - len(prefix) != 1:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _suggest(name: Any, choices: list[str]) -> str:
    import difflib          # here: only a problem needs a suggestion

    close = difflib.get_close_matches(str(name), choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


MAX_MANIFEST_BYTES = manifest_file.MAX_MANIFEST_BYTES


def load_defaults(root: Path, out: _Collector, checked_paths: dict | None = None,
                  read_ahead: Located | None = None) -> ProjectDefaults:
    """tasks/project.yaml checked; `read_ahead`: its YAML, read already (manifest_file.read_all)."""
    rel = f"{TASKS_DIR}/{DEFAULTS_FILE}"
    located = read_ahead
    if located is None:
        path = root / TASKS_DIR / DEFAULTS_FILE
        if not path.exists():
            return ProjectDefaults(name=root.name)
        located = manifest_file.read(path, rel, out)
    if located is None:
        return ProjectDefaults(name=root.name)
    try:
        return ProjectDefaults.model_validate(located.data, context=_context(root, checked_paths, ""))
    except ValidationError as exc:
        out.pydantic(rel, located, exc, model=ProjectDefaults)
        return ProjectDefaults(name=root.name)


def _context(root: Path, checked_paths: dict | None, task: str) -> dict:
    # the root lets path params check where their links lead; each path found inside is
    # noted in `checked_paths[task]` ('' for the defaults), which the project cache looks at
    # again before it trusts itself
    found = checked_paths.setdefault(task, []) if checked_paths is not None else None
    return {"project_root": root, "checked_paths": found}


class Prechecks:
    """The checks of a manifest that need no other manifest (its model, its handler's
    params, its step info), made as each one's YAML comes in (atlas.two_cores hands them
    over while the rest are still being read): the full load then only puts the results
    together, in file order, and reports their problems as it always does."""

    def __init__(self, root: Path, registry: Registry | None = None) -> None:
        self.root = root
        self.registry = registry if registry is not None else Registry()
        self.manifests: dict[str, Manifest | ValidationError] = {}       # by rel
        # rel -> (manifest, handler, params or their error, paths checked, step info)
        self.bound: dict[str, tuple] = {}

    def add(self, path: str | Path, located: Located | None) -> None:
        if located is None:
            return                             # the load reads it again and reports why
        rel = f"{TASKS_DIR}/{os.path.basename(path)}"
        try:
            manifest = Manifest.model_validate(located.data)
        except ValidationError as exc:
            self.manifests[rel] = exc
            return
        self.manifests[rel] = manifest
        if manifest.handler not in self.registry:
            return
        try:
            handler = self.registry.load(manifest.handler)
        except HandlerLoadError:
            return                             # reported by the load, at its place
        checked: dict = {}                     # the paths checked, handed to checked_paths by the load
        params, info = _params_and_info(manifest, handler, self.root, checked, manifest.id)
        self.bound[rel] = (manifest, handler, params, checked[manifest.id], info)


def load_project(root: Path, registry: Registry | None = None, checked_paths: dict | None = None,
                 read_ahead: Sequence[tuple[str | Path, Located | None]] | None = None,
                 prechecked: Prechecks | None = None, defaults_read: Located | None = None) -> Project:
    """Load and validate tasks/; raise InvalidManifests listing every problem.
    `checked_paths` collects, by task ('' for the defaults), (path, where it resolved) of
    every path param checked. `read_ahead`: (path, YAML) of every manifest of tasks/, as
    the caller listed it, read already (manifest_file.read_all; None for one read again
    here, which reports its problems); `defaults_read`: tasks/project.yaml's, the same
    way. `prechecked`: the checks of each of them alone, made already (its registry is the
    one used)."""
    # Parsing thousands of manifests allocates millions of small objects that the cyclic
    # GC would scan over and over (a quarter of validate time at 10,000 steps); none of
    # them form cycles that need collecting before we return.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_project(root, registry, checked_paths, read_ahead, prechecked, defaults_read)
    finally:
        if enabled:
            gc.enable()


def _load_project(root: Path, registry: Registry | None, checked_paths: dict | None,
                  read_ahead: Sequence[tuple[str | Path, Located | None]] | None,
                  prechecked: Prechecks | None = None, defaults_read: Located | None = None) -> Project:
    if prechecked is not None:
        registry = prechecked.registry
    registry = registry if registry is not None else Registry()
    out = _Collector()
    defaults = load_defaults(root, out, checked_paths, defaults_read)
    manifests: dict[str, tuple[Manifest, str, Located]] = {}
    unreadable: set[str] = set()   # stems of manifests already reported: not "unknown" to others
    if read_ahead is None:
        files = manifest_file.manifest_paths(root)
        read_ahead = [(path, located) for path, (_, located) in zip(files, manifest_file.read_all(files))]
    validated = prechecked.manifests if prechecked is not None else {}
    for path, located in read_ahead:
        if not _read_manifest(path, manifests, out, located, validated):
            unreadable.add(manifest_file.stem(os.path.basename(path)))

    steps = _bind_handlers(manifests, registry, out, root, checked_paths, prechecked)
    wbs = defaults.wbs_index()
    handler_of = _handler_in(steps)
    for tid, (manifest, rel, located) in manifests.items():
        _check_links(tid, manifest, rel, located, manifests, wbs, handler_of, out, unreadable)
    # no order yet (networkx orders it when a command asks): checking needs none
    dag, cycles = checked({tid: m.depends_on for tid, (m, _, _) in manifests.items()})
    for cycle in cycles:
        first = cycle[0]
        manifest, rel, located = manifests[first]
        index = manifest.depends_on.index(cycle[-1])
        # graph edges run dependency -> dependent; the message reads "depends on", like the file
        chain = " -> ".join([first, *reversed(cycle[1:]), first])
        out.add(rel, located.where(("depends_on", index)), f"dependency cycle: {chain}", ("depends_on", index))
    if out.problems:
        raise InvalidManifests(out.problems)
    return Project(root, defaults.model_dump(mode="json"), steps, dag, defaults=defaults, parsed=len(read_ahead))


def load_changed(root: Path, known: Project, changed: Set[str], registry: Registry,
                 checked_paths: dict) -> Project | None:
    """`known` (a valid project, as the cache holds it) with the manifests named in `changed`
    (file names in tasks/: edited, added or removed since) read and checked again, and
    everything they say about the others, and the others about them, checked again.

    None when anything is wrong, or cannot be settled from what is at hand: the caller
    then loads in full, which reports every problem at its place. `checked_paths` gets the
    paths checked for the re-read steps. The others, and the defaults, are as they were:
    the caller has seen their files unchanged."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_changed(root, known, changed, registry, checked_paths)
    except HandlerLoadError:
        return None
    finally:
        if enabled:
            gc.enable()


def _load_changed(root: Path, known: Project, changed: Set[str], registry: Registry,
                  checked_paths: dict) -> Project | None:
    kept = {task: step for task, step in known.steps.items() if Path(step.file).name not in changed}
    out = _Collector()
    fresh: dict[str, tuple[Manifest, str, Located]] = {}
    for name in sorted(changed):
        path = root / TASKS_DIR / name
        if not os.path.lexists(path):
            continue                                  # removed
        if not _read_manifest(path, fresh, out) or any(task in kept for task in fresh):
            return None                               # invalid, or an id another file holds
    steps = _bind_handlers(fresh, registry, out, root, checked_paths)
    if out.problems:
        return None
    every = {**kept, **steps}

    def handler_of(task: str) -> type[Handler] | None:
        return steps[task].handler if task in steps else registry.load(kept[task].info.handler)

    wbs = load_defaults(root, out).wbs_index() if fresh else {}
    for tid, (manifest, rel, located) in fresh.items():
        _check_links(tid, manifest, rel, located, every, wbs, handler_of, out)
    if out.problems:
        return None
    for task, step in kept.items():                   # what the others say about the re-read ones
        if any(dep not in every for dep in known.graph.preds[task]):
            return None
        for ref, _ in step.info.inputs.values():
            source, output = ref.split(":", 1)
            if source in steps and not produces(steps[source].handler, output):
                return None
    graph = known.graph
    if set(every) != set(known.steps) or any(set(m.depends_on) != set(graph.preds[t])
                                              for t, (m, _, _) in fresh.items()):
        graph, cycles = checked({t: graph.preds[t] for t in kept} | {t: m.depends_on for t, (m, _, _) in fresh.items()})
        if cycles:
            return None
    project = Project(root, known.settings, {}, graph, load=known._load, parsed=len(fresh))
    for step in every.values():
        step._load = project.load_fully
    project.steps = {step.id: step for step in sorted(every.values(), key=lambda step: step.file)}  # as loaded
    return project


def _read_manifest(path: str | Path, manifests: dict, out: _Collector, located: Located | None = None,
                   validated: Mapping[str, Manifest | ValidationError] | None = None) -> bool:
    """Read (unless `located` is its YAML already) and check one manifest into `manifests`
    (id -> (manifest, rel, located)). False when it could not be read or validated (its
    problems are in `out`). `validated`: models (or their errors) of `located` made
    already, by rel."""
    name = os.path.basename(path)
    rel = f"{TASKS_DIR}/{name}"
    if located is None:
        located = manifest_file.read(path, rel, out)
        validated = None                             # read just now: nothing checked of it yet
    if located is None:
        return False
    found = validated.get(rel) if validated else None
    try:
        if isinstance(found, ValidationError):
            raise found
        manifest = found if found is not None else Manifest.model_validate(located.data)
    except ValidationError as exc:
        out.pydantic(rel, located, exc, model=Manifest)
        return False
    expected = manifest_file.stem(name)
    if manifest.id != expected:
        out.add(rel, located.where(("id",)),
                f"id {manifest.id!r} does not match the file name (expected {expected!r})", ("id",))
    if manifest.id in manifests:
        other = manifests[manifest.id][1]
        out.add(rel, located.where(("id",)), f"duplicate ID {manifest.id!r}: also defined in {other}", ("id",))
        return True
    manifests[manifest.id] = (manifest, rel, located)
    return True


def _handler_in(steps: dict[str, Step]) -> Callable[[str], type[Handler] | None]:
    return {task: step.handler for task, step in steps.items()}.get


def step_info(manifest: Manifest, handler: type[Handler], params: Params) -> StepInfo:
    requires = tuple(sorted(set(handler.requires) | set(manifest.requires)))
    # handler, handler_version, requires, manual, gpu, params, inputs, watched, project_keys,
    # title, title_en, wbs
    return StepInfo.of(handler.name, handler_version(handler), requires, bool(handler.manual),
                       bool(handler.gpu_env or "cuda" in requires), params.model_dump(mode="json"),
                       manifest.input_refs(), tuple(handler.watched_paths(params)), tuple(handler.project_keys),
                       manifest.title, manifest.title_en, manifest.wbs)


def _params_and_info(manifest: Manifest, handler: type[Handler], root: Path, checked_paths: dict | None,
                     task: str) -> tuple[Params | ValidationError, StepInfo | None]:
    """The manifest's params checked by its handler's model, and its step info (None with
    the params' error)."""
    try:
        params = handler.Params.model_validate(manifest.params, context=_context(root, checked_paths, task))
    except ValidationError as exc:
        return exc, None
    return params, step_info(manifest, handler, params)


def _bind_handlers(manifests: dict, registry: Registry, out: _Collector, root: Path,
                   checked_paths: dict | None = None, prechecked: Prechecks | None = None) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    for tid, (manifest, rel, located) in manifests.items():
        bound = prechecked.bound.get(rel) if prechecked is not None else None
        if bound is not None and bound[0] is manifest:
            _, handler, params, found, info = bound
            if checked_paths is not None:
                checked_paths.setdefault(tid, []).extend(found)
        else:
            if manifest.handler not in registry:
                hint = _suggest(manifest.handler, registry.names()) or f" (known: {', '.join(registry.names())})"
                out.add(rel, located.where(("handler",)), f"unknown handler {manifest.handler!r}{hint}",
                        ("handler",))
                continue
            try:
                handler = registry.load(manifest.handler)
            except HandlerLoadError as exc:
                out.add(rel, located.where(("handler",)), exc.message, ("handler",))
                continue
            params, info = _params_and_info(manifest, handler, root, checked_paths, tid)
        if isinstance(params, ValidationError):
            out.pydantic(rel, located, params, prefix=("params",), model=handler.Params)
            continue
        steps[tid] = Step(tid, rel, info, loaded=(manifest, handler, params))
    return steps


def produces(handler: type[Handler], name: str) -> bool:
    """Does a handler declare `name` as an output (a file, or inside a declared folder)?"""
    for output in handler.outputs:
        if name == output or name.rstrip("/") == output.rstrip("/"):
            return True
        if output.endswith("/") and name.startswith(output):
            return True
    return False


def _check_links(tid: str, manifest: Manifest, rel: str, located: Located, known: Mapping[str, Any],
                 wbs: dict, handler_of: Callable[[str], type[Handler] | None], out: _Collector,
                 unreadable: Set[str] = frozenset()) -> None:
    """What one manifest says about others: its dependencies exist (in `known`), its wbs is
    in the hierarchy, its inputs come from a dependency that produces them."""
    for i, dep in enumerate(manifest.depends_on):
        if dep not in known and dep not in unreadable:
            hint = _suggest(dep, [other for other in known if other != tid])
            out.add(rel, located.where(("depends_on", i)), f"unknown task {dep!r} in depends_on{hint}",
                    ("depends_on", i))
    node = wbs.get(manifest.wbs)
    if wbs and node is None:
        out.add(rel, located.where(("wbs",)), f"wbs {manifest.wbs!r} is not in the project hierarchy "
                f"(tasks/{DEFAULTS_FILE})", ("wbs",))
    elif node is not None and node.task and node.task != tid:
        out.add(rel, located.where(("wbs",)), f"wbs {manifest.wbs!r} belongs to {node.task} in the "
                f"project hierarchy (tasks/{DEFAULTS_FILE})", ("wbs",))
    own = handler_of(tid)
    if own is not None:
        for name, usual in own.required_inputs.items():
            if name not in manifest.inputs:
                out.add(rel, located.where(("inputs",), key=True) if "inputs" in located.data
                        else (1, 1), f"input {name!r} is required by handler {manifest.handler} (usually "
                        f"{usual})", ("inputs", name))
    for name, (ref, _) in manifest.input_refs().items():
        source, output = ref.split(":", 1)
        path = ("inputs", name)        # where(path) only for a problem: it works out positions
        if source not in manifest.depends_on:
            out.add(rel, located.where(path), f"input {name!r} comes from {source}, which is not in depends_on",
                    path)
            continue
        handler = handler_of(source)
        if handler is not None and not produces(handler, output):
            made = ", ".join(handler.outputs) or "nothing"
            out.add(rel, located.where(path), f"input {name!r}: {source} ({handler.name}) produces no "
                    f"{output!r} (it produces: {made})", path)
