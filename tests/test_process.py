"""run_step_process with a real child (`python -m atlas.worker`) and handlers written on the fly."""
from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from atlas.process import ProcessResult, ProcessTable, run_step_process

HANDLERS = '''
import os, subprocess, sys, time
from atlas.handler import Handler, Result


class Ok(Handler):
    name = "ok"

    def run(self, ctx):
        ctx.metric("accuracy", 0.875, "%", step=2)
        with ctx.progress(4, "epochs") as bar:
            bar.advance(1, loss=0.5)
        print("hello from the handler", flush=True)
        ctx.log.info("saved %s", ctx.write_text("out.txt", "done"))
        return Result.succeeded("trained", findings=["accuracy 0.875"])


class Boom(Handler):
    name = "boom"

    def run(self, ctx):
        raise ValueError("bad input shape (3, 224)")


class NotAResult(Handler):
    name = "not_a_result"

    def run(self, ctx):
        return 42


class Exit3(Handler):
    name = "exit3"

    def run(self, ctx):
        print("about to exit", flush=True)
        os._exit(3)


class Sleepy(Handler):
    """Starts a grandchild, writes both pids, says it has started, then hangs."""
    name = "sleepy"

    def run(self, ctx):
        child = subprocess.Popen(["sleep", "60"])
        (ctx.output_dir / "pids").write_text(f"{os.getpid()} {child.pid}")
        with ctx.progress(None, "sleeping"):
            time.sleep(60)
        return Result.succeeded()


class Noisy(Handler):
    name = "noisy"

    def run(self, ctx):
        for i in range(5000):          # far more than a pipe buffer holds
            ctx.metric("m", i)
        return Result.succeeded("5000 metrics")


class Leaver(Handler):
    """Starts a background process and returns without waiting for it."""
    name = "leaver"

    def run(self, ctx):
        child = subprocess.Popen(["sleep", "60"])
        (ctx.output_dir / "pids").write_text(f"{os.getpid()} {child.pid}")
        return Result.succeeded()


class Stubborn(Handler):
    """Starts a grandchild that ignores SIGTERM (as a busy DataLoader worker may), then hangs."""
    name = "stubborn"

    def run(self, ctx):
        code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        (ctx.output_dir / "pids").write_text(f"{os.getpid()} {child.pid}")
        time.sleep(60)
        return Result.succeeded()
'''


def _state(pid: int) -> str | None:
    """The process state letter, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


class Step:
    """Runs one handler of HANDLERS in a child process and keeps what came back."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        (tmp_path / "probe_handlers.py").write_text(textwrap.dedent(HANDLERS))
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.events: list[dict] = []
        self.logs: list[str] = []
        self.table = ProcessTable()
        self.on_event = self.events.append

    def run(self, cls: str, timeout: float | None = None) -> ProcessResult:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), *[p for p in sys.path if p]])
        spec = {"task": "AG-T-X-001", "handler_ref": f"probe_handlers:{cls}", "params": {}, "inputs": {},
                "output_dir": str(self.out), "project_root": str(self.root), "project": {}, "devices": []}
        return run_step_process(spec, self.root / "spec.json", cwd=self.root, env=env, timeout=timeout,
                                on_event=lambda e: self.on_event(e), on_log=self.logs.append,
                                table=self.table)


@pytest.fixture
def step(tmp_path):
    return Step(tmp_path)


def test_a_handler_that_succeeds(step):
    proc = step.run("Ok", timeout=60)
    assert proc.returncode == 0
    assert not proc.timed_out and not proc.cancelled
    assert proc.result == {"type": "result", "status": "succeeded", "message": "trained", "hint": "",
                           "findings": ["accuracy 0.875"]}
    assert {"type": "metric", "name": "accuracy", "value": 0.875, "unit": "%", "step": 2} in step.events
    progress = [e for e in step.events if e["type"].startswith("progress")]
    assert [(e["type"], e.get("done")) for e in progress] == [("progress", 0.0), ("progress", 1.0),
                                                             ("progress_end", None)]
    assert progress[1]["total"] == 4 and progress[1]["fields"] == {"loss": 0.5}
    assert all(e["task"] == "AG-T-X-001" for e in progress)
    # the result travels on the events pipe, never as an event
    assert not any(e.get("type") == "result" for e in step.events)
    assert "hello from the handler" in step.logs
    assert any(line.startswith("INFO atlas.AG-T-X-001: saved ") for line in step.logs)
    assert proc.log_lines == len(step.logs)
    assert (step.out / "out.txt").read_text() == "done"
    # the spec handed to the worker names the events pipe
    assert "events_fd" in (step.root / "spec.json").read_text()


def test_a_handler_that_raises_fails_with_the_exception_text(step):
    proc = step.run("Boom", timeout=60)
    assert proc.returncode == 0  # the worker survived the handler
    assert proc.result["status"] == "failed"
    assert proc.result["message"] == "ValueError: bad input shape (3, 224)"
    assert "atlas show AG-T-X-001" in proc.result["hint"]
    assert "Traceback (most recent call last):" in step.logs
    assert "ValueError: bad input shape (3, 224)" in step.logs
    assert any("probe_handlers.py" in line and "in run" in line for line in step.logs)


def test_a_handler_that_does_not_return_a_result_fails(step):
    proc = step.run("NotAResult", timeout=60)
    assert proc.result["status"] == "failed"
    assert proc.result["message"] == "handler returned int, not a Result"


def test_an_unknown_handler_ref_fails_with_a_result(step):
    proc = step.run("NoSuchClass", timeout=60)
    assert proc.result["status"] == "failed"
    assert "AttributeError" in proc.result["message"] and "NoSuchClass" in proc.result["message"]


def test_a_process_that_dies_has_no_result_and_its_exit_code(step):
    proc = step.run("Exit3", timeout=60)
    assert proc.result is None
    assert proc.returncode == 3
    assert not proc.timed_out and not proc.cancelled
    assert "about to exit" in step.logs


def _wait_for_pids(step: Step) -> tuple[int, int]:
    path = step.out / "pids"
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the handler never started"
        time.sleep(0.05)
    worker, grandchild = map(int, path.read_text().split())
    return worker, grandchild


def test_a_step_past_its_timeout_is_killed_with_its_whole_group(step):
    started = time.monotonic()
    proc = step.run("Sleepy", timeout=1.5)
    elapsed = time.monotonic() - started
    assert proc.timed_out and not proc.cancelled
    assert proc.result is None
    assert proc.returncode is not None and proc.returncode < 0  # killed by a signal
    assert elapsed < 30  # generous: the handler would sleep 60 s
    worker, grandchild = _wait_for_pids(step)
    # the worker and the process it started are gone: the kill reached the process group
    deadline = time.monotonic() + 10
    while (_alive(grandchild) or _group_members(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
    assert not _alive(grandchild)
    assert _group_members(worker) == []
    assert any(e["type"] == "progress" for e in step.events)


def test_cancel_all_from_another_thread_stops_a_sleeping_step(step):
    started = threading.Event()

    def on_event(event: dict) -> None:
        step.events.append(event)
        if event.get("type") == "progress":
            started.set()

    def canceller() -> None:
        if started.wait(timeout=30):
            step.table.cancel_all()

    step.on_event = on_event
    thread = threading.Thread(target=canceller, daemon=True)
    thread.start()
    proc = step.run("Sleepy", timeout=120)
    thread.join(timeout=10)
    assert started.is_set()
    assert proc.cancelled and not proc.timed_out
    assert proc.result is None
    assert proc.returncode is not None and proc.returncode < 0
    worker, grandchild = _wait_for_pids(step)
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert step.table.procs == set()  # the finished process left the table


def test_a_cancelled_table_stops_a_step_that_starts_later(step):
    step.table.cancel_all()
    started = time.monotonic()
    proc = step.run("Sleepy", timeout=120)
    assert proc.cancelled and not proc.timed_out
    assert proc.result is None
    assert time.monotonic() - started < 30


def test_timeout_kills_a_grandchild_that_ignores_sigterm(step, monkeypatch):
    import atlas.process

    monkeypatch.setattr(atlas.process, "KILL_GRACE_S", 0.5)
    started = time.monotonic()
    proc = step.run("Stubborn", timeout=1.5)
    assert proc.timed_out
    worker, grandchild = _wait_for_pids(step)
    try:
        deadline = time.monotonic() + 10
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        # SIGTERM killed the worker at once; what is left of its group gets SIGKILL after the grace
        assert not _alive(grandchild), "a child of the step outlived the step's timeout"
        assert _group_members(worker) == []
        assert time.monotonic() - started < 30
    finally:
        if _alive(grandchild):
            os.kill(grandchild, 9)



def test_a_failing_event_sink_does_not_stop_the_step(step):
    """A sink that raises (a locked database, say) must not leave the child blocked on a full pipe."""
    def failing_sink(event):
        raise RuntimeError("database is locked")
    step.on_event = failing_sink
    proc = step.run("Noisy", timeout=60)
    assert proc.result["status"] == "succeeded" and proc.result["message"] == "5000 metrics"


def test_processes_left_behind_by_a_finished_step_are_killed(step):
    proc = step.run("Leaver", timeout=60)
    assert proc.result["status"] == "succeeded"
    worker, grandchild = map(int, (step.out / "pids").read_text().split())
    assert not _alive(grandchild)
