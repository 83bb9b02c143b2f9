"""The parent side of a step process: start it, stream its log and events, enforce the
timeout, and kill its whole process group on timeout or Ctrl-C.
"""
from __future__ import annotations

import json
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


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM the step's process group, then SIGKILL what is left after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


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
            on_event(event)

    def log_sink(line: str) -> None:
        lines[0] += 1
        on_log(line)

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
        for reader in readers:
            reader.join(timeout=10)
        table.remove(proc)
    return ProcessResult(result or None, proc.returncode, timed_out, table.cancelled.is_set(), lines[0])
