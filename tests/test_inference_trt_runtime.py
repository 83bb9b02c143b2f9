"""The engine loader: its logic through a recording fake of TensorRT, every call it makes
checked against the real TensorRT runtime API (the lean runtime bindings, importable without
a GPU), and one end-to-end build-load-run test where TensorRT and a GPU exist."""
from __future__ import annotations

import logging

import pytest

from fake_trt import Recorder, api_problems, builder_module, runtime_module, signatures
from handlers.inference.trt.builder import build_engine
from handlers.inference.trt.errors import TrtError
from handlers.inference.trt.profile import batch_profile, build_settings, settings_for
from handlers.inference.trt.runtime import RUNTIME_MODULES, TrtRunner, torch_dtypes
from handlers.inference.trt.runtime import runtime_module as load_runtime_module

torch = pytest.importorskip("torch")


@pytest.fixture
def engine_file(tmp_path):
    path = tmp_path / "model_fp32.engine"
    path.write_bytes(b"serialized-engine")
    return path


def runner(engine_file, recorder=None, **fake):
    recorder = recorder if recorder is not None else Recorder()
    return TrtRunner(engine_file, trt=runtime_module(recorder, **fake), device="cpu"), recorder


def full_use(engine_file, recorder: Recorder) -> None:
    """Everything the benchmark does with a runner: load, two batch sizes (one twice), close."""
    r, _ = runner(engine_file, recorder)
    for batch in (4, 4, 16):
        r.infer(torch.zeros(batch, 3, 8, 8), 0)
    r.close()


# --------------------------------------------------------------------------------- the logic

def test_runner_reads_the_engine_s_tensors(engine_file):
    r, calls = runner(engine_file)
    assert (r.input_name, r.output_name) == ("input", "logits")
    assert r.input_dtype == torch.float32 and r.output_dtype == torch.float32
    assert r.batch_range == (1, 4, 16)
    assert r.profile_shapes[2] == (16, 3, 8, 8)
    assert calls.args_of("Runtime", "deserialize_cuda_engine") == [(b"serialized-engine",)]
    assert calls.args_of("ICudaEngine", "get_tensor_profile_shape") == [("input", 0)]


def test_runner_maps_half_tensors(engine_file):
    r, _ = runner(engine_file, io=(("x", "INPUT", "HALF"), ("y", "OUTPUT", "HALF")))
    assert r.input_dtype == torch.float16 and r.output_dtype == torch.float16


def test_infer_binds_addresses_and_enqueues_on_the_given_stream(engine_file):
    r, calls = runner(engine_file)
    x = torch.randn(4, 3, 8, 8)
    out = r.infer(x, 1234)
    assert out.shape == (4, 2) and out.dtype == torch.float32
    assert calls.args_of("IExecutionContext", "set_input_shape") == [("input", (4, 3, 8, 8))]
    assert calls.args_of("IExecutionContext", "set_tensor_address") == [("input", x.data_ptr()),
                                                                         ("logits", out.data_ptr())]
    assert calls.args_of("IExecutionContext", "execute_async_v3") == [(1234,)]


def test_outputs_are_allocated_once_per_shape(engine_file):
    r, calls = runner(engine_file)
    first = r.infer(torch.zeros(4, 3, 8, 8), 0)
    again = r.infer(torch.zeros(4, 3, 8, 8), 0)
    bigger = r.infer(torch.zeros(8, 3, 8, 8), 0)
    assert again.data_ptr() == first.data_ptr() and bigger.shape == (8, 2)
    # the shape is set only when it changes
    assert [a[1][0] for a in calls.args_of("IExecutionContext", "set_input_shape")] == [4, 8]


@pytest.mark.parametrize("batch", [0, 17])
def test_a_batch_outside_the_profile_is_refused(engine_file, batch):
    r, calls = runner(engine_file)
    with pytest.raises(TrtError) as caught:
        r.infer(torch.zeros(batch, 3, 8, 8), 0)
    assert f"batch {batch} is outside model_fp32.engine's profile (1..16)" in caught.value.message
    assert "max_batch" in caught.value.hint
    assert not calls.called("IExecutionContext", "execute_async_v3")


def test_an_image_size_outside_the_profile_is_refused(engine_file):
    r, _ = runner(engine_file)
    with pytest.raises(TrtError, match="outside model_fp32.engine's profile"):
        r.infer(torch.zeros(2, 3, 16, 16), 0)
    with pytest.raises(TrtError, match="takes 4-d input"):
        r.infer(torch.zeros(2, 3, 8), 0)


def test_a_tensor_of_the_wrong_type_or_layout_is_refused(engine_file):
    r, _ = runner(engine_file)
    with pytest.raises(TrtError, match="contiguous torch.float32 tensor on cpu, got torch.float16"):
        r.infer(torch.zeros(2, 3, 8, 8, dtype=torch.float16), 0)
    with pytest.raises(TrtError, match="contiguous: False"):
        r.infer(torch.zeros(2, 8, 8, 3).permute(0, 3, 1, 2), 0)


def test_an_engine_that_does_not_load_says_rebuild(engine_file):
    with pytest.raises(TrtError) as caught:
        runner(engine_file, loads=False)
    assert "could not load model_fp32.engine" in caught.value.message
    assert "another TensorRT version or for another GPU" in caught.value.message
    assert "AG-DS-TRTENGINE-001" in caught.value.hint


def test_the_lean_runtime_explains_what_it_can_load(engine_file):
    with pytest.raises(TrtError) as caught:
        runner(engine_file, loads=False, name="tensorrt_lean")
    assert "lean runtime (tensorrt_lean)" in caught.value.message and "version-compatible" in caught.value.message
    assert "full runtime" in caught.value.hint


def test_a_failed_enqueue_is_a_trt_error(engine_file):
    r, _ = runner(engine_file, runs=False)
    with pytest.raises(TrtError, match="could not run model_fp32.engine on a batch of 2"):
        r.infer(torch.zeros(2, 3, 8, 8), 0)


def test_engines_with_other_than_one_input_and_output_are_refused(engine_file):
    io = (("a", "INPUT", "FLOAT"), ("b", "INPUT", "FLOAT"), ("y", "OUTPUT", "FLOAT"))
    with pytest.raises(TrtError, match=r"inputs \['a', 'b'\] and outputs \['y'\]"):
        runner(engine_file, io=io)


def test_a_tensor_type_torch_cannot_hold_is_refused(engine_file, monkeypatch):
    import handlers.inference.trt.runtime as runtime
    monkeypatch.setattr(runtime, "_TORCH_DTYPES", {"FLOAT": "float32"})
    with pytest.raises(TrtError, match="tensor 'x' has type DataType.HALF"):
        runner(engine_file, io=(("x", "INPUT", "HALF"), ("y", "OUTPUT", "FLOAT")))


def test_a_missing_engine_file_is_named(tmp_path):
    with pytest.raises(TrtError, match="model_fp32.engine not found"):
        runner(tmp_path / "model_fp32.engine")


def test_a_closed_runner_refuses_work(engine_file):
    with runner(engine_file)[0] as r:
        pass
    with pytest.raises(TrtError, match="closed"):
        r.infer(torch.zeros(1, 3, 8, 8), 0)


def test_runtime_module_prefers_the_full_package(monkeypatch):
    import handlers.inference.trt.runtime as runtime
    tried = []

    def fake_import(name):
        tried.append(name)
        if name == "tensorrt_lean":
            return "lean module"
        raise ImportError(name)

    monkeypatch.setattr(runtime.importlib, "import_module", fake_import)
    assert load_runtime_module() == "lean module" and tried == ["tensorrt", "tensorrt_lean"]
    tried.clear()
    monkeypatch.setattr(runtime, "RUNTIME_MODULES", {"tensorrt": ("tensorrt",)})
    with pytest.raises(TrtError) as caught:
        load_runtime_module()
    assert "TensorRT runtime not installed" in caught.value.message and "pip install" in caught.value.hint


def test_torch_dtypes_skip_names_a_version_lacks():
    class DataType:
        FLOAT, HALF = object(), object()

    class Module:
        pass

    Module.DataType = DataType
    assert torch_dtypes(Module) == {DataType.FLOAT: torch.float32, DataType.HALF: torch.float16}


def test_one_logger_per_tensorrt_module(engine_file):
    recorder = Recorder()
    trt = runtime_module(recorder)
    first, second = TrtRunner(engine_file, trt=trt, device="cpu"), TrtRunner(engine_file, trt=trt, device="cpu")
    assert first._logger is second._logger
    assert len(recorder.args_of("Logger", "__init__")) == 1

# ------------------------------------------------------------------------- the real API check

def test_the_fake_is_strict():
    recorder = Recorder()
    trt = runtime_module(recorder)
    with pytest.raises(AttributeError, match="fake module has no attribute 'Builder'"):
        trt.Builder
    assert recorder.touched == set()


def test_every_runtime_call_exists_in_the_real_tensorrt_api(engine_file):
    """Each attribute the loader read and each call it made on the fake, during a full load,
    inference and close, must exist in TensorRT's runtime API and take those arguments.
    The recording is generic: a new call in the loader is checked without editing this test."""
    real = pytest.importorskip("tensorrt_lean_bindings")
    recorder = Recorder()
    full_use(engine_file, recorder)
    problems, unchecked = api_problems(recorder, real)
    assert problems == []
    assert unchecked == set()
    kinds = {kind for kind, _ in recorder.touched}
    assert kinds == {"module", "Logger", "Runtime", "ICudaEngine", "IExecutionContext", "TensorIOMode", "DataType"}
    # the calls the loader cannot work without were made, so were checked
    for needed in [("module", "Logger"), ("Logger", "WARNING"), ("module", "Runtime"),
                   ("Runtime", "deserialize_cuda_engine"), ("ICudaEngine", "create_execution_context"),
                   ("ICudaEngine", "num_io_tensors"), ("ICudaEngine", "get_tensor_name"),
                   ("ICudaEngine", "get_tensor_mode"), ("ICudaEngine", "get_tensor_dtype"),
                   ("ICudaEngine", "get_tensor_profile_shape"), ("TensorIOMode", "INPUT"),
                   ("IExecutionContext", "set_input_shape"), ("IExecutionContext", "get_tensor_shape"),
                   ("IExecutionContext", "set_tensor_address"), ("IExecutionContext", "execute_async_v3"),
                   ("DataType", "FLOAT"), ("DataType", "HALF")]:
        assert needed in recorder.touched, needed


def test_the_api_check_catches_what_the_real_api_lacks_or_takes_otherwise():
    """The check above is not vacuous: a removed method, a wrong argument count and a
    property called as a method are each reported."""
    real = pytest.importorskip("tensorrt_lean_bindings")
    recorder = Recorder()
    recorder.touched |= {("ICudaEngine", "get_binding_shape"), ("IExecutionContext", "execute_async_v3"),
                         ("ICudaEngine", "num_io_tensors")}
    recorder.calls += [("IExecutionContext", "execute_async_v3", (), {}),
                       ("IExecutionContext", "execute_async_v3", (0,), {"stream": 1}),
                       ("ICudaEngine", "num_io_tensors", (), {})]
    problems, _ = api_problems(recorder, real)
    text = "\n".join(problems)
    assert "ICudaEngine.get_binding_shape does not exist" in text
    assert "execute_async_v3 called with 0 positional" in text
    assert "execute_async_v3 called with 1 positional and ['stream'] keyword" in text
    assert "num_io_tensors is a property" in text


def test_signatures_are_read_from_the_real_docstrings():
    real = pytest.importorskip("tensorrt_lean_bindings")
    assert signatures(real.IExecutionContext.execute_async_v3, "execute_async_v3") == [(["stream_handle"],
                                                                                        {"stream_handle"})]
    names, required = signatures(real.ICudaEngine.create_execution_context, "create_execution_context")[0]
    assert names == ["strategy"] and required == set()


def test_builder_calls_the_lean_bindings_cover_exist_there(tmp_path):
    """The lean bindings have no Builder, but they do carry the timing cache, optimisation
    profile, memory pool and flag types: what a TensorRT 11 build touches of those is checked."""
    real = pytest.importorskip("tensorrt_lean_bindings")
    onnx_files = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8_qdq.onnx"}
    (tmp_path / "model_fp16.onnx").write_bytes(b"onnx")
    chosen = settings_for(build_settings(batch_profile("input", 3, 8, 1, 4, 16), onnx_files, 1, ["fp16"]),
                          real.__version__)
    recorder = Recorder()
    trt = builder_module(recorder, version=real.__version__)
    build_engine(tmp_path / "model_fp16.onnx", tmp_path / "model_fp16.engine", "fp16", {**chosen, **chosen["fp16"]},
                 tmp_path / "timing.cache", logging.getLogger("test_trt_runtime"), trt, gpu="-",
                 compute_capability="-")
    problems, unchecked = api_problems(recorder, real)
    builder_only = {"Builder", "OnnxParser", "NetworkDefinitionCreationFlag"}   # not in a runtime package
    assert [p for p in problems if p.split(" ")[0] not in {f"module.{name}" for name in builder_only}] == []
    assert {("IOptimizationProfile", "set_shape"), ("ITimingCache", "serialize"),
            ("MemoryPoolType", "WORKSPACE"), ("Logger", "WARNING")} <= recorder.touched
    # these need the full tensorrt package; the gpu test below runs them for real
    assert unchecked == {"Builder", "INetworkDefinition", "IBuilderConfig", "OnnxParser",
                         "NetworkDefinitionCreationFlag", "ITensor", "ILayer", "LayerType"}


def test_runtime_modules_include_the_installed_lean_bindings():
    full = RUNTIME_MODULES["tensorrt"]
    assert full[0] == "tensorrt" and "tensorrt_lean" in full and "tensorrt_lean_bindings" in full
    assert RUNTIME_MODULES["tensorrt-rtx"] == ("tensorrt_rtx",)


# ----------------------------------------------------------------------- end to end on a GPU

@pytest.mark.gpu
def test_infer_on_cuda_keeps_outputs_on_the_input_s_device(engine_file):
    r = TrtRunner(engine_file, trt=runtime_module(Recorder()))      # device defaults to cuda
    stream = torch.cuda.Stream()
    x = torch.zeros(4, 3, 8, 8, device="cuda")
    out = r.infer(x, stream.cuda_stream)
    assert out.is_cuda and out.device == x.device and out.shape == (4, 2)
    with pytest.raises(TrtError, match="on cuda, got torch.float32 on cpu"):
        r.infer(torch.zeros(4, 3, 8, 8), stream.cuda_stream)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_built_engines_answer_like_pytorch(tmp_path):
    """Export a tiny conv net, build FP32 and FP16 engines with this TensorRT's settings, run a
    batch on a CUDA stream and compare with PyTorch."""
    import copy

    import tensorrt as trt

    from handlers.inference.trt.record import engine_name

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    model = model.eval().cuda()

    class HalfInside(torch.nn.Module):
        """FP16 weights and compute, float32 input and output: what TensorRT 11 needs for an
        FP16 engine (precision comes from the model)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.half()).float()

    example = torch.randn(2, 3, 32, 32, device="cuda")
    export = dict(input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False,
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(tmp_path / "model.onnx"), **export)
        half = HalfInside(copy.deepcopy(model).half())
        torch.onnx.export(half, (example,), str(tmp_path / "model_fp16.onnx"), **export)

    profile = batch_profile("input", 3, 32, 1, 4, 8)
    onnx_files = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8_qdq.onnx"}
    settings = settings_for(build_settings(profile, onnx_files, 1.0, ["fp32", "fp16"]), trt.__version__)
    cache = tmp_path / "cache" / "timing.cache"
    x = torch.randn(5, 3, 32, 32, device="cuda")
    with torch.no_grad():
        expected = model(x)
    stream = torch.cuda.Stream()
    log = logging.getLogger("test_trt_runtime")
    for precision, atol in (("fp32", 1e-3), ("fp16", 2e-2)):
        entry = {**settings, **settings[precision]}
        engine = tmp_path / engine_name(precision)
        record = build_engine(tmp_path / entry["onnx"], engine, precision, entry, cache, log)
        assert record.size_bytes == engine.stat().st_size > 0
        assert record.timing_cache["reused"] is (precision == "fp16")
        runner = TrtRunner(engine)
        assert runner.input_dtype == torch.float32 and runner.batch_range == (1, 4, 8)
        with torch.cuda.stream(stream):
            out = runner.infer(x, stream.cuda_stream)
        stream.synchronize()
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, atol=atol, rtol=0)
        with pytest.raises(TrtError, match="outside"):
            runner.infer(torch.zeros(9, 3, 32, 32, device="cuda"), stream.cuda_stream)
        runner.close()

