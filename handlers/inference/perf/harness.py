"""The benchmark harness: one timing procedure for every backend.

Per (backend, batch size, input placement): stage the batch, warm up, run a timed loop under
the backend's timer, reduce to latency statistics and throughput. Around that: set-up timed,
backends that cannot run here recorded with the reason, out-of-memory at one batch size
recorded while the other sizes go on. Nothing a backend does wrong is dropped silently.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from handlers.ml.errors import is_out_of_memory, release_device_memory
from handlers.inference.perf.stats import latency_stats, throughput
from handlers.inference.perf.timing import Clock, CudaEventTimer, Timer, WallTimer

TimerFactory = Callable[["Backend", int, Clock], Timer]


@dataclass
class TimingSettings:
    warmup_s: float = 0.5        # warm-up lasts at least this long ...
    min_warmup_iters: int = 1    # ... and at least this many iterations
    duration_s: float = 2.0      # timed loop lasts at least this long ...
    min_iters: int = 3           # ... and at least this many iterations ...
    max_iters: int = 2000        # ... but never more than this many
    # A point whose minimum iterations would take longer than this (predicted from the last
    # point measured for the same backend, compile time of its first call included) is
    # skipped with that prediction as the reason; None times everything.
    max_point_s: float | None = None

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.duration_s < 0:
            raise ValueError("warmup_s and duration_s must not be negative")
        if self.min_warmup_iters < 0 or self.min_iters < 1:
            raise ValueError("min_warmup_iters must be >= 0 and min_iters >= 1")
        if self.max_iters < self.min_iters:
            raise ValueError(f"max_iters ({self.max_iters}) is below min_iters ({self.min_iters})")


class Unavailable(Exception):
    """A backend cannot run on this machine: raised by a factory or by `setup()`, and
    recorded by the harness as {backend, reason, hint}."""

    def __init__(self, backend: str, reason: str, hint: str = ""):
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason
        self.hint = hint

    def as_dict(self) -> dict:
        return {"backend": self.backend, "reason": self.reason, "hint": self.hint}


class Backend(ABC):
    """What the harness needs from a way of running the model.

    Inputs are float32 NCHW numpy arrays, outputs float32 logits [B, C]. CUDA backends'
    `run` only enqueues work on the current stream, so the harness decides where to wait.
    """

    name: str                     # stable id, e.g. "pytorch-eager-fp32"
    label: str                    # for people, e.g. "PyTorch eager FP32 (CUDA)"
    device: str                   # "cuda" | "cpu"
    precision: str                # "fp32" | "fp16" | "int8"
    setup_s: float = 0.0          # measured by the harness around setup()
    ready: bool = False           # set by the harness once setup() returned
    max_batch: int | None = None  # larger batches are skipped (e.g. a TensorRT profile's max)
    min_batch: int | None = None  # smaller batches are skipped
    timer: str = "auto"           # "auto": CUDA events on cuda, wall clock on cpu; "wall": always wall clock

    @abstractmethod
    def setup(self) -> None:
        """Load, convert or compile; may raise Unavailable."""

    @abstractmethod
    def stage(self, batch: np.ndarray) -> None:
        """Keep `batch` for repeated runs: a (pinned) host float32 copy and a device copy in
        the backend's native form (dtype, memory format)."""

    @abstractmethod
    def run(self, copy_input: bool) -> None:
        """One inference on the staged batch. copy_input=True includes the host-to-device
        copy and conversion; False uses the resident native input. Ignored on the CPU."""

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Synchronous float32 logits for `batch` (for accuracy, not timing)."""

    def synchronize(self) -> None:
        """Wait for this backend's enqueued work."""
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()

    def close(self) -> None:
        """Free what setup() and stage() hold."""


@dataclass
class Measurement:
    backend: str
    batch: int
    h2d: bool | None              # None: CPU backend, there is no host-to-device copy
    iterations: int
    latency_ms: dict              # latency_stats() of the timed iterations
    throughput: float             # images per second over the timed span
    timer: str                    # "cuda-events" | "wall-clock"
    span_s: float = 0.0
    warmup_iterations: int = 0
    first_call_ms: float | None = None   # first warm-up call, synchronized: compile/autotune cost shows here
    device: str = ""
    precision: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchmarkResult:
    measurements: list[Measurement] = field(default_factory=list)
    unavailable: list[dict] = field(default_factory=list)   # {backend, reason, hint}
    failures: list[dict] = field(default_factory=list)      # {backend, batch (None: whole backend), h2d, reason}
    skipped: list[dict] = field(default_factory=list)       # {backend, batch, reason}: batch size not supported
    setup_s: dict[str, float] = field(default_factory=dict)

    def table_rows(self) -> list[dict]:
        """One row per measured, failed or skipped point, in a flat shape for reports."""
        rows = []
        for m in self.measurements:
            lat = m.latency_ms
            rows.append({"backend": m.backend, "batch": m.batch, "input": input_label(m.h2d), "status": "ok",
                         "img_s": m.throughput, "mean_ms": lat["mean"], "p50_ms": lat["p50"],
                         "p90_ms": lat["p90"], "p99_ms": lat["p99"], "iterations": m.iterations,
                         "timer": m.timer, "note": ""})
        blank = dict.fromkeys(("img_s", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "iterations", "timer"))
        for f in self.failures:
            rows.append({"backend": f["backend"], "batch": f.get("batch"), "input": input_label(f.get("h2d")),
                         "status": "failed", **blank, "note": f["reason"]})
        for s in self.skipped:
            rows.append({"backend": s["backend"], "batch": s["batch"], "input": "", "status": "skipped",
                         **blank, "note": s["reason"]})
        return rows


def input_label(h2d: bool | None) -> str:
    return "n/a (CPU)" if h2d is None else ("with H2D" if h2d else "resident")


def default_timer(backend: Backend, capacity: int, clock: Clock) -> Timer:
    """CUDA events on the current stream for CUDA backends that enqueue there; the wall
    clock (synchronizing each iteration) for those on a stream of their own; the plain wall
    clock on the CPU."""
    if backend.device == "cuda" and backend.timer != "wall":
        import torch
        return CudaEventTimer(torch.cuda.current_stream(), capacity)
    return WallTimer(clock, sync=backend.synchronize if backend.device == "cuda" else None)


def _warm_up(backend: Backend, copy_input: bool, settings: TimingSettings, clock: Clock) -> tuple[int, float | None]:
    """Run until both warm-up minima are met, waiting for each iteration so warmup_s is GPU
    time, not enqueue time. Returns (iterations, first call in ms)."""
    started, iterations, first_ms = clock(), 0, None
    while iterations < settings.min_warmup_iters or clock() - started < settings.warmup_s:
        t0 = clock()
        backend.run(copy_input)
        backend.synchronize()
        if first_ms is None:
            first_ms = (clock() - t0) * 1000.0
        iterations += 1
    return iterations, first_ms


def measure(backend: Backend, batch: np.ndarray, settings: TimingSettings, copy_input: bool,
            timer_factory: TimerFactory | None = None, clock: Clock | None = None) -> Measurement:
    """Time one (backend, batch, input placement) point. `clock` (seconds) drives the
    duration budget and the wall-clock timer; tests inject a scripted one."""
    clock = clock or time.perf_counter
    on_cuda = backend.device == "cuda"
    copy = bool(copy_input) and on_cuda
    backend.stage(batch)
    warm_iters, first_ms = _warm_up(backend, copy, settings, clock)

    timer = (timer_factory or default_timer)(backend, settings.max_iters, clock)
    iterations = 0
    timer.start()
    started = clock()
    while iterations < settings.max_iters and (iterations < settings.min_iters
                                               or clock() - started < settings.duration_s):
        timer.begin()
        backend.run(copy)
        timer.end()
        iterations += 1
    loop = timer.finish()

    images = len(batch)
    return Measurement(backend=backend.name, batch=images, h2d=copy if on_cuda else None, iterations=iterations,
                       latency_ms=latency_stats(loop.samples_ms), throughput=throughput(images * iterations, loop.span_s),
                       timer=timer.kind, span_s=loop.span_s, warmup_iterations=warm_iters, first_call_ms=first_ms,
                       device=backend.device, precision=backend.precision)


def prepare(backend: Backend) -> None:
    """setup(), timed into backend.setup_s; exceptions pass through to the caller."""
    started = time.perf_counter()
    backend.setup()
    backend.setup_s = time.perf_counter() - started
    backend.ready = True


def unsupported_batch(backend: Backend, batch: int) -> str | None:
    """Why `backend` cannot take this batch size, or None."""
    if backend.max_batch is not None and batch > backend.max_batch:
        return f"batch {batch} exceeds the backend's maximum batch {backend.max_batch}"
    if backend.min_batch is not None and batch < backend.min_batch:
        return f"batch {batch} is below the backend's minimum batch {backend.min_batch}"
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def input_placements(backend: Backend) -> tuple[bool, ...]:
    """Resident input always; with the host-to-device copy only where there is one."""
    return (False, True) if backend.device == "cuda" else (False,)


def run_benchmark(backends: Iterable[Backend], batch_sizes: Sequence[int], make_batch: Callable[[int], np.ndarray],
                  settings: TimingSettings, on_progress: Callable[[str, int], None] | None = None, *,
                  out_of_memory: Callable[[BaseException], bool] = is_out_of_memory,
                  timer_factory: TimerFactory | None = None, clock: Clock | None = None) -> BenchmarkResult:
    """Set up and measure every backend at every batch size. `on_progress(backend, batch)`
    is called once per (backend, batch size), whatever became of it.

    Set-up: Unavailable -> `unavailable`; any other exception -> `failures` with batch None
    (the backend is broken, not absent). At a batch size: out-of-memory -> a failure for that
    point and the next size is tried; another exception -> a failure, and that backend's
    remaining sizes are not run (they would fail the same way)."""
    result = BenchmarkResult()
    progress = on_progress or (lambda name, batch: None)
    for backend in backends:
        if not _set_up(backend, result):
            for size in batch_sizes:
                progress(backend.name, size)
            continue
        broken = False
        for size in batch_sizes:
            try:
                if broken:
                    continue
                too_long = predicted_too_long(result.measurements, backend.name, size, settings)
                if too_long:
                    result.skipped.append({"backend": backend.name, "batch": size, "reason": too_long})
                    continue
                broken = _measure_size(backend, size, make_batch, settings, result, out_of_memory,
                                       timer_factory, clock)
            finally:
                progress(backend.name, size)
    return result


def predicted_too_long(measurements: list[Measurement], backend: str, size: int,
                       settings: TimingSettings) -> str | None:
    """Why a point would overrun max_point_s, from the backend's last measured point here:
    its time per image times this batch, for the warm-up and minimum iterations, plus its
    first call's extra cost (a compile repeats at every new batch size). None: measure it."""
    if settings.max_point_s is None:
        return None
    done = [m for m in measurements if m.backend == backend]
    if not done:
        return None
    last = done[-1]
    per_image_s = last.latency_ms["mean"] / 1000.0 / last.batch
    first_extra_s = max(0.0, ((last.first_call_ms or 0.0) - last.latency_ms["mean"]) / 1000.0)
    calls = settings.min_iters + max(1, settings.min_warmup_iters)
    predicted = per_image_s * size * calls + first_extra_s
    if predicted <= settings.max_point_s:
        return None
    return (f"not timed: batch {size} would take about {predicted:.0f} s here ({1000 * per_image_s:.1f} ms per "
            f"image and {first_extra_s:.1f} s first-call cost measured at batch {last.batch}), over the "
            f"{settings.max_point_s:g} s budget per point (max_point_s)")


def _set_up(backend: Backend, result: BenchmarkResult) -> bool:
    try:
        if not backend.ready:
            prepare(backend)
    except Unavailable as exc:
        result.unavailable.append({**exc.as_dict(), "backend": backend.name})
        return False
    except Exception as exc:   # any framework's error: record it, the other backends go on
        result.failures.append({"backend": backend.name, "batch": None, "h2d": None,
                                "reason": f"setup failed: {_one_line(exc)}"})
        release_device_memory()
        return False
    result.setup_s[backend.name] = backend.setup_s
    return True


def _measure_size(backend: Backend, size: int, make_batch: Callable[[int], np.ndarray], settings: TimingSettings,
                  result: BenchmarkResult, out_of_memory: Callable[[BaseException], bool],
                  timer_factory: TimerFactory | None, clock: Clock | None) -> bool:
    """Measure one batch size in each input placement; True when the backend is broken."""
    why = unsupported_batch(backend, size)
    if why is not None:
        result.skipped.append({"backend": backend.name, "batch": size, "reason": why})
        return False
    batch = make_batch(size)
    for copy_input in input_placements(backend):
        h2d = copy_input if backend.device == "cuda" else None
        try:
            result.measurements.append(measure(backend, batch, settings, copy_input, timer_factory, clock))
        except Exception as exc:
            if out_of_memory(exc):
                result.failures.append({"backend": backend.name, "batch": size, "h2d": h2d,
                                        "reason": f"out of memory at batch {size}: {_one_line(exc)} "
                                                  f"(leave {size} out of batch_sizes)"})
                release_device_memory()
                return False     # a smaller or differently placed batch may still fit
            result.failures.append({"backend": backend.name, "batch": size, "h2d": h2d,
                                    "reason": f"{_one_line(exc)} (later batch sizes not run)"})
            return True
    return False


def predict_all(backend: Backend, images: np.ndarray, batch_size: int = 32, pad_last: bool = False) -> np.ndarray:
    """Float32 logits for every image, in batches the backend supports. Sets the backend up
    first if the harness has not. A last batch below the backend's minimum (or, with
    pad_last, below batch_size: a compiled model then sees no new shape) is padded by
    repeating its images and the padding's logits are dropped."""
    if not backend.ready:
        prepare(backend)
    if len(images) == 0:
        raise ValueError("predict_all needs at least one image")
    step = min(batch_size, backend.max_batch) if backend.max_batch else batch_size
    floor = step if pad_last else (backend.min_batch or 1)
    if step < (backend.min_batch or 1):
        raise ValueError(f"batch_size {step} is below {backend.name}'s minimum batch {floor}")
    parts = []
    for start in range(0, len(images), step):
        chunk = np.ascontiguousarray(images[start:start + step], dtype=np.float32)
        real = len(chunk)
        if real < floor:
            chunk = np.ascontiguousarray(chunk[np.arange(floor) % real])
        parts.append(np.asarray(backend.predict(chunk), dtype=np.float32)[:real])
    return np.concatenate(parts)
