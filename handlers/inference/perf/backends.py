"""PyTorch, ONNX Runtime and TensorRT behind the harness's `Backend` contract.

torch, onnxruntime and tensorrt are imported inside functions: building the list of
backends, or failing to, must not need any of them installed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np

from handlers.inference.perf.harness import Backend, Unavailable

GPU_HINT = "run on a machine with a CUDA GPU (atlas env shows what torch sees)"

# mode -> (backend name, label, precision)
TORCH_MODES: dict[str, tuple[str, str, str]] = {
    "eager-fp32": ("pytorch-eager-fp32", "PyTorch eager FP32", "fp32"),
    "fp16-channels-last": ("pytorch-fp16-channels-last", "PyTorch FP16 channels_last", "fp16"),
    "compile": ("torch-compile", "torch.compile FP16 channels_last", "fp16"),
}


def available_torch_device() -> str:
    """"cuda" where torch sees a GPU, else "cpu"."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_torch_model(model, device: str, mode: str):
    """A private copy of `model` in `mode`'s form on `device`: eval, and for the FP16 modes
    half precision in channels_last (NHWC suits tensor cores); "compile" wraps that in
    torch.compile (default mode, static shapes). Copied so modes never share weights."""
    import torch
    module = copy.deepcopy(model).eval().to(device)
    if mode != "eager-fp32":
        module = module.half().to(memory_format=torch.channels_last)
    if mode == "compile":
        # One compiled graph per batch size (static shapes are the fast ones); past dynamo's
        # recompile limit (8) it would silently run eager, so leave room for long size lists.
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), 64))
        module = torch.compile(module, dynamic=False)
    return module


def to_native(x, mode: str):
    """A float32 NCHW tensor in the form `mode`'s model takes."""
    import torch
    if mode == "eager-fp32":
        return x.contiguous()
    return x.to(dtype=torch.half, memory_format=torch.channels_last)


def _host_tensor(batch: np.ndarray, pin: bool):
    """float32 host tensor of `batch`; pinned where it feeds a GPU, so copies from it can be
    asynchronous (non_blocking from pageable memory silently synchronizes)."""
    import torch
    host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    return host.pin_memory() if pin else host


class TorchBackend(Backend):
    """A torch.nn.Module in one of TORCH_MODES, timed on the current CUDA stream (or the CPU)."""

    def __init__(self, model, device: str = "cuda", mode: str = "eager-fp32"):
        import torch
        if mode not in TORCH_MODES:
            raise ValueError(f"unknown TorchBackend mode {mode!r}; use one of {sorted(TORCH_MODES)}")
        self.name, label, self.precision = TORCH_MODES[mode]
        self.mode = mode
        self._torch_device = torch.device(device)
        self.device = self._torch_device.type
        self.label = f"{label} ({'CUDA' if self.device == 'cuda' else 'CPU'})"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise Unavailable(self.name, "device cuda was asked for, but torch sees no CUDA device", GPU_HINT)
        # FP16 and torch.compile run on the CPU too (slowly): they are measured there like anywhere
        # else; the harness's per-point budget (max_point_s) skips what would take too long, saying
        # how long the measured points took.
        # a compiled module is compiled once per input shape: feed it shapes it has seen
        self.static_shapes = mode == "compile"
        self._source = model
        self.module = None
        self._host = None       # float32 NCHW on the host (pinned on CUDA)
        self._native = None     # resident on the device, in the model's dtype/layout

    def setup(self) -> None:
        import torch
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True    # fixed shapes per batch size: autotune once
        self.module = prepare_torch_model(self._source, self._torch_device, self.mode)

    def _to_device(self, host):
        return to_native(host.to(self._torch_device, non_blocking=True), self.mode)

    def stage(self, batch: np.ndarray) -> None:
        import torch
        self._host = _host_tensor(batch, pin=self.device == "cuda")
        # Made under inference_mode like run()'s copies: torch.compile guards on the tensor's
        # dispatch keys, and a normal tensor here would cost a second compile per batch size.
        with torch.inference_mode():
            self._native = self._to_device(self._host)

    def run(self, copy_input: bool) -> None:
        import torch
        with torch.inference_mode():
            # on CUDA both the copy and the forward are only enqueued on the current stream
            x = self._to_device(self._host) if copy_input and self.device == "cuda" else self._native
            self.module(x)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch
        with torch.inference_mode():
            out = self.module(self._to_device(_host_tensor(batch, pin=False)))
            return out.float().cpu().numpy()    # .cpu() waits for the result

    def close(self) -> None:
        self.module = self._host = self._native = None
        self.ready = False


class OrtBackend(Backend):
    """An ONNX model in ONNX Runtime. CPU provider: session.run on the staged array. CUDA
    provider: IOBinding to device OrtValues; ORT runs on a stream of its own and waits for it
    before run_with_iobinding returns, so it is timed by the wall clock (timer = "wall")."""

    def __init__(self, onnx_path: Path | str, name: str, precision: str, providers: str = "auto"):
        import onnxruntime as ort

        from handlers.ml.errors import ModelError
        from handlers.ml.ort import choose_provider
        self.path = Path(onnx_path)
        self.name = name
        self.precision = precision
        try:
            self.provider = choose_provider(ort.get_available_providers(), providers)
        except ModelError as exc:
            raise Unavailable(name, exc.message, exc.hint) from exc
        if not self.path.is_file():
            raise Unavailable(name, f"{self.path} does not exist", "run the step that writes it")
        self._set_device(self.provider)
        self.timer = "wall"
        self._session = None
        self._host: np.ndarray | None = None
        self._pinned = None          # torch tensor owning _host's pinned memory, kept alive with it
        self._device_value = None
        self._binding = None

    def _set_device(self, provider: str) -> None:
        from handlers.ml.ort import PROVIDERS
        self.device = "cuda" if provider == PROVIDERS["cuda"] else "cpu"
        self.label = f"ONNX Runtime {self.precision.upper()} ({'CUDA' if self.device == 'cuda' else 'CPU'})"

    def setup(self) -> None:
        from handlers.ml.ort import open_session
        # ORT falls back to the CPU when the CUDA provider's libraries fail to load: report where it really runs
        self._session, running = open_session(self.path, self.provider)
        self._set_device(running)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def _pinned_copy(self, batch: np.ndarray) -> np.ndarray:
        """A page-locked float32 copy where torch with CUDA is at hand (faster, truly
        asynchronous host-to-device copies); a plain one otherwise."""
        array = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            import torch
            if torch.cuda.is_available():
                self._pinned = torch.from_numpy(array).pin_memory()
                return self._pinned.numpy()
        except ImportError:
            pass
        return array.copy() if array is batch else array

    def stage(self, batch: np.ndarray) -> None:
        if self.device == "cpu":
            self._host = np.ascontiguousarray(batch, dtype=np.float32)
            return
        import onnxruntime as ort
        self._host = self._pinned_copy(batch)
        self._device_value = ort.OrtValue.ortvalue_from_numpy(self._host, "cuda", 0)
        self._binding = self._session.io_binding()
        self._binding.bind_ortvalue_input(self._input, self._device_value)
        self._binding.bind_output(self._output, "cuda", 0)    # ORT allocates it on the device; never read back

    def run(self, copy_input: bool) -> None:
        if self.device == "cpu":
            self._session.run([self._output], {self._input: self._host})
            return
        if copy_input:
            self._device_value.update_inplace(self._host)      # host -> the bound device buffer
        self._session.run_with_iobinding(self._binding)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self._session.run([self._output], {self._input: x})[0], dtype=np.float32)

    def close(self) -> None:
        self._binding = self._device_value = self._session = None
        self._host = self._pinned = None
        self.ready = False


class TrtBackend(Backend):
    """A serialized TensorRT engine through handlers.inference.trt.runtime.TrtRunner, whose `infer`
    only enqueues on the stream it is given (here torch's current stream). The engine's own
    family's runtime loads it (TensorRT, or TensorRT for RTX with its runtime cache); an engine
    that runtime refuses here is listed as built but not runnable, in the runtime's words."""

    def __init__(self, engine_path: Path | str, precision: str, runner_factory: Callable | None = None, *,
                 family: str = "tensorrt", targets: list[str] | None = None, runtime_cache: Path | None = None):
        import torch
        self.path = Path(engine_path)
        self.precision, self.family = precision, family
        prefix = "tensorrt-rtx" if family == "tensorrt-rtx" else "tensorrt"
        self.name = f"{prefix}-{precision}"
        who = "TensorRT for RTX" if family == "tensorrt-rtx" else "TensorRT"
        self.label = f"{who} {precision.upper()} ({self.path.name})"
        self.device = "cuda"
        built = f"built ({who}, for compute capability {', '.join(targets)})" if targets else "built"
        self._built = built
        if not torch.cuda.is_available():
            raise Unavailable(self.name, f"{built}, not runnable here: no CUDA device (torch sees none)", GPU_HINT)
        self._runner_factory = runner_factory   # tests pass a stand-in; None: TrtRunner
        self._runtime_cache = runtime_cache
        self.runner = None
        self._host = None
        self._device_input = None
        self.load_facts: dict = {}

    def setup(self) -> None:
        factory = self._runner_factory
        if factory is None:
            from handlers.inference.trt.errors import TrtError
            try:
                from handlers.inference.trt.runtime import TrtRunner
            except ImportError as exc:
                raise Unavailable(self.name, f"{exc.name or exc} not importable",
                                  "pip install tensorrt-cu13 on the CUDA machine") from exc
            try:
                self.runner = TrtRunner(self.path, family=self.family, runtime_cache=self._runtime_cache)
            except TrtError as exc:      # refused by its runtime here: built, listed with the runtime's reason
                raise Unavailable(self.name, f"{self._built}, not runnable here: {exc.message}", exc.hint) from exc
        else:
            self.runner = factory(self.path)
        self.load_facts = {"context_seconds": getattr(self.runner, "context_seconds", None),
                           "runtime_cache_loaded": getattr(self.runner, "runtime_cache_loaded", None)}
        self.min_batch, _, self.max_batch = (int(n) for n in self.runner.batch_range)

    def _to_device(self, host):
        return host.to("cuda", non_blocking=True).to(self.runner.input_dtype)

    def stage(self, batch: np.ndarray) -> None:
        self._host = _host_tensor(batch, pin=True)
        self._device_input = self._to_device(self._host)

    def run(self, copy_input: bool) -> None:
        import torch
        x = self._to_device(self._host) if copy_input else self._device_input
        self.runner.infer(x, torch.cuda.current_stream().cuda_stream)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch
        stream = torch.cuda.current_stream()
        out = self.runner.infer(self._to_device(_host_tensor(batch, pin=False)), stream.cuda_stream)
        stream.synchronize()
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.runner = self._host = self._device_input = None
        self.ready = False
