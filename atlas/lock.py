"""One `atlas run` (or `atlas done`) at a time per project: an flock on .atlas/run.lock.

The kernel drops the lock when its holder dies, so a killed runner never leaves the
project locked. A second runner waits (`--wait`) or stops with the holder's pid.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from atlas.errors import LockBusy


class ProjectLock:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "run.lock"
        self.fd: int | None = None

    def acquire(self, wait: bool = False, poll_s: float = 0.5, sleep=time.sleep) -> "ProjectLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise LockBusy(f"another atlas run (pid {holder}) is working in this project",
                                   "wait for it to finish, or pass --wait to queue behind it") from None
                sleep(poll_s)         # tests pass a hook that sees each failed attempt
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "ProjectLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
