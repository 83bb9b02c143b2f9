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


def _blocked(pool: GpuPool, want) -> tuple[threading.Thread, list]:
    """Start an acquirer and return once the pool says it is waiting (no timed guess)."""
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(want)), daemon=True)
    with pool.cond:
        waiter.start()
        assert pool.cond.wait_for(lambda: pool.waiting == 1, timeout=30)
    return waiter, got


def test_parallel_gpu_steps_get_distinct_devices_and_wait_for_a_free_one():
    pool = GpuPool([0, 1], assign=True)
    first, second = pool.acquire(1), pool.acquire(1)
    assert sorted(first + second) == [0, 1]
    waiter, got = _blocked(pool, 1)             # both GPUs busy: the third step waits ...
    assert got == [] and pool.free == []
    pool.release(first)                         # ... until one is released
    waiter.join(timeout=30)
    assert got == [first] and pool.waiting == 0


def test_a_step_wanting_all_gpus_waits_until_every_one_is_free():
    pool = GpuPool([0, 1, 2], assign=True)
    one = pool.acquire(1)
    waiter, got = _blocked(pool, "all")
    assert got == [] and pool.free == sorted({0, 1, 2} - set(one))
    pool.release(one)
    waiter.join(timeout=30)
    assert got == [[0, 1, 2]]


def test_plain_progress_lines_are_throttled_but_the_last_one_shows(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    now = [1000.0]
    display = RunDisplay(out=io.StringIO(), tty=False, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] += 0.1                            # 100 updates over 10 s of the scripted clock
        display.progress({"type": "progress", "task": "AG-T-A-001", "description": "epochs",
                          "total": 100, "done": float(done), "fields": {"loss": 0.5}})
    lines = err.getvalue().splitlines()
    # the first, one per 5 s after it (at update 51), and the last
    assert lines == ["  AG-T-A-001: epochs loss=0.5: 1/100", "  AG-T-A-001: epochs loss=0.5: 51/100",
                     "  AG-T-A-001: epochs loss=0.5: 100/100"]
