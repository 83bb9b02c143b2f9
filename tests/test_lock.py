"""The project lock: one `atlas run` per project, released by the kernel when its holder dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from atlas.errors import AtlasError, LockBusy
from atlas.lock import ProjectLock

HOLDER = """
import sys, time
from pathlib import Path
from atlas.lock import ProjectLock
lock = ProjectLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on tmp_path/.atlas until it is killed."""
    state_dir = tmp_path / ".atlas"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, state_dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_acquire_and_release_in_one_process(tmp_path):
    state_dir = tmp_path / ".atlas"
    with ProjectLock(state_dir).acquire() as lock:
        assert lock.fd is not None
        assert (state_dir / "run.lock").read_text() == str(os.getpid())
    assert lock.fd is None
    assert (state_dir / "run.lock").read_text() == ""
    # free again: a second acquire succeeds at once
    ProjectLock(state_dir).acquire().release()


def test_second_acquire_in_the_same_process_is_busy_too(tmp_path):
    state_dir = tmp_path / ".atlas"
    with ProjectLock(state_dir).acquire():
        with pytest.raises(LockBusy):
            ProjectLock(state_dir).acquire(wait=False)


def test_busy_lock_names_the_holder_pid_and_suggests_wait(holder):
    proc, state_dir = holder
    with pytest.raises(LockBusy) as info:
        ProjectLock(state_dir).acquire(wait=False)
    err = info.value
    assert isinstance(err, AtlasError)
    assert f"pid {proc.pid}" in err.message
    assert "--wait" in err.hint


def test_busy_acquire_does_not_leak_file_descriptors(holder):
    _, state_dir = holder
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(LockBusy):
            ProjectLock(state_dir).acquire(wait=False)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_lock_is_released_when_the_holder_is_killed(holder):
    proc, state_dir = holder
    with pytest.raises(LockBusy):
        ProjectLock(state_dir).acquire(wait=False)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    lock = ProjectLock(state_dir).acquire(wait=False)
    try:
        assert (state_dir / "run.lock").read_text() == str(os.getpid())
    finally:
        lock.release()


def test_wait_queues_behind_the_holder(holder):
    """The waiter polls while the lock is held (each failed attempt is seen by the sleep hook)
    and gets it once the holder dies: no timed guess decides either."""
    proc, state_dir = holder
    failed_attempts = []

    def sleep(seconds: float) -> None:
        failed_attempts.append(seconds)
        if len(failed_attempts) == 3:        # held through three attempts: now the holder dies
            proc.kill()
            proc.wait()

    lock = ProjectLock(state_dir).acquire(wait=True, poll_s=0.05, sleep=sleep)
    try:
        assert len(failed_attempts) >= 3 and proc.poll() is not None
        assert (state_dir / "run.lock").read_text() == str(os.getpid())
    finally:
        lock.release()
