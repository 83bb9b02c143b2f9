"""Pre-forked step processes: one starter per run forks a fresh child for each step.

A step process started with `python -m atlas.worker` pays for a new interpreter and for
importing the engine (pydantic, the handler base, the chart models): about 150 ms on a
2-core machine, most of a trivial step's cost. The starter is a process that has
imported exactly that, and no framework (torch, TensorRT, DALI, CuPy: those are imported by
the handler, in the child). For each step it forks a child that becomes an ordinary step
process: its own session and process group, stdout/stderr on the runner's pipe, the events
pipe and the lifeline received over the socket (SCM_RIGHTS), the step's environment and
working folder, then `atlas.worker.main`. The child is the same as a spawned worker for
everything the runner does with it: kill its group, time it out, read its log.

The starter is single-threaded (fork and threads do not mix), reaps its children on
SIGCHLD and reports each exit status to the runner; it exits when the runner's end of the
socket closes, however the runner died (the children have their own lifelines).
A step whose environment changes how the interpreter starts (PYTHONPATH, PYTHONHASHSEED, …)
differs from what the starter imported with, and is spawned the usual way.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# variables read when an interpreter starts: a step that sets them differently needs its
# own interpreter, not a fork of one that started without them
_STARTUP_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONSAFEPATH", "PYTHONNOUSERSITE",
                 "PYTHONOPTIMIZE", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONUTF8",
                 "PYTHONIOENCODING", "PYTHONUNBUFFERED", "PYTHONWARNINGS", "PYTHONDEVMODE",
                 "PYTHONMALLOC", "PYTHONFAULTHANDLER", "PYTHONTRACEMALLOC", "PYTHONINSPECT",
                 "PYTHONVERBOSE", "PYTHONSTARTUP", "PYTHONNODEBUGRANGES", "PYTHONINTMAXSTRDIGITS",
                 "VIRTUAL_ENV", "LD_PRELOAD", "LD_LIBRARY_PATH")
_MAX_MESSAGE = 1 << 20
DISABLE_VAR = "ATLAS_FORKSERVER"         # =0: every step in a new interpreter, as before


def enabled() -> bool:
    return os.environ.get(DISABLE_VAR, "1") != "0" and hasattr(socket, "send_fds") and hasattr(os, "fork")


def _startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in _STARTUP_VARS if k in env}


class ForkedProcess:
    """What the runner needs of a step process (the subset of subprocess.Popen it uses)."""

    def __init__(self, pid: int, stdout) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._done = threading.Event()
        self._orphaned = False

    def _exited(self, code: int | None) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        if not self._done.is_set() and self._orphaned:
            # the starter died: nobody reaps the child; judge by whether it still runs
            from atlas.process import pid_alive
            if not pid_alive(self.pid):
                self._exited(-signal.SIGKILL)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))):
            if self.poll() is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("atlas step", timeout)
        return self.returncode


class ForkServer:
    """The runner's side: starts the starter on first use, asks it for children."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = dict(env), cwd
        self.startup = _startup_env(env)
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()                    # one request on the socket at a time
        self.replies: dict[int, tuple[threading.Event, list]] = {}
        self.children: dict[int, ForkedProcess] = {}
        self.next_id = 0
        self.failed: str | None = None                  # why it cannot be used: spawn instead

    def accepts(self, env: dict[str, str]) -> bool:
        return self.failed is None and _startup_env(env) == self.startup

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # its own session: a Ctrl-C at the terminal reaches the runner, which decides
            self.proc = subprocess.Popen([sys.executable, "-m", "atlas.forkserver", str(theirs.fileno())],
                                         cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            theirs.close()
        ready = ours.recv(64) if select.select([ours], [], [], 30)[0] else b""
        if ready != b"ready":
            ours.close()
            raise OSError("the step starter did not come up")
        self.sock = ours
        threading.Thread(target=self._read, name="atlas-forkserver", daemon=True).start()

    def _read(self) -> None:
        sock = self.sock
        while True:
            try:
                data = sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if "exit" in message:
                child = self.children.pop(message["exit"], None)
                if child is not None:
                    child._exited(message["code"])
                continue
            event, box = self.replies.pop(message["id"])
            if "pid" in message:
                # registered here, before the exit report that may follow at once
                child = self.children[message["pid"]] = ForkedProcess(message["pid"], None)
                box.append(child)
            else:
                box.append(message.get("error", "the step starter could not fork"))
            event.set()
        # the starter is gone: no more exit reports; children are judged by /proc
        self.failed = self.failed or "the step starter exited"
        for child in list(self.children.values()):
            child._orphaned = True
        for event, box in list(self.replies.values()):
            event.set()

    def spawn(self, spec_path: Path, cwd: Path, env: dict[str, str], stdout_fd: int,
              events_fd: int, lifeline_fd: int) -> ForkedProcess:
        """A child running the step; raises OSError when the starter cannot make one (the
        caller then spawns a worker the usual way)."""
        with self.lock:
            if self.failed:
                raise OSError(self.failed)
            if self.sock is None:
                try:
                    self._start()
                except OSError as exc:
                    self.failed = f"the step starter could not start: {exc}"
                    raise
            self.next_id += 1
            request_id = self.next_id
            event, box = threading.Event(), []
            self.replies[request_id] = (event, box)
            payload = json.dumps({"id": request_id, "spec": str(spec_path), "cwd": str(cwd),
                                  "env": env}).encode()
            try:
                socket.send_fds(self.sock, [payload], [stdout_fd, events_fd, lifeline_fd])
            except OSError as exc:
                self.replies.pop(request_id, None)
                self.failed = f"the step starter went away: {exc}"
                raise
        if not event.wait(30) or not box:
            raise OSError("the step starter did not answer")
        if not isinstance(box[0], ForkedProcess):
            raise OSError(box[0])
        return box[0]

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the starter process ------------------------------------------------------------------

def _child(sock: socket.socket, wake: tuple[int, int], request: dict, fds: list[int]) -> None:
    """In the forked child: become the step process, never return."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        sock.close()
        for fd in wake:
            os.close(fd)
        stdout_fd, events_fd, lifeline_fd = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stdout_fd, 2)
        for fd in (devnull, stdout_fd):
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import random
        random.seed()                       # not the starter's state, shared by every child
        from atlas import worker
        sys.argv = [worker.__file__, request["spec"]]
        code = worker.main(request["spec"], events_fd=events_fd, lifeline_fd=lifeline_fd)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(fd: int) -> int:
    import atlas.charts  # noqa: F401  (what every child needs, imported once; the
    import atlas.worker  # noqa: F401   chart models for handlers that draw figures)

    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)      # a handler, so the wakeup fd is written
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.send(b"ready")
    while True:
        try:
            readable, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            os.read(wake_r, 4096)
        while True:                                         # reap every child that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            sock.send(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}).encode())
        if sock not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
        except OSError:
            data, fds = b"", []
        if not data:
            return 0                                        # the runner closed or died
        request = json.loads(data)
        if len(fds) != 3:
            for f in fds:
                os.close(f)
            sock.send(json.dumps({"id": request.get("id"), "error": "expected 3 file descriptors"}).encode())
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(sock, (wake_r, wake_w), request, fds)
        for f in fds:
            os.close(f)
        sock.send(json.dumps({"id": request["id"], "pid": pid}).encode())


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
