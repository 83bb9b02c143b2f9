"""Map a pure function over a list on two cores: a forked child takes items from the end
while this process takes them from the front, until they meet.

A cold `atlas validate` of 2,000 manifests spends most of its time parsing YAML, one
file after another, on one core of two. The child inherits everything already imported
(no start-up cost) and sends back only plain results, a batch at a time; the parent
meanwhile runs `before` (importing pydantic and the manifest models), then hands each
result that has come in to `then` (checking that manifest), and parses from the front
only when no result is waiting. Where the two meet is settled as they go, through two
counters in shared memory, so neither waits for the other however the work is spread.
Whatever the child did not deliver (it died, was killed, sent nothing) the parent does
itself: the result never depends on the child.
"""
from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import struct
import sys
import threading
from typing import Callable, Sequence, TypeVar

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


def map_items(fn: Callable[[T], R], items: Sequence[T], before: Callable[[], object] | None = None,
              then: Callable[[int, R], object] | None = None) -> list[R]:
    """[fn(item) for item in items], on two cores when there are enough items; `before`
    runs first in this process (while the child works). `then(index, result)` runs here,
    once per item, as soon as its result is in hand (the child's arrive in batches as it
    goes, in no set order): the caller's own work on the results overlaps the child's.
    `fn` must be pure and its results picklable: what the child does to its own memory
    is lost."""
    if len(items) < MIN_ITEMS or not _can_fork():
        if before is not None:
            before()
        results = []
        for index, item in enumerate(items):
            results.append(fn(item))
            if then is not None:
                then(index, results[-1])
        return results
    shared = mmap.mmap(-1, mmap.PAGESIZE)
    struct.pack_into("=II", shared, 0, 0, len(items))
    read_end, write_end = os.pipe()
    _widen(write_end)
    pid = os.fork()
    if pid == 0:
        _child(fn, items, shared, read_end, write_end)         # never returns
    os.close(write_end)
    results: list = [_MISSING] * len(items)
    reaped = False

    def deliver(index: int, result: R) -> None:
        if results[index] is _MISSING:          # both may do the item where they meet
            results[index] = result
            if then is not None:
                then(index, result)

    try:
        if before is not None:
            before()
        received = bytearray()
        sent_all = False
        front = 0
        while True:
            # what the child sent first (checking it is the caller's work, parsing is the
            # child's), then an item from the front while any is left, else wait for more
            if not sent_all and select.select([read_end], [], [], 0)[0]:
                sent_all = _receive(read_end, received, deliver)
                continue
            if front < struct.unpack_from("=I", shared, _BACK)[0]:
                struct.pack_into("=I", shared, _FRONT, front + 1)   # claimed before doing it
                deliver(front, fn(items[front]))
                front += 1
                continue
            if sent_all:
                break
            sent_all = _receive(read_end, received, deliver)     # blocks until the child sends
        os.close(read_end)
        read_end = -1
        os.waitpid(pid, 0)                      # whatever it delivered in whole batches counts
        reaped = True
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
    for index, result in enumerate(results):
        if result is _MISSING:                  # the child died or was killed: done here
            deliver(index, fn(items[index]))
    return results


# The child sends a batch every BATCH items: a 4-byte length, then the pickled
# {index: result}. The pipe is widened (Linux allows 1 MB unprivileged) so that the child
# rarely waits while this process is still in `before`; when it must, it only waits.
BATCH = 64
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", _F_SETPIPE_SZ), _PIPE_BYTES)
    except (ImportError, OSError):
        pass                                    # a narrower pipe: the child waits more, that is all


def _receive(fd: int, received: bytearray, deliver: Callable[[int, object], None]) -> bool:
    """Read what the child has sent and deliver every whole batch in it; True at its end
    (a batch cut short by the child's death is dropped: those items are done here)."""
    chunk = os.read(fd, _PIPE_BYTES)
    if not chunk:
        return True
    received += chunk
    while len(received) >= 4:
        size = struct.unpack_from("=I", received, 0)[0]
        if len(received) < 4 + size:
            break
        batch = pickle.loads(memoryview(received)[4:4 + size])
        del received[:4 + size]
        for index, result in batch.items():
            deliver(index, result)
    return False


def _child(fn: Callable, items: Sequence, shared: mmap.mmap, read_end: int, write_end: int) -> None:
    code = 1
    try:
        os.close(read_end)
        batch = {}
        back = len(items)
        while back > struct.unpack_from("=I", shared, _FRONT)[0]:
            back -= 1
            struct.pack_into("=I", shared, _BACK, back)
            batch[back] = fn(items[back])
            if len(batch) >= BATCH:
                _send(write_end, batch)
                batch = {}
        if batch:
            _send(write_end, batch)
        code = 0
    except BaseException:          # Ctrl-C, a broken pipe, anything: the parent does the rest
        pass
    finally:
        os._exit(code)             # no atexit handlers, no flushing of the parent's buffers


def _send(fd: int, batch: dict) -> None:
    payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("=I", len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]
