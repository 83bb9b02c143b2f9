"""A loaded project: its steps, their order and its defaults.

What planning needs of a step is plain data (`StepInfo`), which the project cache keeps.
The pydantic manifest, the handler class and its params are there from the start after a
full load; in a project read from the cache they are loaded, all steps at once, the first
time anything asks for one (a step that really runs, a report). So `atlas plan` and
`atlas validate` on unchanged manifests import neither pydantic, nor a handler, nor networkx.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from atlas.errors import ProjectNotFound

if TYPE_CHECKING:
    from atlas.graph import Dag
    from atlas.handler import Handler, Params
    from atlas.manifest import Manifest, ProjectDefaults

TASKS_DIR = "tasks"
DEFAULTS_FILE = "project.yaml"


@dataclass(frozen=True)
class StepInfo:
    """One step as the planner, `validate` and the plan's output see it (JSON-able)."""

    handler: str                              # handler name
    handler_version: str                      # name@version:code-digest (the fingerprint's)
    requires: tuple[str, ...]                 # the handler's and the manifest's capabilities
    manual: bool
    gpu: bool                                 # the GPU environment is part of the fingerprint
    params: dict                              # params as JSON, defaults filled in
    inputs: dict                              # name -> (TASK:output, optional)
    watched: tuple[str, ...]                  # project files whose digests are inputs
    project_keys: tuple[str, ...]             # project defaults the step depends on
    title: str
    title_en: str
    wbs: str

    def as_row(self) -> list:
        """The fields in order, as JSON (tuples dump as lists): the project cache keeps a
        row per step, which reads back in half the time of a mapping of field names."""
        return list(vars(self).values())

    @classmethod
    def of(cls, *fields: Any) -> "StepInfo":
        """The step info of these fields, in their order. The frozen dataclass's __init__
        sets each field through object.__setattr__: a cold load or a cache hit of 2,000
        steps spent 3 ms in it, twice this."""
        info = object.__new__(cls)
        info.__dict__.update(zip(_FIELDS, fields))
        return info

    @classmethod
    def from_row(cls, row: list) -> "StepInfo":
        (handler, version, requires, manual, gpu, params, inputs, watched, project_keys, title, title_en,
         wbs) = row
        return cls.of(handler, version, tuple(requires), manual, gpu, params,
                      {name: tuple(spec) for name, spec in inputs.items()}, tuple(watched), tuple(project_keys),
                      title, title_en, wbs)


_FIELDS = tuple(StepInfo.__dataclass_fields__)


class Step:
    def __init__(self, task_id: str, file: str, info: StepInfo, loaded: tuple | None = None,
                 load: Callable[[], None] | None = None) -> None:
        self.id = task_id
        self.file = file                      # relative to the project root, e.g. tasks/AG-DS-X-001.yaml
        self.info = info
        self._loaded = loaded                 # (manifest, handler class, params) once loaded
        self._load = load                     # loads every step of the project (cache hits only)

    def _part(self, index: int) -> Any:
        if self._loaded is None:
            assert self._load is not None, "a step read from the cache needs its project's loader"
            self._load()
        return self._loaded[index]

    @property
    def manifest(self) -> "Manifest":
        return self._part(0)

    @property
    def handler(self) -> type["Handler"]:
        return self._part(1)

    @property
    def params(self) -> "Params":
        return self._part(2)

    def requirements(self) -> list[str]:
        return list(self.info.requires)


class Project:
    def __init__(self, root: Path, settings: dict, steps: dict[str, Step], graph: "Dag",
                 defaults: "ProjectDefaults | None" = None, load: Callable[[], "Project"] | None = None,
                 parsed: int = 0) -> None:
        self.root = root
        self.parsed = parsed                  # manifests this load read and checked (0: all from the cache)
        self.settings = settings              # the project defaults as JSON (tasks/project.yaml, filled in)
        self.steps = steps
        self.graph = graph
        self._defaults = defaults
        self._load = load                     # the full loader (a project read from the cache)
        self._loading = threading.Lock()      # under -j N, steps start on several threads

    @property
    def defaults(self) -> "ProjectDefaults":
        if self._defaults is None:
            self.load_fully()
        return self._defaults

    @property
    def state_dir(self) -> Path:
        return self.root / ".atlas"

    def load_fully(self) -> None:
        """Give every step of a cached project its manifest, handler and params."""
        with self._loading:
            if self._defaults is None:
                self._load_once()

    def _load_once(self) -> None:
        from atlas.errors import AtlasError

        full = self._load()
        if set(full.steps) != set(self.steps):
            raise AtlasError("tasks/ changed while atlas was running (manifests were added or removed)",
                             "run the command again")
        for task, step in self.steps.items():
            step._loaded = full.steps[task]._loaded
        self._defaults = full.defaults


def find_root(start: Path) -> Path:
    """The nearest folder at or above `start` that holds tasks/."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / TASKS_DIR).is_dir():
            return folder
    raise ProjectNotFound(f"no {TASKS_DIR}/ folder in {start} or any parent",
                          "run atlas inside a project, or pass -C PROJECT_DIR")
