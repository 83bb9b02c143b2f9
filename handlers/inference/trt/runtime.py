"""Load a serialized TensorRT engine and run it on torch tensors, for the benchmark.

The caller owns the stream and the timing: infer() only enqueues work on the stream it is
given and never synchronizes. torch and tensorrt are imported when a runner is made, so
this module imports anywhere.
"""
from __future__ import annotations

import importlib
import sys
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from atlas.atomic import write_atomically
from handlers.inference.trt.errors import TrtError

# per family: the full package first; the lean runtime (inference only) where that is all there is
RUNTIME_MODULES = {"tensorrt": ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings"),
                   "tensorrt-rtx": ("tensorrt_rtx",)}
_REBUILD = "atlas run AG-DS-TRTENGINE-001 --force"
# by name, so a DataType that one TensorRT version lacks is simply left out
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                 "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn"}


_LOGGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _capturing_logger(trt: Any) -> Any:
    """A logger that prints warnings and errors (as TensorRT's own does) and keeps the last
    errors, so a refusal is reported in the runtime's own words."""
    base = getattr(trt, "ILogger", None)

    class Capturing(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.errors: deque[str] = deque(maxlen=20)
            self._error_levels = {trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR}
            self._shown = self._error_levels | {trt.ILogger.Severity.WARNING}

        def log(self, severity, message) -> None:
            if severity in self._error_levels:
                self.errors.append(str(message))
            if severity in self._shown:
                print(f"[TensorRT] {message}", file=sys.stderr)
    return Capturing()


def shared_logger(trt: Any) -> Any:
    """One logger per TensorRT module: TensorRT keeps the first logger it was given for the
    whole process and warns about every different one passed after it."""
    if trt not in _LOGGERS:
        try:
            _LOGGERS[trt] = _capturing_logger(trt)
        except (TypeError, AttributeError):      # a binding that cannot be subclassed: its own logger
            _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt]


def runtime_module(family: str = "tensorrt") -> Any:
    for name in RUNTIME_MODULES[family]:
        try:
            return importlib.import_module(name)
        except (ImportError, OSError):
            continue
    if family == "tensorrt-rtx":
        raise TrtError("TensorRT for RTX is not installed: tensorrt_rtx does not import",
                       "pip install 'atlas-runner[tensorrt-rtx]' on the machine with the RTX GPU")
    raise TrtError("TensorRT runtime not installed: neither tensorrt nor its lean runtime imports",
                   "pip install tensorrt-cu13 (NVIDIA's wheels) on a CUDA machine")


def torch_dtypes(trt: Any) -> dict[Any, Any]:
    """trt.DataType member -> torch dtype, for the members both sides have."""
    import torch
    found = {}
    for trt_name, torch_name in _TORCH_DTYPES.items():
        member = getattr(trt.DataType, trt_name, None)
        if member is not None and hasattr(torch, torch_name):
            found[member] = getattr(torch, torch_name)
    return found


class TrtRunner:
    """One engine with one input and one output, batch within the engine's profile 0.

    The output tensor of each shape is allocated once and reused by later calls of that
    shape: read or copy it before the next infer() of the same shape."""

    def __init__(self, engine_path: Path, trt: Any = None, device: str = "cuda", family: str = "tensorrt",
                 runtime_cache: Path | None = None) -> None:
        import torch

        trt = trt if trt is not None else runtime_module(family)
        self.engine_path = Path(engine_path)
        self.device = torch.device(device)
        self.family = family
        if not self.engine_path.is_file():
            raise TrtError(f"engine {self.engine_path} not found", _REBUILD)
        self._logger = shared_logger(trt)
        errors = getattr(self._logger, "errors", None)
        seen = len(errors) if errors is not None else 0
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            said = list(errors)[seen:] if errors is not None else []
            raise TrtError(*_load_failure(trt, self.engine_path, said))
        # TensorRT for RTX compiles its kernels for this GPU when the context is made ("JIT");
        # a runtime cache kept between runs saves that work (family tensorrt-rtx only)
        self.runtime_cache_path = Path(runtime_cache) if runtime_cache is not None else None
        self.runtime_cache_loaded = False
        self._runtime_cache = None
        started = time.perf_counter()
        if family == "tensorrt-rtx":
            config = self._engine.create_runtime_config()
            if self.runtime_cache_path is not None:
                self._runtime_cache = config.create_runtime_cache()
                if self.runtime_cache_path.is_file():
                    self.runtime_cache_loaded = bool(self._runtime_cache.deserialize(self.runtime_cache_path.read_bytes()))
                config.set_runtime_cache(self._runtime_cache)
            self._context = self._engine.create_execution_context(config)
        else:
            self._context = self._engine.create_execution_context()
        self.context_seconds = time.perf_counter() - started
        if self._context is None:
            raise TrtError(f"TensorRT could not create an execution context for {self.engine_path.name}",
                           "the GPU may be out of memory; close other programs on it")

        inputs, outputs = [], []
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            (inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        if len(inputs) != 1 or len(outputs) != 1:
            raise TrtError(f"{self.engine_path.name} has inputs {inputs} and outputs {outputs}; the benchmark "
                           "runs models with one input and one output", "export the model with one input and "
                           "one output (AG-DS-ONNXCONV-001)")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = torch_dtypes(trt)
        self.input_dtype = self._dtype(dtypes, self.input_name)
        self.output_dtype = self._dtype(dtypes, self.output_name)
        low, best, high = (tuple(int(d) for d in dims)
                           for dims in self._engine.get_tensor_profile_shape(self.input_name, 0))
        self.profile_shapes = (low, best, high)
        self.batch_range = (low[0], best[0], high[0])
        self._input_shape: tuple[int, ...] | None = None
        self._output_shape: tuple[int, ...] = ()
        self._outputs: dict[tuple, Any] = {}

    def _dtype(self, dtypes: dict, name: str) -> Any:
        trt_dtype = self._engine.get_tensor_dtype(name)
        if trt_dtype not in dtypes:
            raise TrtError(f"{self.engine_path.name}: tensor {name!r} has type {trt_dtype}, which torch cannot hold",
                           "export the model with float32 inputs and outputs")
        return dtypes[trt_dtype]

    def infer(self, x: Any, stream_handle: int) -> Any:
        """Enqueue one batch on the stream; the returned output is ready once the stream is."""
        if self._context is None:
            raise TrtError(f"{self.engine_path.name}: the runner is closed", "make a new TrtRunner")
        if x.dtype != self.input_dtype or x.device.type != self.device.type or not x.is_contiguous():
            raise TrtError(f"{self.engine_path.name} takes a contiguous {self.input_dtype} tensor on "
                           f"{self.device.type}, got {x.dtype} on {x.device} (contiguous: {x.is_contiguous()})",
                           "convert the batch with .to(device, dtype).contiguous() before timing")
        shape = tuple(x.shape)
        if shape != self._input_shape:
            self._set_shape(shape)
        key = (self._output_shape, str(x.device))
        output = self._outputs.get(key)
        if output is None:
            import torch
            output = self._outputs[key] = torch.empty(self._output_shape, dtype=self.output_dtype, device=x.device)
        self._context.set_tensor_address(self.input_name, x.data_ptr())
        self._context.set_tensor_address(self.output_name, output.data_ptr())
        if not self._context.execute_async_v3(stream_handle):
            raise TrtError(f"TensorRT could not run {self.engine_path.name} on a batch of {shape[0]}",
                           "the TensorRT messages above say why")
        return output

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        low, _, high = self.profile_shapes
        if len(shape) != len(low):
            raise TrtError(f"{self.engine_path.name} takes {len(low)}-d input {list(low)}, got shape {list(shape)}",
                           "pass batches shaped like the model's input")
        if not low[0] <= shape[0] <= high[0]:
            raise TrtError(f"batch {shape[0]} is outside {self.engine_path.name}'s profile "
                           f"({low[0]}..{high[0]})", "use batch sizes within the profile, or re-run "
                           "AG-DS-TRTPROFILE-001 with a larger max_batch and rebuild the engines")
        if any(not lo <= d <= hi for d, lo, hi in zip(shape[1:], low[1:], high[1:])):
            raise TrtError(f"input shape {list(shape)} is outside {self.engine_path.name}'s profile "
                           f"{list(low)}..{list(high)}", "resize the images to the size the model was built for")
        if not self._context.set_input_shape(self.input_name, shape):
            raise TrtError(f"TensorRT refused input shape {list(shape)} for {self.engine_path.name}",
                           "the TensorRT messages above say why")
        output_shape = tuple(int(d) for d in self._context.get_tensor_shape(self.output_name))
        if any(d < 0 for d in output_shape):
            raise TrtError(f"{self.engine_path.name}: output shape {list(output_shape)} is not known for input "
                           f"{list(shape)}", "export the model with output shapes that follow from the input")
        self._input_shape, self._output_shape = shape, output_shape

    def close(self) -> None:
        if self._runtime_cache is not None and self.runtime_cache_path is not None:
            self.runtime_cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.runtime_cache_path, self._runtime_cache.serialize())
            self._runtime_cache = None
        # context before engine before runtime: each depends on the next
        self._outputs.clear()
        self._context = None
        self._engine = None
        self._runtime = None

    def __enter__(self) -> "TrtRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_failure(trt: Any, engine_path: Path, said: list[str] | None = None) -> tuple[str, str]:
    version = getattr(trt, "__version__", "?")
    name = getattr(trt, "__name__", "")
    who = f"TensorRT for RTX {version}" if "rtx" in name else f"TensorRT {version}"
    if said:          # the runtime's own words, never a guess
        words = "; ".join(dict.fromkeys(m.strip() for m in said[-4:]))
        return f"{who} refused {engine_path.name}: {words}", f"the engine was built for other hardware or " \
            f"another version; rebuild for this GPU: {_REBUILD}"
    message = (f"{who} could not load {engine_path.name}: it was built by another TensorRT "
               "version or for another GPU (or the file is damaged)")
    if "lean" in name:
        # the lean runtime runs only engines built version-compatible
        message += f"; only the lean runtime ({name}) is installed, and it loads only version-compatible engines"
        return message, "pip install tensorrt-cu13 (the full runtime) here, or " + _REBUILD
    return message, f"rebuild here: {_REBUILD} (the TensorRT messages above give the reason)"
