"""What planning knows: the stored history of each task and the facts the planner decides
on (fingerprint components, last success, last status), and the plan itself.

`atlas plan` needs only this module; `atlas run` (atlas.workflow) uses it to decide each
step as its upstream finishes.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from atlas import artifacts
from atlas.errors import UsageError
from atlas.fingerprint import components, digest_and_text, file_sha256, fingerprint
from atlas.graph import Dag, upstream
from atlas.planner import Plan, StepFacts, plan
from atlas.project import Project
from atlas.state import LazyComponents, StateStore, StepRun

if TYPE_CHECKING:
    from atlas.probe import Probe


def open_store(project: Project, readonly: bool = False) -> StateStore:
    """The project's state store; read-only views (plan, status, reports) write nothing."""
    return StateStore(project.state_dir / "state.db", readonly=readonly)


def check_targets(project: Project, targets: Iterable[str]) -> list[str]:
    targets = list(targets)
    for target in targets:
        if target not in project.steps:
            import difflib

            close = difflib.get_close_matches(target, list(project.steps), n=1)
            hint = f"did you mean {close[0]}?" if close else "`atlas plan` lists the tasks"
            raise UsageError(f"unknown task {target!r}", hint)
    return targets


def subgraph(project: Project, targets: list[str]) -> Dag:
    return upstream(project.graph, targets) if targets else project.graph.copy()


def _path_digest(root: Path, rel: str) -> str:
    path = root / rel
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        return fingerprint([(name, sha) for name, sha, _ in artifacts.hash_folder(path)])
    return "missing"


def _listing_digest(path: Path) -> str:
    """A dataset folder by its listing (name, size, mtime), not its bytes: thousands of
    X-rays are not re-read at every plan, yet an added or replaced image is noticed."""
    if path.is_file():
        st = path.stat()
        return fingerprint([path.name, st.st_size, st.st_mtime_ns])
    if not path.is_dir():
        return "missing"
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            entries.append((os.path.relpath(os.path.join(dirpath, name), path), st.st_size, st.st_mtime_ns))
    return fingerprint(entries)


def _project_inputs(project: Project, keys: tuple[str, ...]) -> dict[str, str]:
    if not keys:
        return {}
    defaults = project.settings
    found = {f"project:{key}": fingerprint(defaults.get(key)) for key in keys}
    root = defaults.get("data", {}).get("root") if "data" in keys else None
    if root:
        found["data:" + root] = _listing_digest(project.root / root)
    return found


class History:
    """Last success / last attempt of each task and their artifacts. A snapshot (for
    `atlas plan`) reads everything in three queries; a live view (for `atlas run`, where
    steps finish between decisions) asks the store each time."""

    def __init__(self, store: StateStore, snapshot: bool) -> None:
        self.store, self.snapshot = store, snapshot
        self._successes = store.last_successes(brief=True) if snapshot else None
        self._statuses = store.last_statuses() if snapshot else None
        self._artifacts = store.artifacts_of([r.id for r in self._successes.values()]) if snapshot else None
        self._lock = threading.Lock()          # -j N: steps finish on several threads
        self._digests: dict[tuple[int, str], str | None] = {}

    def refresh(self, task: str) -> None:
        """Read one task's entries again (it has just run)."""
        if not self.snapshot:
            return
        with self._lock:
            last = self.store.last_success(task)
            if last is None:
                self._successes.pop(task, None)
            else:
                self._successes[task] = last
                self._artifacts[last.id] = self.store.artifacts(last.id)
            step = self.store.last_step(task)
            if step is not None:
                self._statuses[task] = step.status

    def last_success(self, task: str) -> StepRun | None:
        return self._successes.get(task) if self.snapshot else self.store.last_success(task)

    def last_status(self, task: str) -> str | None:
        if self.snapshot:
            return self._statuses.get(task)
        step = self.store.last_step(task)
        return step.status if step else None

    def artifacts(self, step_run_id: int) -> list[dict]:
        return self._artifacts.get(step_run_id, []) if self.snapshot else self.store.artifacts(step_run_id)

    def output_digest(self, step_run_id: int, output: str) -> str | None:
        """The digest of one output of a step run, as its dependents see it. Outputs do not
        change once recorded; each is worked out once, however many steps read it."""
        key = (step_run_id, output)
        found = self._digests.get(key, self)
        if found is self:
            found = self._digests[key] = artifacts.input_digest(self.artifacts(step_run_id), output)
        return found


def step_facts(project: Project, history: History, probe: Probe, task: str) -> StepFacts:
    """Gather what the planner needs about one step from the manifests and the store."""
    info = project.steps[task].info
    inputs: dict[str, str | None] = {}
    required, optional = set(), set()
    for name, (ref, is_optional) in info.inputs.items():
        source, output = ref.split(":", 1)
        (optional if is_optional else required).add(source)
        last = history.last_success(source)
        inputs[name] = history.output_digest(last.id, output) if last else None
    for rel in info.watched:
        inputs[f"file:{rel}"] = _path_digest(project.root, rel)
    inputs.update(_project_inputs(project, info.project_keys))
    comps = components(info.handler_version, info.params, inputs, probe.gpu_environment() if info.gpu else None)
    last_success = history.last_success(task)
    digest, text = digest_and_text(comps)
    return StepFacts(requires=info.requires, components=comps, fingerprint=digest, components_json=text,
                     last=LazyComponents(last_success) if last_success else None,
                     last_fingerprint=last_success.fingerprint if last_success else None,
                     last_status=history.last_status(task), manual=info.manual,
                     optional=frozenset(optional - required))


def make_plan(project: Project, store: StateStore, probe: Probe, targets: list[str],
              force: Iterable[str] = (), force_all: bool = False) -> tuple[Dag, Plan]:
    graph = subgraph(project, targets)
    forced = set(graph) if force_all else set(force)
    history = History(store, snapshot=True)
    facts = {task: step_facts(project, history, probe, task) for task in graph}
    from atlas.probe import HasCapability, Hints

    # each capability, and the install hints, found only when a step needs them
    return graph, plan(graph, facts, HasCapability(probe), forced, Hints(probe))
