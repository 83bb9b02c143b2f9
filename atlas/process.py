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
from typing import Callable

KILL_GRACE_S = 5.0


@dataclass
class ProcessResult:
    result: dict | None            # the handler's Result as a dict, None if it never arrived
    returncode: int | None
    timed_out: bool = False
    cancelled: bool = False
    log_lines: int = 0


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
            terminate(proc)


def _group_running(proc: subprocess.Popen) -> bool:
    """Whether the step's process group still has a live member (zombies don't count)."""
    if proc.poll() is None:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel about the group as a whole
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == proc.pid and fields[0] not in (b"Z", b"X"):
                return True
    return False


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


def _pump_lines(stream, sink: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        sink(raw.decode("utf-8", "replace").rstrip("\n"))
    stream.close()


def run_step_process(spec: dict, spec_path: Path, *, cwd: Path, env: dict[str, str],
                     timeout: float | None, on_event: Callable[[dict], None],
                     on_log: Callable[[str], None], table: ProcessTable) -> ProcessResult:
    read_fd, write_fd = os.pipe()
    spec = dict(spec, events_fd=write_fd)
    spec_path.write_text(json.dumps(spec))
    result: dict = {}
    lines = [0]

    def event_sink(line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        if event.get("type") == "result":
            result.update(event)
        else:
            _guarded(on_event, event)

    def log_sink(line: str) -> None:
        lines[0] += 1
        _guarded(on_log, line)

    try:
        proc = subprocess.Popen([sys.executable, "-m", "atlas.worker", str(spec_path)], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                pass_fds=(write_fd,), start_new_session=True)
    finally:
        os.close(write_fd)
    table.add(proc)
    readers = [threading.Thread(target=_pump_lines, args=(proc.stdout, log_sink), daemon=True),
               threading.Thread(target=_pump_lines, args=(os.fdopen(read_fd, "rb"), event_sink), daemon=True)]
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
        for reader in readers:
            reader.join(timeout=10)
        table.remove(proc)
    return ProcessResult(result or None, proc.returncode, timed_out, table.cancelled.is_set(), lines[0])
