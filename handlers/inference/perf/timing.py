"""Timers for the harness's timed loop: one interface, two clocks.

The loop calls `start()` once, `begin()`/`end()` around every iteration and `finish()` once;
`finish()` returns the per-iteration latencies and the span of the whole loop. Throughput
comes from the span, not from the sum of latencies, so gaps between iterations (Python
overhead, kernel launches the GPU waits for) count against it as they would in a real
serving loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

Clock = Callable[[], float]


@dataclass(frozen=True)
class TimedLoop:
    samples_ms: list[float]     # one latency per timed iteration
    span_s: float               # first iteration's start to last iteration's end


class Timer(Protocol):
    kind: str                   # "cuda-events" | "wall-clock", as reported

    def start(self) -> None: ...
    def begin(self) -> None: ...
    def end(self) -> None: ...
    def finish(self) -> TimedLoop: ...


class WallTimer:
    """Wall-clock timing for work that is finished when the call returns (CPU backends), or
    is made so by `sync` (a GPU runtime on its own stream, e.g. ONNX Runtime's CUDA
    provider, which CUDA events on torch's stream would not see)."""

    kind = "wall-clock"

    def __init__(self, clock: Clock = time.perf_counter, sync: Callable[[], None] | None = None):
        self._clock = clock
        self._sync = sync
        self._samples: list[float] = []
        self._span_start: float | None = None
        self._iter_start = 0.0

    def start(self) -> None:
        self._span_start = self._clock()

    def begin(self) -> None:
        self._iter_start = self._clock()

    def end(self) -> None:
        if self._sync is not None:
            self._sync()
        self._samples.append((self._clock() - self._iter_start) * 1000.0)

    def finish(self) -> TimedLoop:
        if self._span_start is None:
            raise RuntimeError("WallTimer.finish() before start()")
        return TimedLoop(list(self._samples), self._clock() - self._span_start)


class CudaEventTimer:
    """CUDA-event timing on one stream: an event pair around each iteration and one pair
    around the whole loop, all recorded without blocking; one synchronize in `finish()`.

    The work is only enqueued during the loop, so the CPU runs ahead and the events time
    what the GPU did: per-iteration latency is the GPU time between an iteration's two
    events, throughput comes from the span pair (idle gaps while the GPU waited for launches
    included, as in a bare `start.record(); loop; end.record()` benchmark). Events are
    preallocated for `capacity` iterations, so a long loop cannot grow them without bound and
    creating them is not timed."""

    kind = "cuda-events"

    def __init__(self, stream=None, capacity: int = 2000):
        import torch
        if capacity < 1:
            raise ValueError("CudaEventTimer needs room for at least one iteration")
        self._stream = stream if stream is not None else torch.cuda.current_stream()
        self._begins = [torch.cuda.Event(enable_timing=True) for _ in range(capacity)]
        self._ends = [torch.cuda.Event(enable_timing=True) for _ in range(capacity)]
        self._span = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._count = 0
        self._started = False

    @property
    def capacity(self) -> int:
        return len(self._begins)

    def start(self) -> None:
        self._span[0].record(self._stream)
        self._started = True

    def begin(self) -> None:
        if self._count >= len(self._begins):
            raise RuntimeError(f"CudaEventTimer: more than {len(self._begins)} iterations; "
                               "size it with the loop's max_iters")
        self._begins[self._count].record(self._stream)

    def end(self) -> None:
        self._ends[self._count].record(self._stream)
        self._count += 1

    def finish(self) -> TimedLoop:
        if not self._started:
            raise RuntimeError("CudaEventTimer.finish() before start()")
        self._span[1].record(self._stream)
        self._span[1].synchronize()     # the only wait: every earlier event has completed too
        samples = [b.elapsed_time(e) for b, e in zip(self._begins[:self._count], self._ends[:self._count])]
        return TimedLoop(samples, self._span[0].elapsed_time(self._span[1]) / 1000.0)
