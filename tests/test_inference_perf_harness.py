"""The inference benchmark harness (handlers/inference/perf): statistics checked against timings known
in advance (a scripted clock, no sleeping), failure bookkeeping, and the real backends on the
CPU. Tests marked `gpu` check CUDA-event timing against a bare event loop where a GPU exists."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from handlers.inference.perf.harness import (Backend, Measurement, TimingSettings, Unavailable, is_out_of_memory, measure,
                                   predict_all, run_benchmark)
from handlers.inference.perf.stats import latency_stats, throughput
from handlers.inference.perf.timing import WallTimer

EXACT = dict(rel=1e-12, abs=1e-12)    # float rounding only: every expected value is worked out by hand


class FakeClock:
    """Seconds that move only when a scripted backend says its work took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedBackend(Backend):
    """A backend whose run() advances the fake clock by the next scripted duration (ms)."""

    def __init__(self, clock: FakeClock, durations_ms, name: str = "scripted", device: str = "cpu",
                 fail_at: dict | None = None, setup_error: Exception | None = None):
        self.name, self.label, self.device, self.precision = name, name, device, "fp32"
        self.clock = clock
        self.durations = list(durations_ms)
        self.fail_at = fail_at or {}          # batch size -> exception raised by run()
        self.setup_error = setup_error
        self.calls: list[tuple[int, bool]] = []
        self.batch = 0

    def setup(self) -> None:
        if self.setup_error is not None:
            raise self.setup_error

    def stage(self, batch: np.ndarray) -> None:
        self.batch = len(batch)

    def run(self, copy_input: bool) -> None:
        if self.batch in self.fail_at:
            raise self.fail_at[self.batch]
        self.clock.now += self.durations[len(self.calls) % len(self.durations)] / 1000.0
        self.calls.append((self.batch, copy_input))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        flat = batch.reshape(len(batch), -1)
        return np.stack([flat.sum(axis=1), np.full(len(batch), len(batch), dtype=np.float32)], axis=1)

    def synchronize(self) -> None:
        pass        # a "cuda" fake has no real device to wait for


def wall(clock: FakeClock):
    """Timer factory for fakes: the wall-clock timer on the scripted clock, whatever the device."""
    return lambda backend, capacity, _clock: WallTimer(clock)


def images(n: int) -> np.ndarray:
    return np.zeros((n, 3, 4, 4), dtype=np.float32)


# --- statistics -----------------------------------------------------------------------------

def test_latency_stats_interpolate_linearly():
    stats = latency_stats([4.0, 1.0, 3.0, 2.0])
    assert stats["n"] == 4
    assert stats["mean"] == 2.5 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["p50"] == pytest.approx(2.5, **EXACT)      # halfway between 2 and 3
    assert stats["p90"] == pytest.approx(3.7, **EXACT)      # rank 0.9*3 = 2.7 -> 3 + 0.7*(4-3)
    assert stats["p99"] == pytest.approx(3.97, **EXACT)
    assert stats["std"] == pytest.approx(math.sqrt(1.25), **EXACT)   # population std of 1..4


def test_stats_refuse_empty_samples_and_zero_spans():
    with pytest.raises(ValueError):
        latency_stats([])
    with pytest.raises(ValueError):
        throughput(10, 0.0)
    assert throughput(300, 1.5) == 200.0


def test_settings_refuse_impossible_bounds():
    with pytest.raises(ValueError):
        TimingSettings(min_iters=10, max_iters=5)
    with pytest.raises(ValueError):
        TimingSettings(min_iters=0)


# --- the timed loop on a scripted clock -------------------------------------------------------

def test_measure_statistics_are_exact_for_known_timings():
    clock = FakeClock()
    # two 30 ms warm-up calls (30 < 50 ms, 60 >= 50), then 1, 2, ..., 100 ms; 999 must never run
    backend = ScriptedBackend(clock, [30, 30] + list(range(1, 101)) + [999])
    settings = TimingSettings(warmup_s=0.05, min_warmup_iters=1, duration_s=5.0, min_iters=3, max_iters=2000)

    m = measure(backend, images(4), settings, copy_input=False, clock=clock)

    # after 99 timed calls 4.95 s have passed (< 5.0), after the 100th 5.05 s: stop
    assert m.iterations == 100 and m.warmup_iterations == 2 and len(backend.calls) == 102
    assert m.first_call_ms == pytest.approx(30.0, **EXACT)
    lat = m.latency_ms
    assert lat["n"] == 100
    assert lat["min"] == pytest.approx(1.0, **EXACT)        # the 30 ms warm-ups are not samples
    assert lat["max"] == pytest.approx(100.0, **EXACT)
    assert lat["mean"] == pytest.approx(50.5, **EXACT)
    assert lat["p50"] == pytest.approx(50.5, **EXACT)       # between the 50th and 51st: 50 and 51
    assert lat["p90"] == pytest.approx(90.1, **EXACT)       # rank 0.9*99 = 89.1 -> 90 + 0.1
    assert lat["p99"] == pytest.approx(99.01, **EXACT)      # rank 98.01 -> 99 + 0.01
    assert lat["std"] == pytest.approx(math.sqrt((100 ** 2 - 1) / 12), **EXACT)
    assert m.span_s == pytest.approx(5.05, **EXACT)
    assert m.throughput == pytest.approx(4 * 100 / 5.05, **EXACT)
    assert (m.backend, m.batch, m.h2d, m.timer, m.device) == ("scripted", 4, None, "wall-clock", "cpu")


def test_throughput_counts_the_gaps_between_iterations():
    # the span, not the sum of latencies: time spent between iterations lowers throughput
    clock = FakeClock()
    backend = ScriptedBackend(clock, [10])
    settings = TimingSettings(warmup_s=0, min_warmup_iters=0, duration_s=0, min_iters=4, max_iters=4)

    class GapTimer(WallTimer):
        def begin(self):
            clock.now += 0.005          # 5 ms of "harness overhead" before every iteration
            super().begin()

    m = measure(backend, images(2), settings, False, timer_factory=lambda b, c, k: GapTimer(clock), clock=clock)
    assert m.latency_ms["mean"] == pytest.approx(10.0, **EXACT)
    assert m.span_s == pytest.approx(0.060, **EXACT)
    assert m.throughput == pytest.approx(2 * 4 / 0.060, **EXACT)


def test_min_iters_outlast_a_spent_duration():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [10])
    settings = TimingSettings(warmup_s=0, min_warmup_iters=1, duration_s=0.001, min_iters=5, max_iters=100)
    assert measure(backend, images(1), settings, False, clock=clock).iterations == 5


def test_duration_budget_stops_the_loop():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [10])
    settings = TimingSettings(warmup_s=0, min_warmup_iters=1, duration_s=0.095, min_iters=3, max_iters=100)
    # 9 calls: 90 ms < 95 ms, so a 10th; 100 ms >= 95 ms: stop
    assert measure(backend, images(1), settings, False, clock=clock).iterations == 10


def test_max_iters_caps_a_long_duration():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [10])
    settings = TimingSettings(warmup_s=0, min_warmup_iters=1, duration_s=100.0, min_iters=3, max_iters=7)
    m = measure(backend, images(1), settings, False, clock=clock)
    assert m.iterations == 7 and m.latency_ms["n"] == 7


@pytest.mark.parametrize("warmup_s, min_warmup, expected", [
    (0.0, 3, 3),        # only the iteration minimum
    (0.025, 1, 3),      # 10, 20 ms < 25 ms; 30 ms: done
    (0.0, 0, 0),        # no warm-up at all
])
def test_warm_up_meets_both_minima(warmup_s, min_warmup, expected):
    clock = FakeClock()
    backend = ScriptedBackend(clock, [10])
    settings = TimingSettings(warmup_s=warmup_s, min_warmup_iters=min_warmup, duration_s=0, min_iters=2, max_iters=2)
    m = measure(backend, images(1), settings, False, clock=clock)
    assert m.warmup_iterations == expected and len(backend.calls) == expected + 2
    assert (m.first_call_ms is None) == (expected == 0)


def test_measurement_as_dict_is_plain_data():
    clock = FakeClock()
    m = measure(ScriptedBackend(clock, [5]), images(2), TimingSettings(0, 1, 0, 1, 1), False, clock=clock)
    d = m.as_dict()
    assert isinstance(m, Measurement) and d["backend"] == "scripted" and d["latency_ms"]["n"] == 1
    assert set(d) >= {"backend", "batch", "h2d", "iterations", "latency_ms", "throughput", "timer"}


# --- run_benchmark's bookkeeping --------------------------------------------------------------

FAST = TimingSettings(warmup_s=0, min_warmup_iters=1, duration_s=0, min_iters=2, max_iters=2)


class FakeOOM(Exception):
    """Stands in for torch.cuda.OutOfMemoryError without needing CUDA."""


def test_cuda_backends_are_measured_with_and_without_the_copy():
    clock = FakeClock()
    gpu = ScriptedBackend(clock, [1], name="fake-gpu", device="cuda")
    cpu = ScriptedBackend(clock, [1], name="fake-cpu")
    result = run_benchmark([gpu, cpu], [1, 4], images, FAST, timer_factory=wall(clock), clock=clock)
    points = [(m.backend, m.batch, m.h2d) for m in result.measurements]
    assert points == [("fake-gpu", 1, False), ("fake-gpu", 1, True), ("fake-gpu", 4, False), ("fake-gpu", 4, True),
                      ("fake-cpu", 1, None), ("fake-cpu", 4, None)]
    assert {copy for _, copy in gpu.calls} == {False, True}
    assert {copy for _, copy in cpu.calls} == {False}      # CPU: there is no copy to include
    assert set(result.setup_s) == {"fake-gpu", "fake-cpu"}


def test_unavailable_and_broken_setups_are_recorded_and_the_rest_runs():
    clock = FakeClock()
    absent = ScriptedBackend(clock, [1], name="absent",
                             setup_error=Unavailable("absent", "needs a GPU here", "run on a CUDA machine"))
    broken = ScriptedBackend(clock, [1], name="broken", setup_error=RuntimeError("engine file is corrupt\ndetails"))
    fine = ScriptedBackend(clock, [1], name="fine")
    progress = []
    result = run_benchmark([absent, broken, fine], [1, 2], images, FAST,
                           on_progress=lambda name, batch: progress.append((name, batch)), clock=clock)
    assert result.unavailable == [{"backend": "absent", "reason": "needs a GPU here", "hint": "run on a CUDA machine"}]
    assert result.failures == [{"backend": "broken", "batch": None, "h2d": None,
                                "reason": "setup failed: RuntimeError: engine file is corrupt"}]
    assert [(m.backend, m.batch) for m in result.measurements] == [("fine", 1), ("fine", 2)]
    assert progress == [(n, b) for n in ("absent", "broken", "fine") for b in (1, 2)]   # the bar always completes
    assert not absent.calls and not broken.calls


def test_out_of_memory_at_one_batch_is_recorded_and_other_batches_continue():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [1], fail_at={8: FakeOOM("tried to allocate 9 GiB")})
    result = run_benchmark([backend], [1, 8, 32], images, FAST, clock=clock,
                           out_of_memory=lambda exc: isinstance(exc, FakeOOM))
    assert [m.batch for m in result.measurements] == [1, 32]
    assert result.failures == [{"backend": "scripted", "batch": 8, "h2d": None,
                                "reason": "out of memory at batch 8: FakeOOM: tried to allocate 9 GiB "
                                          "(leave 8 out of batch_sizes)"}]


def test_other_errors_at_a_batch_stop_that_backend_only():
    clock = FakeClock()
    bad = ScriptedBackend(clock, [1], name="bad", fail_at={8: ValueError("shape mismatch")})
    good = ScriptedBackend(clock, [1], name="good")
    result = run_benchmark([bad, good], [1, 8, 32], images, FAST, clock=clock,
                           out_of_memory=lambda exc: isinstance(exc, FakeOOM))
    assert [(m.backend, m.batch) for m in result.measurements] == [("bad", 1), ("good", 1), ("good", 8), ("good", 32)]
    assert len(result.failures) == 1 and result.failures[0]["batch"] == 8
    assert "ValueError: shape mismatch" in result.failures[0]["reason"]
    assert "later batch sizes not run" in result.failures[0]["reason"]


def test_batches_beyond_max_batch_are_skipped_with_the_reason():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [1])
    backend.max_batch = 16
    result = run_benchmark([backend], [1, 8, 32], images, FAST, clock=clock)
    assert [m.batch for m in result.measurements] == [1, 8]
    assert result.skipped == [{"backend": "scripted", "batch": 32,
                               "reason": "batch 32 exceeds the backend's maximum batch 16"}]
    assert all(batch != 32 for batch, _ in backend.calls)


def test_table_rows_cover_measured_failed_and_skipped_points():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [1], fail_at={8: FakeOOM("oom")})
    backend.max_batch = 8
    result = run_benchmark([backend], [1, 8, 32], images, FAST, clock=clock,
                           out_of_memory=lambda exc: isinstance(exc, FakeOOM))
    rows = result.table_rows()
    assert [(r["batch"], r["status"]) for r in rows] == [(1, "ok"), (8, "failed"), (32, "skipped")]
    assert rows[0]["input"] == "n/a (CPU)" and rows[0]["iterations"] == 2 and rows[1]["img_s"] is None


def test_default_out_of_memory_check_reads_runtime_messages():
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"))
    assert not is_out_of_memory(ValueError("expected 4 dims"))


def test_predict_all_respects_the_backends_batch_limits():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [1])
    backend.max_batch, backend.min_batch = 4, 3
    seen = []
    inner = backend.predict
    backend.predict = lambda batch: seen.append(len(batch)) or inner(batch)
    x = np.arange(10 * 3 * 4 * 4, dtype=np.float32).reshape(10, 3, 4, 4)
    out = predict_all(backend, x, batch_size=32)
    assert backend.ready                                     # set up on the way
    assert seen == [4, 4, 3]                                 # capped at 4; the last 2 padded to 3
    assert out.shape == (10, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], x.reshape(10, -1).sum(axis=1))


# --- real backends on the CPU ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=2).eval()


@pytest.fixture(scope="module")
def tiny_images():
    return np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)


def test_torch_eager_cpu_predicts_what_the_model_does(tiny_model, tiny_images):
    import torch
    from handlers.inference.perf.backends import TorchBackend
    backend = TorchBackend(tiny_model, "cpu", "eager-fp32")
    assert (backend.name, backend.device, backend.precision) == ("pytorch-eager-fp32", "cpu", "fp32")
    assert backend.label == "PyTorch eager FP32 (CPU)"
    logits = predict_all(backend, tiny_images, batch_size=2)
    with torch.inference_mode():
        expected = tiny_model(torch.from_numpy(tiny_images)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert backend.module is not tiny_model                  # a private copy per backend

    result = run_benchmark([backend], [1, 2], lambda n: tiny_images[:n], FAST)
    assert [(m.batch, m.h2d, m.timer) for m in result.measurements] == [(1, None, "wall-clock"), (2, None, "wall-clock")]


def test_fp16_channels_last_is_measured_on_the_cpu_not_declared_unavailable(tiny_model, tiny_images):
    """PyTorch runs FP16 convolutions on the CPU (torch 2.14): the backend is timed there,
    however slowly, and its answers stay close to FP32's."""
    import torch
    from handlers.inference.perf.backends import TorchBackend
    backend = TorchBackend(tiny_model, "cpu", "fp16-channels-last")
    result = run_benchmark([backend], [1, 2], lambda n: tiny_images[:n], FAST)
    assert result.unavailable == [] and result.failures == []
    assert [(m.batch, m.precision) for m in result.measurements] == [(1, "fp16"), (2, "fp16")]
    with torch.inference_mode():
        expected = tiny_model(torch.from_numpy(tiny_images)).numpy()
    np.testing.assert_allclose(predict_all(backend, tiny_images, batch_size=2), expected, atol=0.05)


def _point(batch: int, mean_ms: float, first_ms: float) -> Measurement:
    return Measurement(backend="b", batch=batch, h2d=None, iterations=3,
                       latency_ms={"mean": mean_ms, "p50": mean_ms, "p90": mean_ms, "p99": mean_ms},
                       throughput=1000 * batch / mean_ms, timer="wall-clock", first_call_ms=first_ms)


def test_a_point_predicted_to_overrun_its_budget_is_skipped_with_the_measured_reason():
    from handlers.inference.perf.harness import predicted_too_long
    settings = TimingSettings(min_iters=3, max_point_s=10.0)
    fast = [_point(8, mean_ms=80.0, first_ms=90.0)]            # 10 ms an image
    assert predicted_too_long(fast, "b", 64, settings) is None  # 64 x 10 ms x 4 calls = 2.6 s
    why = predicted_too_long(fast, "b", 256, settings)          # 256 x 10 ms x 4 = 10.2 s
    assert why.startswith("not timed: batch 256 would take about 10 s here (10.0 ms per image and 0.0 s "
                          "first-call cost measured at batch 8), over the 10 s budget per point")
    compiled = [_point(1, mean_ms=70.0, first_ms=60_070.0)]    # a 60 s compile at each new shape
    assert "60.0 s first-call cost" in predicted_too_long(compiled, "b", 8, TimingSettings(max_point_s=30.0))
    assert predicted_too_long([], "b", 256, settings) is None   # nothing measured yet: measure it
    assert predicted_too_long(fast, "b", 4096, TimingSettings()) is None   # no budget: time everything


def test_the_harness_skips_over_budget_points_and_goes_on():
    clock = FakeClock()
    backend = ScriptedBackend(clock, [500])          # half a second a call, whatever the batch
    result = run_benchmark([backend], [1, 2, 64], images,
                           TimingSettings(warmup_s=0, duration_s=0, min_iters=2, max_iters=2, max_point_s=5.0),
                           timer_factory=wall(clock), clock=clock)
    # batch 2 predicted from batch 1: 0.5 s/image x 2 x 3 calls = 3 s; batch 64 from batch 2: 48 s
    assert [m.batch for m in result.measurements] == [1, 2]
    assert [(s["batch"], s["reason"][:33]) for s in result.skipped] == [(64, "not timed: batch 64 would take ab")]
    assert {b for b, _ in backend.calls} == {1, 2}


def test_tensorrt_backend_needs_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from handlers.inference.perf.backends import TrtBackend
    with pytest.raises(Unavailable, match="CUDA") as caught:
        TrtBackend(tmp_path / "model_fp16.engine", "fp16")
    assert caught.value.backend == "tensorrt-fp16"


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, tmp_path_factory) -> Path:
    import torch
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the TorchScript exporter's deprecation notices
        torch.onnx.export(tiny_model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def test_onnxruntime_cpu_matches_pytorch(tiny_model, tiny_images, tiny_onnx):
    import onnxruntime as ort
    import torch
    from handlers.inference.perf.backends import OrtBackend
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build would pick CUDA")
    backend = OrtBackend(tiny_onnx, "onnxruntime-fp32", "fp32")
    assert (backend.device, backend.label) == ("cpu", "ONNX Runtime FP32 (CPU)")
    logits = predict_all(backend, tiny_images, batch_size=2)
    with torch.inference_mode():
        expected = tiny_model(torch.from_numpy(tiny_images)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

    result = run_benchmark([backend], [1, 4], lambda n: tiny_images[:n], FAST)
    assert [(m.batch, m.h2d, m.timer) for m in result.measurements] == [(1, None, "wall-clock"), (4, None, "wall-clock")]
    assert not result.failures and not result.unavailable


def test_onnxruntime_missing_model_or_provider_is_unavailable(tmp_path, tiny_onnx):
    import onnxruntime as ort
    from handlers.ml.ort import choose_provider
    from handlers.inference.perf.backends import OrtBackend
    with pytest.raises(Unavailable, match="does not exist"):
        OrtBackend(tmp_path / "absent.onnx", "onnxruntime-int8", "int8")
    assert choose_provider(["CPUExecutionProvider"]) == "CPUExecutionProvider"
    assert choose_provider(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "CUDAExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(Unavailable, match="CUDAExecutionProvider") as caught:
            OrtBackend(tiny_onnx, "onnxruntime-fp32", "fp32", providers="cuda")
        assert "onnxruntime-gpu" in caught.value.hint


# --- on a GPU ----------------------------------------------------------------------------------

class MatmulBackend(Backend):
    """Known GPU work: `repeats` fp32 matrix products of the staged [N, N] batch."""

    name, label, device, precision = "matmul", "matmul (CUDA)", "cuda", "fp32"

    def __init__(self, repeats: int = 4):
        self.repeats = repeats

    def setup(self) -> None:
        import torch
        self.weight = torch.randn(2048, 2048, device="cuda")

    def stage(self, batch: np.ndarray) -> None:
        import torch
        self.host = torch.from_numpy(batch).pin_memory()
        self.x = self.host.to("cuda")
        self.out = torch.empty_like(self.x)

    def run(self, copy_input: bool) -> None:
        import torch
        x = self.host.to("cuda", non_blocking=True) if copy_input else self.x
        for _ in range(self.repeats):
            torch.mm(x, self.weight, out=self.out)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@pytest.mark.gpu
def test_cuda_event_timer_measures_every_iteration_inside_the_span():
    """Structure only: how close the harness comes to a bare event loop is a speed figure,
    measured by benchmarks/harness_overhead.py (results in benchmarks/results/), not asserted."""
    backend = MatmulBackend()
    backend.setup()
    batch = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    backend.stage(batch)
    settings = TimingSettings(warmup_s=0.2, min_warmup_iters=10, duration_s=0, min_iters=300, max_iters=300)
    m = measure(backend, batch, settings, copy_input=False)
    assert m.timer == "cuda-events" and m.iterations == m.latency_ms["n"] == 300
    assert m.warmup_iterations >= 10 and m.latency_ms["min"] > 0
    assert m.throughput == pytest.approx(2048 * 300 / m.span_s)
    # every iteration's event pair lies inside the span's pair
    assert m.latency_ms["mean"] * 300 / 1000 <= m.span_s * (1 + 1e-6)


@pytest.mark.gpu
def test_cuda_backends_run_on_the_gpu(tiny_model, tiny_images):
    import torch
    from handlers.inference.perf.backends import TorchBackend, TrtBackend
    reference = TorchBackend(tiny_model, "cuda", "eager-fp32")
    half = TorchBackend(tiny_model, "cuda", "fp16-channels-last")
    expected = predict_all(reference, tiny_images)
    np.testing.assert_allclose(predict_all(half, tiny_images), expected, atol=5e-2, rtol=5e-2)

    class FakeRunner:      # TrtRunner's interface over a torch module, enqueued on the given stream
        input_name, output_name, input_dtype, batch_range = "input", "logits", torch.float16, (1, 4, 4)

        def __init__(self, path):
            self.module = half.module

        def infer(self, x, stream_handle):
            with torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)), torch.inference_mode():
                return self.module(x.contiguous(memory_format=torch.channels_last))

    trt = TrtBackend("fake.engine", "fp16", runner_factory=FakeRunner)
    result = run_benchmark([reference, half, trt], [1, 8], lambda n: tiny_images[np.arange(n) % 5], FAST)
    assert {(m.backend, m.batch, m.h2d) for m in result.measurements} == {
        (name, b, h) for name in ("pytorch-eager-fp32", "pytorch-fp16-channels-last") for b in (1, 8)
        for h in (False, True)} | {("tensorrt-fp16", 1, False), ("tensorrt-fp16", 1, True)}
    assert all(m.timer == "cuda-events" for m in result.measurements)
    assert result.skipped == [{"backend": "tensorrt-fp16", "batch": 8,
                               "reason": "batch 8 exceeds the backend's maximum batch 4"}]
    np.testing.assert_allclose(predict_all(trt, tiny_images), expected, atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_torch_compile_on_the_gpu(tiny_model, tiny_images):
    from handlers.inference.perf.backends import TorchBackend
    backend = TorchBackend(tiny_model, "cuda", "compile")
    expected = predict_all(TorchBackend(tiny_model, "cuda", "eager-fp32"), tiny_images[:4], batch_size=4)
    np.testing.assert_allclose(predict_all(backend, tiny_images[:4], batch_size=4), expected, atol=5e-2, rtol=5e-2)
    m = measure(backend, tiny_images[:4], FAST, copy_input=False)
    assert m.timer == "cuda-events" and m.first_call_ms is not None


@pytest.mark.gpu
def test_real_cuda_out_of_memory_is_recognized():
    import torch
    try:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")   # a petabyte
    except Exception as exc:
        assert is_out_of_memory(exc)
    else:
        pytest.fail("a petabyte allocation succeeded")


@pytest.mark.gpu
def test_onnxruntime_cuda_iobinding(tiny_model, tiny_images, tiny_onnx):
    import onnxruntime as ort
    from handlers.inference.perf.backends import OrtBackend
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider (pip install onnxruntime-gpu)")
    backend = OrtBackend(tiny_onnx, "onnxruntime-fp32", "fp32")
    assert backend.label == "ONNX Runtime FP32 (CUDA)"
    expected = predict_all(OrtBackend(tiny_onnx, "onnxruntime-fp32", "fp32", providers="cpu"), tiny_images)
    np.testing.assert_allclose(predict_all(backend, tiny_images), expected, atol=1e-3, rtol=1e-3)
    result = run_benchmark([backend], [1, 4], lambda n: tiny_images[:n], FAST)
    assert [(m.batch, m.h2d, m.timer) for m in result.measurements] == [
        (1, False, "wall-clock"), (1, True, "wall-clock"), (4, False, "wall-clock"), (4, True, "wall-clock")]
