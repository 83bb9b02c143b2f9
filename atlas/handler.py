"""The handler contract: what a step type declares and what it gets when it runs.

A handler is a class registered under the `atlas.handlers` entry-point group. Its module
must stay light at import time (pydantic, stdlib): torch, TensorRT, DALI and CuPy are
imported inside `run`, so that `atlas validate` and `atlas plan` never load them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from atlas.atomic import write_atomically

if TYPE_CHECKING:            # the chart models cost a sixth of `atlas validate`'s imports
    import logging

    from atlas.charts import Figure

ResultStatus = Literal["succeeded", "failed", "skipped", "waiting"]


class Params(BaseModel):
    """Base for every handler's params: unknown keys are manifest errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Result:
    """What a step ends with. Results are values, never exceptions."""

    status: ResultStatus
    message: str = ""
    hint: str = ""
    findings: list[str] = field(default_factory=list)

    @classmethod
    def succeeded(cls, message: str = "", findings: list[str] | None = None) -> "Result":
        return cls("succeeded", message, "", list(findings or []))

    @classmethod
    def failed(cls, message: str, hint: str = "", findings: list[str] | None = None) -> "Result":
        return cls("failed", message, hint, list(findings or []))

    @classmethod
    def skipped(cls, reason: str, hint: str = "") -> "Result":
        return cls("skipped", reason, hint, [])

    @classmethod
    def waiting(cls, message: str, hint: str = "", findings: list[str] | None = None) -> "Result":
        return cls("waiting", message, hint, list(findings or []))

    def as_dict(self) -> dict:
        return {"status": self.status, "message": self.message, "hint": self.hint,
                "findings": self.findings}


class Handler:
    """Base class of every step type."""

    name: ClassVar[str] = ""
    # Bump when the handler's behaviour changes in a way its outputs should reflect;
    # the module's source digest is part of the fingerprint as well.
    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params
    # Names (files, or folders ending in "/") the step writes into ctx.output_dir.
    outputs: ClassVar[tuple[str, ...]] = ()
    # Inputs run() reads without checking (`ctx.inputs["name"]`), each with what usually
    # feeds it: a manifest without one is a validation error at its location.
    required_inputs: ClassVar[dict[str, str]] = {}
    # Capabilities the step always needs (the manifest's `requires` adds more).
    requires: ClassVar[tuple[str, ...]] = ()
    # True when results depend on the GPU/driver/CUDA stack: the environment then
    # enters the fingerprint, so a driver upgrade re-runs the step.
    gpu_env: ClassVar[bool] = False
    # A manual step is completed by `atlas done`, not by running code.
    manual: ClassVar[bool] = False
    # The handler's module and every module of its package that it imports enter the
    # fingerprint on their own (atlas.codedigest reads the import lines). Name here only
    # what no import shows: a module run with `python -m`, a folder of templates.
    code_modules: ClassVar[tuple[str, ...]] = ()
    # Sections of tasks/project.yaml the step reads ("data", "model"): changing them re-runs
    # it, and a data.root folder's file listing (names, sizes, times) is watched as well.
    project_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def watched_paths(cls, params: Params) -> list[str]:
        """Project files the step reads directly (not through inputs), relative to the
        project root; their digests enter the fingerprint, so editing them re-runs it."""
        return []

    def run(self, ctx: "Context") -> Result:  # pragma: no cover - abstract
        raise NotImplementedError


EventSink = Callable[[dict], None]


class Progress:
    """A progress bar handle; the runner renders it (rich on a TTY, lines in CI)."""

    def __init__(self, emit: EventSink, task_id: str, total: float | None, description: str) -> None:
        self._emit, self._task, self.total, self.description = emit, task_id, total, description
        self.done = 0.0
        self._emit({"type": "progress", "task": task_id, "description": description,
                    "total": total, "done": 0.0})

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.done += n
        self._emit({"type": "progress", "task": self._task, "description": self.description,
                    "total": self.total, "done": self.done, "fields": fields})

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self._emit({"type": "progress_end", "task": self._task, "description": self.description})


def _step_logger() -> logging.Logger:
    import logging          # here: `atlas validate` and `atlas plan` import handlers, never log

    return logging.getLogger("atlas.step")


@dataclass
class Context:
    """Everything a handler may use. Built by the worker process around one step."""

    task_id: str
    params: Params
    inputs: dict[str, Path | None]
    output_dir: Path
    project_root: Path
    project: dict[str, Any]
    devices: list[int] = field(default_factory=list)
    emit: EventSink = field(default=lambda event: None)
    log: logging.Logger = field(default_factory=_step_logger)

    def metric(self, name: str, value: float, unit: str = "", step: int | None = None) -> None:
        """Record a number in the state store (per epoch when `step` is given)."""
        value = float(value)
        if not math.isfinite(value):
            self.log.warning("metric %s is %s; stored as null", name, value)
        self.emit({"type": "metric", "name": name, "value": value if math.isfinite(value) else None,
                   "unit": unit, "step": step})

    def figure(self, figure: "Figure") -> None:
        """Hand the report a chart or a table (atlas.charts) to show with this step's result."""
        self.emit({"type": "figure", "spec": figure.model_dump(mode="json")})

    def progress(self, total: float | None, description: str) -> Progress:
        return Progress(self.emit, self.task_id, total, description)

    def output(self, name: str) -> Path:
        """Path for an output file inside the step's output folder (parents created)."""
        path = self.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_text(self, name: str, text: str, executable: bool = False) -> Path:
        """Write an output atomically: a temporary name, then a rename."""
        return write_atomically(self.output(name), text, 0o755 if executable else 0o644)

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
