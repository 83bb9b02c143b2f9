"""The parent side of a step process: start it, stream its log and events, enforce the
timeout, and kill its whole process group on timeout or Ctrl-C.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from atlas.forkserver import ForkServer

KILL_GRACE_S = 5.0


@dataclass
class ProcessResult:
    result: dict | None            # the handler's Result as a dict, None if it never arrived
    returncode: int | None
    timed_out: bool = False
    cancelled: bool = False
    log_lines: int = 0
    job: object | None = None      # a Slurm step: its atlas.slurm.JobInfo


@dataclass
class ProcessTable:
    """Live step processes, so Ctrl-C can stop all of them at once."""

    procs: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def add(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.add(proc)

    def remove(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def cancel_all(self) -> None:
        self.cancelled.set()
        with self.lock:
            procs = list(self.procs)
        for proc in procs:
            if hasattr(proc, "cancel"):    # a Slurm job: scancel, not a signal
                proc.cancel()
            else:
                terminate(proc)


def _stat(pid: int | str) -> list[bytes]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...] (field 3 onwards).
    OSError when the process is gone or there is no procfs."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def _group_members(pgid: int) -> list[int] | None:
    """Live (not zombie) processes of a process group; None without procfs."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    found = []
    for entry in entries:
        if entry.isdigit():
            try:
                fields = _stat(entry)
                if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _group_running(proc: subprocess.Popen) -> bool:
    """Whether the step's process group still has a live member (zombies don't count)."""
    if proc.poll() is None:
        return True
    members = _group_members(proc.pid)
    if members is None:  # no procfs: ask the kernel about the group as a whole
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return True
    return bool(members)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return _stat(pid)[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:                                  # no procfs: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (/proc/PID/stat field 22):
    with the pid, it names one process for good, a pid reused later has another."""
    try:
        return int(_stat(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def leftover_pids(pgid: int, leader_started: int | None) -> list[int]:
    """Live processes of the process group a dead runner's step led. The group is the
    step's while its leader lives with the recorded start time; once the leader is gone,
    the kernel keeps the group's number from being reused while any member lives, so every
    member is the step's. A new process that reused the number is never touched."""
    leader = start_ticks(pgid)
    if leader is not None and leader_started is not None and leader != leader_started:
        return []                                     # the number was reused: not ours
    return _group_members(pgid) or []


def kill_leftovers(pgid: int, leader_started: int | None, wait_s: float = 5.0) -> int:
    """SIGKILL what a dead runner's step left running; wait until it is gone. Returns
    how many processes there were."""
    pids = leftover_pids(pgid, leader_started)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait_s
    while pids and leftover_pids(pgid, leader_started) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(pids)


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM the step's process group, then SIGKILL what is left after a grace period.

    The whole group, not just the worker: when the worker dies at once, a child it
    started (a DataLoader worker, a tool that traps SIGTERM) may still be running.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_running(proc):
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + KILL_GRACE_S
        while _group_running(proc) and time.monotonic() < deadline:
            time.sleep(0.05)


def _guarded(sink: Callable, item: object) -> None:
    """A failing sink (say, a locked database) must not stop the pipe being drained:
    a child blocked on a full pipe would hang the step."""
    try:
        sink(item)
    except Exception as exc:
        logging.getLogger("atlas.process").warning("could not record a step event: %s", exc)


class StepSinks:
    """Where a step's two streams go, line by line: JSON events (the result kept, the rest
    handed on) and log lines (counted, handed on). A local step's pipes and a Slurm job's
    files feed the same sinks."""

    def __init__(self, on_event: Callable[[dict], None], on_log: Callable[[str], None]) -> None:
        self.on_event, self.on_log = on_event, on_log
        self.result: dict = {}
        self.lines = 0

    def event(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        if event.get("type") == "result":
            self.result.update(event)
        else:
            _guarded(self.on_event, event)

    def log(self, line: str) -> None:
        self.lines += 1
        _guarded(self.on_log, line)


def _pump_lines(stream, sink: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        sink(raw.decode("utf-8", "replace").rstrip("\n"))
    stream.close()


def _start(spec_path: Path, cwd: Path, env: dict[str, str], events_fd: int, lifeline_fd: int,
           starter: ForkServer | None):
    """The step process: forked by the run's starter when it can (milliseconds), else a
    new interpreter (`python -m atlas.worker`). Either way its own session and group."""
    if starter is not None and starter.accepts(env):
        out_read, out_write = os.pipe()
        try:
            proc = starter.spawn(spec_path, cwd, env, out_write, events_fd, lifeline_fd)
        except OSError as exc:
            os.close(out_read)
            logging.getLogger("atlas.process").info("starting steps in new interpreters: %s", exc)
        else:
            proc.stdout = os.fdopen(out_read, "rb")
            return proc
        finally:
            os.close(out_write)
    return subprocess.Popen([sys.executable, "-m", "atlas.worker", str(spec_path)], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            pass_fds=(events_fd, lifeline_fd), start_new_session=True)


def run_step_process(spec: dict, spec_path: Path, *, cwd: Path, env: dict[str, str],
                     timeout: float | None, on_event: Callable[[dict], None],
                     on_log: Callable[[str], None], table: ProcessTable,
                     on_start: Callable[[int], None] = lambda pid: None,
                     starter: ForkServer | None = None) -> ProcessResult:
    read_fd, write_fd = os.pipe()
    # The lifeline: the worker blocks reading it and kills its own process group when
    # it reads end-of-file, which happens the moment this runner dies, however it dies.
    life_read, life_write = os.pipe()
    spec = dict(spec, events_fd=write_fd, lifeline_fd=life_read)
    spec_path.write_text(json.dumps(spec))
    sinks = StepSinks(on_event, on_log)
    try:
        proc = _start(spec_path, cwd, env, write_fd, life_read, starter)
    except BaseException:
        os.close(life_write)
        raise
    finally:
        os.close(write_fd)
        os.close(life_read)
    table.add(proc)
    _guarded(on_start, proc.pid)
    readers = [threading.Thread(target=_pump_lines, args=(proc.stdout, sinks.log), daemon=True),
               threading.Thread(target=_pump_lines, args=(os.fdopen(read_fd, "rb"), sinks.event), daemon=True)]
    for reader in readers:
        reader.start()
    timed_out = False
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while proc.poll() is None:
            if table.cancelled.is_set():
                terminate(proc)
                break
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                terminate(proc)
                break
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        terminate(proc)
        raise
    finally:
        terminate(proc)   # processes the step left behind go with it
        os.close(life_write)
        for reader in readers:
            reader.join(timeout=10)
        table.remove(proc)
    return ProcessResult(sinks.result or None, proc.returncode, timed_out, table.cancelled.is_set(), sinks.lines)
