"""`atlas run` as a chain of small functions: load -> graph -> plan -> execute -> record -> report.

Each CLI command calls one function here; none of them prints except through the
RunDisplay it is given.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from atlas import __version__, artifacts
from atlas.console import RunDisplay
from atlas.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STRICT_SKIP, AtlasError, UsageError
from atlas.executor import Interrupted, Outcome, execute
from atlas.facts import History, check_targets, open_store, step_facts, subgraph
from atlas.fingerprint import fingerprint
from atlas.lock import ProjectLock
from atlas.planner import StepFacts, decide
from atlas.probe import Probe
from atlas.project import Project
from atlas.state import StateStore


@dataclass
class RunOptions:
    targets: list[str]
    force: bool = False
    force_all: bool = False
    keep_going: bool = False
    jobs: int = 1
    strict: bool = False
    wait_lock: bool = False
    report: bool = True             # write .atlas/report.html at the end
    executor: str | None = None     # local | slurm; None: the project's executor block
    argv: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    run_id: int
    outcomes: dict[str, Outcome]
    exit_code: int
    report_path: str | None = None
    report_kept: bool = False          # nothing ran and no result changed: the last report holds
    report_problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts

    def as_dict(self) -> dict:
        return {"run": self.run_id, "exit_code": self.exit_code, "counts": self.counts(), "report": self.report_path,
                "report_kept": self.report_kept,
                "steps": {t: {"status": o.status, "reason": o.reason, "message": o.message}
                          for t, o in self.outcomes.items()}}


def exit_code_for(outcomes: dict[str, Outcome], strict: bool) -> int:
    statuses = {o.status for o in outcomes.values()}
    if "interrupted" in statuses:
        return EXIT_INTERRUPTED
    if "failed" in statuses:
        return EXIT_FAILED
    if strict and statuses & {"skipped", "waiting"}:
        return EXIT_STRICT_SKIP
    return EXIT_OK


def recover_after_crash(project: Project, store: StateStore) -> int:
    """Under the lock, before anything runs: what a killed runner left behind. Its steps'
    processes are killed (found by process group and its leader's start time), its runs and
    steps recorded as interrupted, and every half-written output folder removed, so
    nothing half-done is ever taken as done. Returns how many step runs were repaired."""
    for _step_run, pgid, leader_started in store.abandoned_processes():
        from atlas.process import kill_leftovers        # only then: a clean start imports none of it

        kill_leftovers(pgid, leader_started)
    repaired = store.repair_abandoned()
    artifacts.remove_temporaries(project.state_dir, keep=_batch_job_outputs(project, store))
    return repaired


def _batch_job_outputs(project: Project, store: StateStore) -> set[str]:
    """Output folders of Slurm jobs a killed runner left (still queued, running, or done
    with a result): kept for the run that takes the job over. A job that Slurm has ended
    without a result goes, with its folders."""
    keep: set[str] = set()
    root = project.state_dir / "slurm"
    if not root.is_dir():
        return keep
    from atlas import slurm

    job_ids = store.job_ids_by_dir()
    queue = slurm.SlurmQueue() if slurm.missing() is None else None     # checks only, no watching
    for job_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = slurm.job_files(job_dir)
        try:
            output = Path(json.loads(files["spec"].read_text())["output_dir"]).name
        except (OSError, ValueError, KeyError):
            slurm.remove_job_dir(job_dir)
            continue
        job_id = job_ids.get(str(job_dir))
        if queue is not None and job_id is not None and not slurm.has_result(files["events"]):
            try:
                ended = queue.check(job_id).final
            except slurm.SlurmError:          # the controller does not answer: keep it, to be safe
                ended = False
            if ended:
                slurm.remove_job_dir(job_dir)
                continue
        keep.add(output)
    return keep


def executor_of(project: Project, options: RunOptions) -> str:
    return options.executor or project.settings["executor"]["kind"]


def _slurm_queue(project: Project, options: RunOptions, display: RunDisplay):
    """The run's Slurm queue under --executor slurm (checked before the run starts)."""
    if executor_of(project, options) != "slurm":
        return None
    from atlas import slurm

    warning = slurm.shared_folder_warning(project.root, project.defaults.executor.partition)
    if warning:
        display.warn(warning)
    return slurm.SlurmQueue(project.defaults.executor.poll)


def check_executor(project: Project, options: RunOptions) -> None:
    if executor_of(project, options) == "slurm":
        from atlas import slurm

        why = slurm.missing()
        if why:
            raise UsageError(f"--executor slurm: {why}", slurm.SLURM_HINT)


def run(project: Project, probe: Probe, options: RunOptions, display: RunDisplay) -> RunReport:
    targets = check_targets(project, options.targets)
    if options.jobs < 1:
        raise UsageError("-j needs a number of 1 or more")
    check_executor(project, options)
    with ProjectLock(project.state_dir).acquire(wait=options.wait_lock):
        store = open_store(project)
        try:
            recover_after_crash(project, store)
            result = _execute(project, store, probe, options, targets, display)
        finally:
            store.close()
    if options.report and result.exit_code != EXIT_INTERRUPTED:
        from atlas.report import write_after_run

        nothing_ran = all(o.status == "up-to-date" for o in result.outcomes.values())
        result.report_path, result.report_problems, result.report_kept = write_after_run(
            project, probe, result.run_id, nothing_ran)
    return result


class _StepStarter:
    """Runs a step. The process table, the fork server and the step runner are made when
    the first step really runs: a run in which every step is up to date imports none of
    that machinery (processes, sockets, logging)."""

    def __init__(self, make: Callable[[], tuple]) -> None:
        self._make = make
        self._lock = threading.RLock()       # -j N: the first steps may start on several threads
        self._cancelled = False
        self.table = self.starter = self.runner = None

    def __call__(self, task: str, decision: object) -> Outcome:
        with self._lock:
            if self.runner is None:
                self.table, self.starter, self.runner = self._make()
                if self._cancelled:
                    self.table.cancel_all()
        return self.runner(task, decision)

    def cancel_all(self) -> None:
        with self._lock:
            self._cancelled = True
            table = self.table
        if table is not None:
            table.cancel_all()

    def close(self) -> None:
        if self.starter is not None:
            self.starter.close()


def _execute(project: Project, store: StateStore, probe: Probe, options: RunOptions, targets: list[str],
             display: RunDisplay) -> RunReport:
    graph = subgraph(project, targets)
    forced = set(graph) if options.force_all else set(targets) if options.force else set()
    capabilities, hints = probe.capabilities(), probe.hints()
    facts: dict[str, StepFacts] = {}
    # what the store held when the run began; a task's entry is read again once it has run
    # (only running a task changes its last success), so deciding 2,000 up-to-date steps
    # costs three queries, not three per step
    live = History(store, snapshot=True)
    run_id = store.start_run(targets, options.argv, __version__, probe.as_dict())
    queue = _slurm_queue(project, options, display)

    def machinery() -> tuple:
        from atlas import forkserver
        from atlas.process import ProcessTable
        from atlas.steprun import GpuPool, StepRunner, base_env

        table = ProcessTable()
        starter = forkserver.ForkServer(base_env(), project.root) if forkserver.enabled() and queue is None else None
        return table, starter, StepRunner(
            project, store, run_id, display, facts, table,
            GpuPool([g.index for g in probe.gpus], assign=options.jobs > 1 and queue is None), starter, queue)

    runner = _StepStarter(machinery)

    def decide_now(task: str, upstream_outcomes: dict) -> object:
        facts[task] = step_facts(project, live, probe, task)
        return decide(task, facts[task], upstream_outcomes, capabilities, task in forced, hints)

    def note(task: str, outcome: Outcome) -> None:
        known = facts.get(task)
        comps = known.components if known else None
        # An up-to-date check repeats the success of the same fingerprint, whose components
        # and params are stored (presented() shows them from there): the fingerprint is
        # enough, and a no-op run of 2,000 steps grows the store by half as much.
        full = comps is not None and outcome.status != "up-to-date"
        store.record_step(run_id, task, project.steps[task].info.handler, outcome.status, reason=outcome.reason,
                          message=outcome.message, fingerprint=known.fingerprint if comps else None,
                          components=comps if full else None, params=comps["params"] if full else None,
                          components_json=known.components_json if full else None)
        hint = "atlas done {} --note '...'".format(task) if outcome.status == "waiting" else ""
        display.step_ended(task, outcome.status, outcome.reason, hint=hint)

    def run_step(task: str, decision: object) -> Outcome:
        try:
            return runner(task, decision)
        finally:
            live.refresh(task)

    try:
        outcomes = execute(graph, decide_now, run_step, jobs=options.jobs, keep_going=options.keep_going,
                           note=note, cancel=runner.cancel_all)
    except Interrupted as stop:
        store.end_run(run_id, "interrupted")
        return RunReport(run_id, stop.outcomes, EXIT_INTERRUPTED)
    finally:
        runner.close()
        if queue is not None:
            queue.close()
    code = exit_code_for(outcomes, options.strict)
    store.end_run(run_id, {EXIT_OK: "succeeded", EXIT_STRICT_SKIP: "skipped"}.get(code, "failed"))
    return RunReport(run_id, outcomes, code)


def mark_done(project: Project, probe: Probe, task: str, note: str, wait_lock: bool = False) -> dict:
    """`atlas done`: complete a manual step, keeping its checklist, note and evidence."""
    from atlas.handler import Context

    check_targets(project, [task])
    step = project.steps[task]
    if not step.handler.manual:
        raise UsageError(f"{task} is not a manual step (handler {step.handler.name})",
                         f"run it with `atlas run {task}`")
    with ProjectLock(project.state_dir).acquire(wait=wait_lock):
        store = open_store(project)
        try:
            recover_after_crash(project, store)
            facts = step_facts(project, History(store, snapshot=False), probe, task)
            comps = facts.components
            sr = store.start_step(None, task, step.handler.name, reason="marked done",
                                  fingerprint=fingerprint(comps), components=comps, params=comps["params"])
            tmp = artifacts.temp_dir(project.state_dir, task, sr)
            ctx = Context(task, step.params, {}, tmp, project.root, project.settings)
            result = step.handler().run(ctx)
            if result.status == "succeeded":
                ctx.write_text("note.txt", note.rstrip() + "\n")
            if result.status != "succeeded":
                artifacts.keep_failed(tmp, project.state_dir, task)
                store.finish_step(sr, "failed", message=result.message, hint=result.hint)
                raise AtlasError(result.message, result.hint)
            files = artifacts.hash_folder(tmp)
            final = artifacts.publish(tmp, project.state_dir, task)
            rel = final.relative_to(project.root).as_posix()
            store.record_artifacts(sr, [(n, f"{rel}/{n}", sha, size) for n, sha, size in files])
            store.finish_step(sr, "succeeded", message=result.message, findings=result.findings, note=note)
            return {"task": task, "step_run": sr, "artifacts": [n for n, _, _ in files], "note": note}
        finally:
            store.close()
