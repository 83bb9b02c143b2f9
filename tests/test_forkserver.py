"""Step processes forked by the run's starter (atlas.forkserver): each step still gets a
process of its own (own session and group, the step's environment and folder), with no
framework imported; the runner falls back to a new interpreter when the starter is
disabled, cannot take the step's environment, or dies mid-run."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from atlas import forkserver
from helpers import atlas, task, write_project

A, B, C = "AG-T-A-001", "AG-T-B-001", "AG-T-C-001"


def who(root: Path, tid: str) -> dict:
    return json.loads((root / ".atlas" / "out" / tid / "who.json").read_text())


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_each_step_is_its_own_forked_process(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_TEST_VAR", "from-the-runner")
    root = write_project(tmp_path, task(A, "whoami"), task(B, "whoami", (A,)), task(C, "whoami", (B,)))
    result = atlas(root, "run", C)
    assert result.exit_code == 0, result.output
    steps = [who(root, t) for t in (A, B, C)]
    assert len({s["pid"] for s in steps}) == 3
    starter = {s["ppid"] for s in steps}
    assert len(starter) == 1 and starter != {os.getpid()}       # one starter forked all three
    for s in steps:
        assert s["pgid"] == s["pid"] and s["sid"] == s["pid"]   # own session and group: killable as one
        assert s["cwd"] == str(root) and s["env"] == "from-the-runner"
        assert s["frameworks"] == []                           # the starter imported no framework
    assert len({s["random"] for s in steps}) == 3              # not the starter's random state, copied


def test_disabled_starter_spawns_interpreters(tmp_path, monkeypatch):
    monkeypatch.setenv(forkserver.DISABLE_VAR, "0")
    root = write_project(tmp_path, task(A, "whoami"))
    assert atlas(root, "run", A).exit_code == 0
    s = who(root, A)
    assert s["ppid"] == os.getpid() and s["pgid"] == s["pid"]


def test_exit_status_and_crash_come_through(tmp_path):
    root = write_project(tmp_path, task(A, "crash"))
    result = atlas(root, "run", A)
    assert result.exit_code == 1
    assert "died without a result (exit code 3)" in result.output


def test_a_step_with_other_startup_variables_gets_an_interpreter(tmp_path):
    server = forkserver.ForkServer({"PYTHONPATH": "/a", "PATH": "/bin"}, tmp_path)
    assert server.accepts({"PYTHONPATH": "/a", "PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "1"})
    assert not server.accepts({"PYTHONPATH": "/b", "PATH": "/bin"})
    assert not server.accepts({"PYTHONPATH": "/a", "PYTHONHASHSEED": "0"})


def test_starter_killed_mid_run(tmp_path):
    """The starter dies while a step runs: that step still ends with its own result (its
    pipes lead to the runner, not the starter), and the next step gets a new interpreter."""
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 2}), task(B, "whoami", (A,)))
    killed: list[int] = []

    def kill_starter() -> None:
        started = root / f"started-{A}"
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        step_pid = int(started.read_text())
        starter = int(Path(f"/proc/{step_pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        assert "atlas.forkserver" in cmdline(starter)
        os.kill(starter, 9)
        killed.append(starter)

    thread = threading.Thread(target=kill_starter)
    thread.start()
    result = atlas(root, "run", B)
    thread.join()
    assert killed and result.exit_code == 0, result.output
    assert (root / ".atlas" / "out" / A / "partial.txt").read_text() == "half-written"
    assert who(root, B)["ppid"] == os.getpid()
