"""Runs one step for the executor: a process per attempt, its log, metrics and outputs
recorded in the state store, GPUs assigned, retries and timeout applied.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from atlas import artifacts, slurm
from atlas.console import RunDisplay
from atlas.executor import Outcome
from atlas.fingerprint import fingerprint
from atlas.project import Project, Step
from atlas.planner import Decision
from atlas.forkserver import ForkServer
from atlas.process import ProcessTable, run_step_process, start_ticks
from atlas.slurm import SlurmQueue
from atlas.state import StateStore

LOG_FLUSH_LINES = 200
LOG_FLUSH_S = 1.0


class GpuPool:
    """Hands out GPU indices under -j N so parallel GPU steps never share a device."""

    def __init__(self, gpus: list[int], assign: bool) -> None:
        self.all, self.free, self.assign = list(gpus), list(gpus), assign
        self.cond = threading.Condition()
        self.waiting = 0              # acquirers blocked for want of free GPUs (observable by tests)

    def acquire(self, want: int | str) -> list[int] | None:
        """GPU indices for the step; None means: leave CUDA_VISIBLE_DEVICES alone."""
        if not self.assign or want == 0 or not self.all:
            return None
        count = len(self.all) if want == "all" else min(int(want), len(self.all))
        with self.cond:
            while len(self.free) < count:
                self.waiting += 1
                self.cond.notify_all()        # lets an observer see the new waiter
                self.cond.wait()
                self.waiting -= 1
            taken, self.free = self.free[:count], self.free[count:]
            return taken

    def release(self, taken: list[int] | None) -> None:
        if taken:
            with self.cond:
                self.free = sorted(self.free + taken)
                self.cond.notify_all()


class _LogBuffer:
    def __init__(self, store: StateStore, step_run_id: int, echo: Callable[[str], None]) -> None:
        self.store, self.id, self.echo = store, step_run_id, echo
        self.lines: list[tuple[float, str]] = []
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        self.echo(line)
        with self.lock:
            self.lines.append((time.time(), line))
            if len(self.lines) >= LOG_FLUSH_LINES or time.monotonic() - self.last > LOG_FLUSH_S:
                self._flush()

    def _flush(self) -> None:
        self.store.record_logs(self.id, self.lines)
        self.lines, self.last = [], time.monotonic()

    def close(self) -> None:
        with self.lock:
            self._flush()


@dataclass
class StepRunner:
    project: Project
    store: StateStore
    run_id: int
    display: RunDisplay
    facts: dict                      # task -> StepFacts computed when the step was decided
    table: ProcessTable
    gpu_pool: GpuPool
    starter: ForkServer | None = None     # forks step processes; None: a new interpreter each
    slurm: SlurmQueue | None = None       # --executor slurm: each attempt is a batch job

    def __call__(self, task: str, decision: Decision) -> Outcome:
        step = self.project.steps[task]
        devices = self.gpu_pool.acquire(step_gpus(step))
        try:
            attempts = step.manifest.retries + 1
            for attempt in range(1, attempts + 1):
                outcome = self._attempt(step, decision, devices, attempt, attempts)
                if outcome.status != "failed" or self.table.cancelled.is_set():
                    return outcome
            return outcome
        finally:
            self.gpu_pool.release(devices)

    def _attempt(self, step: Step, decision: Decision, devices: list[int] | None,
                 attempt: int, attempts: int) -> Outcome:
        comps = self.facts[step.id].components
        state_dir = self.project.state_dir
        fp = fingerprint(comps)
        adopt = self._adoptable(step, fp) if self.slurm is not None else None
        sr = self.store.start_step(self.run_id, step.id, step.handler.name, reason=decision.reason,
                                   fingerprint=fp, components=comps, params=comps["params"], devices=devices or [])
        tmp = Path(adopt["output_dir"]) if adopt else artifacts.temp_dir(state_dir, step.id, sr)
        self.display.step_started(step.id, decision.reason, attempt, attempts)
        logs = _LogBuffer(self.store, sr, lambda line: self.display.log(step.id, line))
        spec = {"task": step.id, "handler_ref": f"{step.handler.__module__}:{step.handler.__qualname__}",
                "params": comps["params"], "inputs": self._inputs(step), "output_dir": str(tmp),
                "project_root": str(self.project.root), "project": self.project.settings,
                "devices": devices if devices is not None else self._all_gpus()}
        started = time.monotonic()
        job_dir = None
        try:
            if self.slurm is not None:
                job_dir = Path(adopt["job_dir"]) if adopt else state_dir / "slurm" / f"{step.id}-{sr}"
                proc = self._run_job(step, spec, sr, job_dir, logs, adopt)
            else:
                proc = run_step_process(spec, tmp.parent / f".{step.id}-{sr}.spec.json", cwd=self.project.root,
                                        env=self._env(devices), timeout=step.manifest.timeout,
                                        on_event=lambda e: self._event(sr, e), on_log=logs.add, table=self.table,
                                        on_start=lambda pid: self.store.record_process(sr, pid, start_ticks(pid)),
                                        starter=self.starter)
        except KeyboardInterrupt:
            logs.close()
            self.store.finish_step(sr, "interrupted", message="interrupted by the user", attempts=attempt)
            artifacts.keep_failed(tmp, state_dir, step.id)
            self.display.step_ended(step.id, "interrupted", duration=time.monotonic() - started)
            raise
        logs.close()
        if proc.job is not None:
            self.store.record_job(sr, proc.job.as_dict(), str(job_dir))
        status, message, hint, findings = self._judge(step, proc, tmp)
        if status == "succeeded":
            files = artifacts.hash_folder(tmp)
            final = artifacts.publish(tmp, state_dir, step.id)
            rel = final.relative_to(self.project.root).as_posix()
            self.store.record_artifacts(sr, [(name, f"{rel}/{name}", sha, size) for name, sha, size in files])
        elif tmp.exists():
            artifacts.keep_failed(tmp, state_dir, step.id)
        (tmp.parent / f".{step.id}-{sr}.spec.json").unlink(missing_ok=True)
        if job_dir is not None:
            slurm.remove_job_dir(job_dir)
        self.store.finish_step(sr, status, message=message, hint=hint, findings=findings, attempts=attempt)
        self.display.step_ended(step.id, status, message, time.monotonic() - started, findings, hint)
        return Outcome(status, decision.reason, message)

    def _run_job(self, step: Step, spec: dict, sr: int, job_dir: Path, logs: _LogBuffer, adopt: dict | None):
        files = slurm.job_files(job_dir)
        # GPUs the job asks Slurm for: what the manifest says (slurm.gpus, gpus) or what a
        # step that requires cuda needs; a step that merely can use a GPU asks for none
        gpus = step.manifest.gpus if step.manifest.gpus is not None else (
            1 if "cuda" in step.requirements() else 0)
        options = slurm.sbatch_options(step.id, step.manifest.slurm, self.project.defaults.executor,
                                       gpus, step.manifest.timeout, files["log"], self.project.root)

        def submitted(info: slurm.JobInfo) -> None:
            self.store.record_job(sr, info.as_dict(), str(job_dir))
            how = "taken over from a runner that was killed" if adopt else "submitted"
            logs.add(f"atlas: Slurm job {info.job_id} {how}")

        return slurm.run_step_job(spec, job_dir, options=options, cwd=self.project.root,
                                  env=slurm.environment(base_env()), timeout=step.manifest.timeout,
                                  on_event=lambda e: self._event(sr, e), on_log=logs.add, table=self.table,
                                  queue=self.slurm, on_submit=submitted, adopt=adopt["job_id"] if adopt else None)

    def _adoptable(self, step: Step, fp: str) -> dict | None:
        """A job that a killed runner left for this step, computing what is wanted now, and
        still queued, running, or finished with its result: taken over, not submitted again."""
        row = self.store.adoptable_job(step.id, fp)
        if row is None or not row.get("job_dir"):
            return None
        files = slurm.job_files(Path(row["job_dir"]))
        try:
            output_dir = json.loads(files["spec"].read_text())["output_dir"]
        except (OSError, ValueError, KeyError):
            return None
        info = self.slurm.check(row["job_id"])
        if info.final and not slurm.has_result(files["events"]):
            return None
        return row | {"output_dir": output_dir}

    def _judge(self, step: Step, proc, tmp: Path) -> tuple[str, str, str, list]:
        if proc.cancelled:
            return "interrupted", "interrupted by the user", "", []
        if proc.result is None and proc.job is not None:          # Slurm's own words
            message, hint = slurm.failure_message(proc.job, proc.job.events_seen, step.id, step.file)
            return "failed", message, hint, []
        if proc.timed_out:
            return ("failed", f"timed out after {step.manifest.timeout:g}s and was killed",
                    f"raise `timeout:` in {step.file}, or lower the step's params", [])
        if proc.result is None:
            code = proc.returncode
            how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 \
                else f"exit code {code}"
            return ("failed", f"the step's process died without a result ({how})",
                    f"see its log: atlas show {step.id}", [])
        r = proc.result
        status, findings = r["status"], r.get("findings", [])
        if status == "succeeded":
            missing = artifacts.missing_outputs(tmp, step.handler.outputs)
            if missing:
                return ("failed", f"declared outputs not written: {', '.join(missing)}",
                        f"a bug in handler {step.handler.name}: it must write every declared output", findings)
        return status, r.get("message", ""), r.get("hint", ""), findings

    def _inputs(self, step: Step) -> dict[str, str | None]:
        paths: dict[str, str | None] = {}
        for name, spec in step.manifest.input_specs().items():
            source, output = spec.from_.split(":", 1)
            path = artifacts.final_dir(self.project.state_dir, source) / output.rstrip("/")
            paths[name] = str(path) if self.facts[step.id].components["inputs"].get(name) else None
        return paths

    def _env(self, devices: list[int] | None) -> dict[str, str]:
        env = base_env()
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
        return env

    def _all_gpus(self) -> list[int]:
        return list(self.gpu_pool.all)

    def _event(self, step_run_id: int, event: dict) -> None:
        if event.get("type") == "metric":
            self.store.record_metric(step_run_id, event["name"], event.get("value"), event.get("unit", ""),
                                     event.get("step"))
        elif event.get("type") == "figure":
            self.store.record_figure(step_run_id, event.get("spec"))
        elif event.get("type", "").startswith("progress"):
            self.display.progress(event)


def base_env() -> dict[str, str]:
    """The environment of every step process (and of the run's step starter)."""
    env = dict(os.environ)
    # the step imports what the runner imports (handlers from a source tree, tests' helpers)
    # (absolute: the step runs in the project folder, maybe on another machine)
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def step_gpus(step: Step) -> int | str:
    if step.manifest.gpus is not None:
        return step.manifest.gpus
    return 1 if step.handler.gpu_env or "cuda" in step.requirements() else 0
