"""AG-DS-TRTTEST-001: every way of running the model, timed the same way and checked for
the same answers.

Backends: PyTorch eager FP32, PyTorch FP16 channels_last, torch.compile, ONNX Runtime FP32
and INT8 (Q/DQ), and every TensorRT engine that exists. Per backend and batch size: warm-up,
timed iterations (CUDA events on the GPU), latency mean/p50/p90/p99 and throughput, with and
without the host-to-device copy; then accuracy on the test split and agreement with PyTorch
FP32. A backend that cannot run here is listed with the reason, never dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from atlas.handler import Context, Handler, Params, Result
from handlers.ml.errors import failures_for_user_errors

BackendName = Literal["pytorch-eager-fp32", "pytorch-fp16-channels-last", "torch-compile",
                      "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "tensorrt"]
ALL_BACKENDS: tuple[str, ...] = BackendName.__args__
REFERENCE = "pytorch-eager-fp32"


class TrtTestParams(Params):
    backends: list[BackendName] = Field(default_factory=lambda: list(ALL_BACKENDS))
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32, 128, 256])
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="where the PyTorch backends run")
    warmup_s: float = Field(0.5, ge=0, description="warm-up per point (at least one iteration)")
    duration_s: float = Field(2.0, gt=0, description="timed seconds per point (at least min_iters)")
    min_iters: int = Field(3, ge=1)
    max_iters: int = Field(2000, ge=1)
    max_point_s: float | None = Field(60.0, gt=0, description="skip a point predicted (from the last one measured) "
                                      "to take longer than this; null: time every point however slow")
    accuracy_images: int | None = Field(None, ge=1, description="test images for accuracy (null: all)")


def engine_unavailable(engines_dir: Path | None) -> tuple[str, str] | None:
    """Why no TensorRT engine can be benchmarked, or None when there are engines to try."""
    from handlers.inference.trt.choose import INSTALL_HINT, detect
    found = detect()
    if engines_dir is None or not any(Path(engines_dir).glob("*.engine")):
        if not (found.tensorrt or found.tensorrt_rtx or found.trtexec):
            return "TensorRT not installed: no engines were built", INSTALL_HINT
        return ("no TensorRT engines: AG-DS-TRTENGINE-001 did not build any", "atlas run AG-DS-TRTENGINE-001")
    return None


def markdown_report(result, accuracy: dict, device: str, synthetic: bool) -> str:
    from handlers.inference.perf.report import accuracy_table, throughput_table, unavailable_list
    parts = ["# Inference benchmark (AG-DS-TRTTEST-001)", "",
             f"PyTorch device: {device}." + (" Model trained on SYNTHETIC DATA." if synthetic else ""), "",
             "## Throughput and latency", "", throughput_table(result), "",
             "## Accuracy on the test split", "", accuracy_table(accuracy), ""]
    missing = unavailable_list(result)
    if missing:
        parts += ["## Not run here", "", missing, ""]
    return "\n".join(parts)


class TrtTest(Handler):
    name = "trt_test"
    version = "1"
    Params = TrtTestParams
    outputs = ("benchmark.json", "benchmark.md")
    required_inputs = {"checkpoint": "AG-DS-SCRIPTGPU-001:model.pt", "onnx": "AG-DS-ONNXCONV-001:model.onnx",
                       "onnx_int8": "AG-DS-TRTPROFILE-001:model_int8_qdq.onnx"}
    requires = ("torch",)
    gpu_env = True
    project_keys = ("data",)

    @failures_for_user_errors
    def run(self, ctx: Context) -> Result:
        return self._benchmark(ctx, ctx.params)

    def _benchmark(self, ctx: Context, params: TrtTestParams) -> Result:
        import numpy as np

        from handlers.ml.arrays import load_eval_data, model_input, split_arrays
        from handlers.ml.models import load_checkpoint
        from handlers.inference.perf.figures import benchmark_figures, measurement_line
        from handlers.inference.perf.harness import TimingSettings, run_benchmark
        from handlers.inference.perf.suite import make_backends

        model, meta = load_checkpoint(ctx.inputs["checkpoint"])
        data = load_eval_data(ctx.project, ctx.project_root, meta, ctx.log, ctx.progress)
        images, labels = split_arrays(data, "test", limit=params.accuracy_images)
        x = model_input(images)
        device = _torch_device(params.device)
        backends, unavailable = make_backends(
            params.backends, model, device, onnx_fp32=ctx.inputs["onnx"], onnx_int8=ctx.inputs["onnx_int8"],
            engines_dir=ctx.inputs.get("engines"), engine_unavailable=engine_unavailable,
            onnx_fp16=ctx.inputs.get("onnx_fp16"), runtime_cache_dir=ctx.project_root / ".atlas" / "cache" / "tensorrt-rtx")

        def make_batch(n: int) -> np.ndarray:
            # real test images, repeated to fill the batch
            return np.ascontiguousarray(x[np.arange(n) % len(x)])

        settings = TimingSettings(warmup_s=params.warmup_s, duration_s=params.duration_s,
                                  min_iters=params.min_iters, max_iters=params.max_iters,
                                  max_point_s=params.max_point_s)
        total = len(backends) * len(params.batch_sizes)
        with ctx.progress(total, "benchmarking backends") as bar:
            def measured(backend: str, batch: int) -> None:
                bar.advance(1)
                ctx.log.info("benchmark %d/%d: %s at batch %d", bar.done, total, backend, batch)
            result = run_benchmark(backends, params.batch_sizes, make_batch, settings, on_progress=measured)
        result.unavailable[:0] = unavailable
        for m in result.measurements:
            ctx.log.info("%s", measurement_line(m))

        accuracy = self._accuracy(ctx, result, backends, x, labels, data.positive, meta.get("threshold"))
        for m in result.measurements:
            h2d = "" if m.h2d is None else ("_h2d" if m.h2d else "_resident")
            ctx.metric(f"{m.backend}_bs{m.batch}{h2d}_img_s", m.throughput, "img/s")
            ctx.metric(f"{m.backend}_bs{m.batch}{h2d}_p99_ms", m.latency_ms["p99"], "ms")
        report = {"device": device, "batch_sizes": params.batch_sizes, "settings": settings.__dict__,
                  "measurements": [m.as_dict() for m in result.measurements], "unavailable": result.unavailable,
                  "failures": result.failures, "accuracy": accuracy, "test_images": int(len(labels)),
                  "synthetic": bool(meta.get("synthetic")), "data_source": data.source,
                  "note": "throughput without H2D: input resident on the device; outputs stay on the device"}
        ctx.write_json("benchmark.json", report)
        for figure in benchmark_figures(result, accuracy, device):
            ctx.figure(figure)
        ctx.write_text("benchmark.md", markdown_report(result, accuracy, device, bool(meta.get("synthetic"))))
        return self._result(result, accuracy, device, meta)

    def _accuracy(self, ctx, result, backends, x, labels, positive, threshold) -> dict:
        from handlers.ml.parity import scores
        from handlers.inference.perf.harness import predict_all
        # absent or broken at set-up: their reason is already recorded, do not try again
        broken = ({f["backend"] for f in result.failures if f.get("batch") is None}
                  | {u["backend"] for u in result.unavailable})
        logits = {}
        for backend in backends:
            if backend.name in broken:
                continue
            try:
                if getattr(backend, "static_shapes", False):
                    # compiled per shape: reuse the largest batch size already timed, up to 32
                    timed = [m.batch for m in result.measurements if m.backend == backend.name and m.batch <= 32]
                    logits[backend.name] = predict_all(backend, x, max(timed, default=32), pad_last=True)
                else:
                    logits[backend.name] = predict_all(backend, x)
            except Exception as exc:   # a backend failing here must not hide the others' results
                result.failures.append({"backend": backend.name, "batch": None, "reason": f"accuracy: {exc}"})
            finally:
                backend.close()
        reference = logits.get(REFERENCE)
        accuracy = {}
        for name, out in logits.items():
            accuracy[name] = scores(labels, out, positive, reference, threshold)
            ctx.metric(f"{name}_accuracy", accuracy[name]["accuracy"])
        return accuracy

    def _result(self, result, accuracy, device, meta) -> Result:
        from handlers.inference.perf.report import summary_lines
        from handlers.ml.metrics import inherited_warning
        lines = inherited_warning(meta) + summary_lines(result, accuracy)
        best = max(result.measurements, key=lambda m: m.throughput, default=None)
        from handlers.ml.synthetic import synthetic_tag
        tag = synthetic_tag(bool(meta.get("synthetic")))
        head = (f"{len({m.backend for m in result.measurements})} backends on {device}; fastest "
                f"{best.backend} {best.throughput:,.0f} img/s at batch {best.batch}" if best else
                "no backend could run")
        if not result.measurements:
            return Result.failed(head, "see benchmark.md for each backend's reason", lines)
        return Result.succeeded(head + f"; {len(result.unavailable)} not available here{tag}", lines)


def _torch_device(requested: str) -> str:
    import torch
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        from handlers.ml.errors import DeviceError
        raise DeviceError("device: cuda, but no CUDA device is visible", "use device: auto or cpu")
    return requested
