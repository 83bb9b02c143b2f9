"""Work on two cores: `map_items` maps a pure function over a list (a forked child takes
items from the end while this process takes them from the front, until they meet);
`later` works out one call in a forked child while this process goes on.

A cold `atlas validate` of 2,000 manifests spends most of its time parsing YAML, one
file after another, on one core of two. The child inherits everything already imported
(no start-up cost) and sends back only plain results; the parent meanwhile runs
`before` (importing networkx, which it needs next anyway) and then parses too. Where the
two meet is settled as they go, through two counters in shared memory, so neither waits
for the other however the work is spread. Then networkx orders the graph in a `later`
child (importing it is a fifth of the load) while this process checks the manifests with
pydantic. Whatever a child did not deliver (it died, was killed, sent nothing) the parent
does itself: the result never depends on the child.
"""
from __future__ import annotations

import mmap
import os
import pickle
import signal
import struct
import sys
import threading
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Below this many items forking (a few ms for a 100 MB process) costs more than it saves.
MIN_ITEMS = 128
_MISSING = object()
_FRONT, _BACK = 0, 4          # offsets of the two uint32 counters in the shared page


def _can_fork() -> bool:
    # Linux only: fork is safe there for a child that only computes (macOS frameworks are
    # not fork-safe; Windows has no fork). With other threads running, one of them may
    # hold a lock the child would need: do it in one process then.
    if not sys.platform.startswith("linux") or threading.active_count() != 1:
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except OSError:
        return False


def map_items(fn: Callable[[T], R], items: Sequence[T], before: Callable[[], object] | None = None) -> list[R]:
    """[fn(item) for item in items], on two cores when there are enough items; `before`
    runs first in this process (while the child works). `fn` must be pure and its results
    picklable: what the child does to its own memory is lost."""
    if len(items) < MIN_ITEMS or not _can_fork():
        if before is not None:
            before()
        return [fn(item) for item in items]
    shared = mmap.mmap(-1, mmap.PAGESIZE)
    struct.pack_into("=II", shared, 0, 0, len(items))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(fn, items, shared, read_end, write_end)         # never returns
    os.close(write_end)
    results: list = [_MISSING] * len(items)
    reaped = False
    try:
        if before is not None:
            before()
        front = 0
        while front < struct.unpack_from("=I", shared, _BACK)[0]:
            struct.pack_into("=I", shared, _FRONT, front + 1)   # claimed before doing it
            results[front] = fn(items[front])
            front += 1
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            payload = pipe.read()
        _, status = os.waitpid(pid, 0)
        reaped = True
        if status == 0 and payload:
            for index, result in pickle.loads(payload).items():
                if results[index] is _MISSING:      # both may do the item where they meet
                    results[index] = result
    finally:
        if read_end >= 0:
            os.close(read_end)
        if not reaped:                              # interrupted: the child goes too
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        shared.close()
    return [fn(items[i]) if result is _MISSING else result for i, result in enumerate(results)]


def _child(fn: Callable, items: Sequence, shared: mmap.mmap, read_end: int, write_end: int) -> None:
    def work() -> dict:
        done = {}
        back = len(items)
        while back > struct.unpack_from("=I", shared, _FRONT)[0]:
            back -= 1
            struct.pack_into("=I", shared, _BACK, back)
            done[back] = fn(items[back])
        return done

    _send_and_exit(work, read_end, write_end)


def _send_and_exit(work: Callable[[], object], read_end: int, write_end: int) -> None:
    code = 1
    try:
        os.close(read_end)
        payload = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view):]
        code = 0
    except BaseException:          # Ctrl-C, a broken pipe, anything: the parent does the rest
        pass
    finally:
        os._exit(code)             # no atexit handlers, no flushing of the parent's buffers


class later(Generic[R]):
    """fn(*args), worked out in a forked child (when `fork` and this process may fork) while
    this process goes on; `result()` waits for it, or works it out here when the child did
    not deliver, or there is none. `fn` must be pure and its result picklable. Used as a
    context manager: leaving it kills and reaps a child whose result was not asked for."""

    def __init__(self, fn: Callable[..., R], *args: Any, fork: bool = True) -> None:
        self._fn, self._args = fn, args
        self._pid: int | None = None
        self._read = -1
        self._result: Any = _MISSING
        if fork and _can_fork():
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                _send_and_exit(lambda: fn(*args), read_end, write_end)     # never returns
            os.close(write_end)
            self._pid, self._read = pid, read_end

    def result(self) -> R:
        if self._result is _MISSING:
            self._result = self._delivered()
            if self._result is _MISSING:
                self._result = self._fn(*self._args)
        return self._result

    def _delivered(self) -> Any:
        if self._pid is None:
            return _MISSING
        with os.fdopen(self._read, "rb") as pipe:
            self._read = -1
            payload = pipe.read()
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if status != 0 or not payload:
            return _MISSING
        try:
            return pickle.loads(payload)
        except Exception:              # a torn payload: work it out here
            return _MISSING

    def close(self) -> None:
        if self._read >= 0:
            os.close(self._read)
            self._read = -1
        if self._pid is not None:
            pid, self._pid = self._pid, None
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    def __enter__(self) -> "later[R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
