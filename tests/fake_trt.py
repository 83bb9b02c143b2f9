"""Recording fakes of the TensorRT Python API, for tests on machines without libnvinfer.

Every object is a `Fake` of a named kind ("module", "ICudaEngine", "IBuilderConfig", ...,
the real class names). Each attribute read is recorded as (kind, name) and each method call
as (kind, name, args, kwargs), so a test can compare what the code touched with the real
API. The fakes are strict: an attribute a fake does not define raises AttributeError, so new
code cannot quietly rely on something that nobody checked.
"""
from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Recorder:
    touched: set[tuple[str, str]] = field(default_factory=set)
    data: set[tuple[str, str]] = field(default_factory=set)      # reads that gave a value, not a method
    calls: list[tuple[str, str, tuple, dict]] = field(default_factory=list)

    def clear(self) -> None:
        self.touched.clear()
        self.data.clear()
        self.calls.clear()

    def args_of(self, kind: str, name: str) -> list[tuple]:
        return [args for k, n, args, _ in self.calls if (k, n) == (kind, name)]

    def called(self, kind: str, name: str) -> bool:
        return bool(self.args_of(kind, name))


class FakeEnum:
    """An enum member: hashable, comparable by identity, int() like TensorRT's."""

    def __init__(self, kind: str, name: str, value: int) -> None:
        self.kind, self.name, self.value = kind, name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"{self.kind}.{self.name}"


class Fake:
    def __init__(self, kind: str, recorder: Recorder, members: dict[str, Any] | None = None,
                 call: Callable[..., Any] | None = None) -> None:
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_recorder", recorder)
        object.__setattr__(self, "_members", dict(members or {}))
        object.__setattr__(self, "_call", call)

    def __getattr__(self, name: str) -> Any:
        kind, recorder, members = (object.__getattribute__(self, a) for a in ("_kind", "_recorder", "_members"))
        if name not in members:
            raise AttributeError(f"fake {kind} has no attribute {name!r}")
        recorder.touched.add((kind, name))
        value = members[name]
        if isinstance(value, types.FunctionType):
            def method(*args: Any, **kwargs: Any) -> Any:
                recorder.calls.append((kind, name, args, kwargs))
                return value(*args, **kwargs)
            return method
        if not isinstance(value, Fake):
            recorder.data.add((kind, name))
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        object.__getattribute__(self, "_recorder").touched.add((object.__getattribute__(self, "_kind"), name))
        object.__getattribute__(self, "_members")[name] = value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = object.__getattribute__(self, "_call")
        kind = object.__getattribute__(self, "_kind")
        if call is None:
            raise TypeError(f"fake {kind} is not callable")
        object.__getattribute__(self, "_recorder").calls.append((kind, "__init__", args, kwargs))
        return call(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<fake {object.__getattribute__(self, '_kind')}>"


def enum(kind: str, recorder: Recorder, *names: str) -> Fake:
    return Fake(kind, recorder, {name: FakeEnum(kind, name, i) for i, name in enumerate(names)})


def logger_class(recorder: Recorder) -> Fake:
    severities = {name: FakeEnum("Severity", name, i)
                  for i, name in enumerate(("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"))}
    return Fake("Logger", recorder, severities, call=lambda *a, **k: Fake("Logger", recorder, severities))


# ---------------------------------------------------------------------------------- runtime

DATA_TYPES = ("FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8")


def runtime_module(recorder: Recorder, *, version: str = "10.13.0", name: str = "tensorrt",
                   io: tuple = (("input", "INPUT", "FLOAT"), ("logits", "OUTPUT", "FLOAT")),
                   profile: tuple = ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8)), classes: int = 2,
                   loads: bool = True, runs: bool = True) -> Fake:
    """A tensorrt (or tensorrt_lean) module whose engine has the given I/O tensors; the
    output is [batch, classes]."""
    data_type = enum("DataType", recorder, *DATA_TYPES)
    io_mode = enum("TensorIOMode", recorder, "NONE", "INPUT", "OUTPUT")
    mode_of = {tensor: getattr(io_mode, mode) for tensor, mode, _ in io}
    dtype_of = {tensor: getattr(data_type, dtype) for tensor, _, dtype in io}
    input_mode = io_mode.INPUT
    recorder.clear()   # building the fake read its own enums
    state: dict[str, Any] = {"shape": None}

    def set_input_shape(tensor: str, shape: tuple) -> bool:
        state["shape"] = tuple(shape)
        return True

    def get_tensor_shape(tensor: str) -> tuple:
        if mode_of[tensor] is input_mode:
            return state["shape"]
        return (state["shape"][0], classes)

    def make_context() -> Fake:
        return Fake("IExecutionContext", recorder, {
            "set_input_shape": set_input_shape, "get_tensor_shape": get_tensor_shape,
            "set_tensor_address": lambda tensor, memory: True,
            "execute_async_v3": lambda stream_handle: runs})

    names = [tensor for tensor, _, _ in io]
    engine = Fake("ICudaEngine", recorder, {
        "num_io_tensors": len(names),
        "get_tensor_name": lambda index: names[index],
        "get_tensor_mode": lambda tensor: mode_of[tensor],
        "get_tensor_dtype": lambda tensor: dtype_of[tensor],
        "get_tensor_profile_shape": lambda tensor, profile_index: [tuple(s) for s in profile],
        "create_execution_context": make_context})
    runtime = Fake("Runtime", recorder, {
        "deserialize_cuda_engine": lambda serialized_engine: engine if loads else None})
    module = Fake("module", recorder, {
        "__version__": version, "__name__": name, "Logger": logger_class(recorder),
        "Runtime": Fake("Runtime", recorder, call=lambda logger: runtime),
        "TensorIOMode": io_mode, "DataType": data_type})
    recorder.clear()
    return module


# ---------------------------------------------------------------------------------- builder

BUILDER_FLAGS_10 = ("FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
                    "SPARSE_WEIGHTS", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
                    "FP8", "VERSION_COMPATIBLE", "STRIP_PLAN")
# TensorRT 11 removed the weak-typing flags
BUILDER_FLAGS_11 = ("DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
                    "VERSION_COMPATIBLE", "STRIP_PLAN")


@dataclass
class ParserFailure:
    node: int
    desc: str
    code: str = "UNSUPPORTED_NODE"
    node_name: str = ""
    node_operator: str = ""


def builder_module(recorder: Recorder, *, version: str = "10.13.0", inputs: tuple[str, ...] = ("input",),
                   parse_errors: tuple[ParserFailure, ...] = (), engine: bytes | None = b"serialized-engine",
                   tactics: bytes = b"tactics;") -> Fake:
    """A full tensorrt module. build_serialized_network returns `engine`; the timing cache
    serializes as what it was created from plus `tactics` (a build adds timings)."""
    flags = BUILDER_FLAGS_11 if int(version.split(".")[0]) >= 11 else BUILDER_FLAGS_10

    def make_cache(data: bytes) -> Fake:
        return Fake("ITimingCache", recorder, {"serialize": lambda: bytes(data) + tactics})

    def make_error(failure: ParserFailure) -> Fake:
        return Fake("IParserError", recorder, {
            "node": lambda: failure.node, "desc": lambda: failure.desc, "code": lambda: failure.code,
            "node_name": lambda: failure.node_name, "node_operator": lambda: failure.node_operator})

    def make_parser(network: Fake, logger: Fake) -> Fake:
        return Fake("OnnxParser", recorder, {
            "parse_from_file": lambda model: not parse_errors, "num_errors": len(parse_errors),
            "get_error": lambda index: make_error(parse_errors[index])})

    data_type = enum("DataType", recorder, *DATA_TYPES)
    layer_type = enum("LayerType", recorder, "CONVOLUTION", "ACTIVATION", "QUANTIZE", "DEQUANTIZE")
    # (name, type, output data type): a conv + relu pair after a Q/DQ pair, as a parsed INT8 model has
    layer_specs = (("q", "QUANTIZE", "INT8"), ("dq", "DEQUANTIZE", "FLOAT"), ("conv", "CONVOLUTION", "FLOAT"),
                   ("relu", "ACTIVATION", "FLOAT"))

    def make_layer(index: int) -> Fake:
        name, kind, dtype = layer_specs[index]
        output = Fake("ITensor", recorder, {"dtype": getattr(data_type, dtype)})
        return Fake("ILayer", recorder, {"name": name, "type": getattr(layer_type, kind), "num_outputs": 1,
                                         "get_output": lambda j: output})

    network = Fake("INetworkDefinition", recorder, {
        "num_inputs": len(inputs), "get_input": lambda index: Fake("ITensor", recorder, {"name": inputs[index]}),
        "num_layers": len(layer_specs), "get_layer": make_layer})
    config = Fake("IBuilderConfig", recorder, {
        "set_memory_pool_limit": lambda pool, pool_size: None, "set_flag": lambda flag: None,
        "add_optimization_profile": lambda profile: 0, "create_timing_cache": make_cache,
        "set_timing_cache": lambda cache, ignore_mismatch: True})
    builder = Fake("Builder", recorder, {
        "create_network": lambda flags=0: network, "create_builder_config": lambda: config,
        "create_optimization_profile": lambda: Fake("IOptimizationProfile", recorder, {
            "set_shape": lambda input, min, opt, max: None}),
        "build_serialized_network": lambda network, config: engine})
    module = Fake("module", recorder, {
        "__version__": version, "Logger": logger_class(recorder), "Builder": Fake("Builder", recorder,
                                                                                  call=lambda logger: builder),
        "OnnxParser": Fake("OnnxParser", recorder, call=make_parser),
        "NetworkDefinitionCreationFlag": enum("NetworkDefinitionCreationFlag", recorder, "EXPLICIT_BATCH",
                                              "STRONGLY_TYPED"),
        "BuilderFlag": enum("BuilderFlag", recorder, *flags),
        "ProfilingVerbosity": enum("ProfilingVerbosity", recorder, "LAYER_NAMES_ONLY", "NONE", "DETAILED"),
        "MemoryPoolType": enum("MemoryPoolType", recorder, "WORKSPACE", "DLA_MANAGED_SRAM")})
    recorder.clear()
    return module


# --------------------------------------------------------------------- checking the real API

_SIGNATURE = re.compile(r"^\s*(?:\d+\.\s+)?(\w+)\((.*)\)\s*->", re.M)


def _split_params(text: str) -> list[str]:
    params, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{<"
        depth -= char in ")]}>"
        if char == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        params.append(current.strip())
    return params


def signatures(function: Any, name: str) -> list[tuple[list[str], set[str]]]:
    """(parameter names, required names) of each overload, read from a pybind11 docstring
    ("name(self: T, a: int, b: bool = False) -> R"); [] when it has none."""
    found = []
    for match in _SIGNATURE.finditer(getattr(function, "__doc__", None) or ""):
        if match.group(1) != name:
            continue
        params = _split_params(match.group(2))
        if params and params[0].split(":")[0].strip() == "self":
            params = params[1:]
        names = [p.split(":")[0].split("=")[0].strip() for p in params]
        found.append((names, {n for n, p in zip(names, params) if " = " not in p and "=" not in p.split(":")[0]}))
    return found


def _fits(names: list[str], required: set[str], args: tuple, kwargs: dict) -> bool:
    if len(args) > len(names) or not set(kwargs) <= set(names[len(args):]):
        return False
    return required <= set(names[:len(args)]) | set(kwargs)


def api_problems(recorder: Recorder, real: Any) -> tuple[list[str], set[str]]:
    """What the recorded code used that the real module lacks or calls differently:
    (problems, kinds the real module does not have, which could not be checked)."""
    problems: list[str] = []
    unchecked: set[str] = set()
    label = f"{getattr(real, '__name__', 'tensorrt')} {getattr(real, '__version__', '')}".strip()

    def owner(kind: str) -> Any:
        return real if kind == "module" else getattr(real, kind, None)

    for kind, name in sorted(recorder.touched):
        if owner(kind) is None:
            unchecked.add(kind)
        elif not hasattr(owner(kind), name):
            problems.append(f"{kind}.{name} does not exist in {label}")
    for kind, name in sorted(recorder.data):
        target = owner(kind)
        if target is not None and hasattr(target, name):
            static = inspect.getattr_static(target, name)
            if callable(static) and not isinstance(static, (property, type)):
                problems.append(f"{kind}.{name} is a method in {label}, but the code reads it as a value")
    for kind, name, args, kwargs in recorder.calls:
        target = owner(kind)
        if target is None or not hasattr(target, name):
            continue
        if name != "__init__" and isinstance(inspect.getattr_static(target, name), property):
            problems.append(f"{kind}.{name} is a property in {label}, but the code calls it")
            continue
        overloads = signatures(getattr(target, name), name)
        if overloads and not any(_fits(names, required, args, kwargs) for names, required in overloads):
            shown = " | ".join(f"({', '.join(names)})" for names, _ in overloads)
            problems.append(f"{kind}.{name} called with {len(args)} positional and {sorted(kwargs)} keyword "
                            f"arguments; {label} takes {shown}")
    return sorted(set(problems)), unchecked
