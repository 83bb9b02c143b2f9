"""GPU assignment under -j N, and how a step's environment is built."""
from __future__ import annotations

import io
import threading

from atlas.console import RunDisplay
from atlas.steprun import GpuPool


def test_without_assignment_a_step_keeps_every_gpu_visible():
    pool = GpuPool([0, 1], assign=False)
    assert pool.acquire(1) is None           # -j 1: CUDA_VISIBLE_DEVICES left alone (DDP sees all)


def test_cpu_steps_and_gpu_less_machines_get_no_assignment():
    assert GpuPool([0, 1], assign=True).acquire(0) is None
    assert GpuPool([], assign=True).acquire(1) is None


def test_parallel_gpu_steps_get_distinct_devices_and_wait_for_a_free_one():
    pool = GpuPool([0, 1], assign=True)
    first, second = pool.acquire(1), pool.acquire(1)
    assert sorted(first + second) == [0, 1]
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(1)))
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive() and not got     # both GPUs busy: the third step waits
    pool.release(first)
    waiter.join(timeout=5)
    assert got == [first]


def test_a_step_wanting_all_gpus_waits_until_every_one_is_free():
    pool = GpuPool([0, 1, 2], assign=True)
    one = pool.acquire(1)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire("all")))
    waiter.start()
    waiter.join(timeout=0.3)
    assert not got
    pool.release(one)
    waiter.join(timeout=5)
    assert got == [[0, 1, 2]]


def test_plain_progress_lines_are_throttled_but_the_last_one_shows(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    display = RunDisplay(out=io.StringIO(), tty=False)
    for done in range(1, 101):
        display.progress({"type": "progress", "task": "AG-T-A-001", "description": "epochs",
                          "total": 100, "done": float(done), "fields": {"loss": 0.5}})
    lines = err.getvalue().splitlines()
    assert lines[0] == "  AG-T-A-001: epochs loss=0.5: 1/100"
    assert lines[-1] == "  AG-T-A-001: epochs loss=0.5: 100/100"
    assert len(lines) == 2                    # not one line per update
