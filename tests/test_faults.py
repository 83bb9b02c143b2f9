"""Faults done for real: the runner or a step SIGKILLed, a write-protected project (a
read-only filesystem), a full disk. Nothing stored is lost; nothing half-done is taken
as done; every error is a message with a hint, never a traceback."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from helpers import atlas, runner, task, write_project

A, B, C = "AG-T-A-001", "AG-T-B-001", "AG-T-C-001"


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert path.exists(), proc.communicate(timeout=30)


def gone_within(pid: int, seconds: float) -> float | None:
    """Seconds until the process is gone (zombies count as gone), or None."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    return time.monotonic() - start
        except FileNotFoundError:
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def integrity(root: Path) -> str:
    db = sqlite3.connect(root / ".atlas" / "state.db")
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def test_a_killed_runner_takes_its_step_with_it_and_the_next_run_repairs(tmp_path):
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 60, "child": True}), task(C, "echo"))
    proc = runner(root, A)
    wait_for(root / f"child-{A}", proc)
    wait_for(root / f"started-{A}", proc)
    worker, grandchild = int((root / f"started-{A}").read_text()), int((root / f"child-{A}").read_text())
    assert any((root / ".atlas" / "out" / ".tmp").iterdir())                  # half-written outputs
    proc.kill()                                                              # SIGKILL: no cleanup code runs
    proc.wait(timeout=10)
    assert (after := gone_within(worker, 3.0)) is not None and after < 1.5, "the step outlived its runner"
    assert gone_within(grandchild, 3.0) is not None, "the step's own child outlived the runner"
    # before anything else runs, the dead run is not shown as running
    status = {r["id"]: r for r in json.loads(atlas(root, "status", "--json").stdout)}
    assert status[A]["status"] == "interrupted" and "runner is gone" in status[A]["reason"]
    # the next run records it honestly and removes what it left half-written
    assert atlas(root, "run", C).exit_code == 0
    assert not (root / ".atlas" / "out" / ".tmp").exists() or not any((root / ".atlas" / "out" / ".tmp").iterdir())
    assert not (root / ".atlas" / "out" / A).exists()                        # never taken as done
    history = json.loads(atlas(root, "history", A, "--json").stdout)
    assert history[0]["status"] == "interrupted" and history[0]["reason"] == "runner was killed"
    runs = json.loads(atlas(root, "report", "--format", "json", "-o", "-").stdout)["runs"]
    assert {r["id"]: r["status"] for r in runs}[1] == "interrupted"
    assert integrity(root) == "ok"


def test_the_next_run_kills_what_a_dead_runner_left_behind(tmp_path):
    """Even when the lifeline did not fire (the worker was stopped), the next run finds
    the step's processes by their group and marker, kills them, then marks the step."""
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 60}), task(C, "echo"))
    proc = runner(root, A)
    wait_for(root / f"started-{A}", proc)
    worker = int((root / f"started-{A}").read_text())
    os.kill(worker, signal.SIGSTOP)                  # frozen: its lifeline thread cannot act
    proc.kill()
    proc.wait(timeout=10)
    time.sleep(0.5)
    assert gone_within(worker, 0.2) is None          # still there, stopped
    assert atlas(root, "run", C).exit_code == 0
    assert gone_within(worker, 5.0) is not None
    assert json.loads(atlas(root, "history", A, "--json").stdout)[0]["status"] == "interrupted"


def test_a_killed_step_process_fails_its_step_and_the_run_goes_on(tmp_path):
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 60}), task(C, "echo"))
    proc = runner(root, "-k", A, C)
    wait_for(root / f"started-{A}", proc)
    os.kill(int((root / f"started-{A}").read_text()), signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "the step's process died without a result (killed by signal SIGKILL)" in out
    status = {r["id"]: r["status"] for r in json.loads(atlas(root, "status", "--json").stdout)}
    assert status == {A: "failed", C: "succeeded"}
    assert integrity(root) == "ok"


@pytest.fixture
def small_fs(tmp_path):
    """A small tmpfs of our own (needs the right to mount: root here and in CI)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_write_protected_project_can_still_be_read(small_fs):
    root = write_project(small_fs / "p", task(A, "echo"), task(B, "copy", (A,), inputs={"src": f"{A}:out.txt"}))
    assert atlas(root, "run", B).exit_code == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for command in (["status"], ["show", A], ["history"], ["plan"], ["compare", "1", "1"],
                    ["report", "--format", "md", "-o", "-"], ["validate"]):
        result = atlas(root, *command)
        assert result.exit_code == 0, (command, result.output)
    assert "wrote 5 chars" in atlas(root, "status").stdout
    for command in (["run", B, "-f"], ["report"], ["done", A, "--note", "x"]):
        result = atlas(root, *command)
        if command[0] == "done":
            assert result.exit_code == 2                            # not a manual step: usage, before writing
            continue
        assert result.exit_code == 6, (command, result.output)
        assert "error: cannot write " in result.stderr and "Read-only file system" in result.stderr
        assert "hint: " in result.stderr and "Traceback" not in result.output


def test_a_full_disk_fails_clearly_and_loses_nothing(small_fs):
    root = write_project(small_fs / "p", task(A, "echo"), task(B, "fill", params={"megabytes": 16}))
    assert atlas(root, "run", A).exit_code == 0
    result = atlas(root, "run", B)
    assert result.exit_code in (1, 6), result.output
    assert "Traceback" not in result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "No space left on device" in text or "disk is full" in text
    # what was stored before is intact, and the half-written output is not an output
    assert integrity(root) == "ok"
    status = {r["id"]: r for r in json.loads(atlas(root, "status", "--json").stdout)}
    assert status[A]["status"] == "succeeded" and status[A]["message"] == "wrote 5 chars"
    assert not (root / ".atlas" / "out" / B).exists()
    # with space again, the next run repairs and succeeds
    (root / ".atlas" / "out" / ".failed").exists() and subprocess.run(["rm", "-rf", str(root / ".atlas" / "out" / ".failed")])
    write_project(root, task(B, "fill", params={"megabytes": 1}))
    assert atlas(root, "run", B).exit_code == 0
    assert integrity(root) == "ok"
