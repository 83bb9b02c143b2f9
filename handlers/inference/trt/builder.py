"""Build one TensorRT engine with the TensorRT Python API: parse the ONNX model, apply the
settings for this TensorRT major (profile.py), reuse the timing cache, write the engine and
return its record.

tensorrt is imported only when a build runs (or given, for tests), so this module imports
on any machine.
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

from atlas.atomic import write_atomically
from atlas.fingerprint import file_sha256
from handlers.inference.trt.errors import TrtError
from handlers.inference.trt.profile import PROFILE_STEP, ShapeProfile, tensorrt_major
from handlers.inference.trt.record import EngineRecord
from handlers.inference.trt.runtime import shared_logger

_NOT_INSTALLED_HINT = ("pip install tensorrt-cu13 (NVIDIA's wheels) on a CUDA machine, pip install "
                       "'atlas-runner[tensorrt-rtx]' for TensorRT for RTX, or use builder: trtexec")
# TensorRT for RTX builds for these when no GPU picks the target: its ahead-of-time default
# (docs: "CPU-only AOT"), named explicitly so the engine record says what was targeted.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")


def import_tensorrt(family: str = "tensorrt") -> Any:
    from handlers.inference.trt.choose import FAMILY_MODULES
    module = FAMILY_MODULES[family]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrtError(f"the {module} Python package cannot be imported ({exc})", _NOT_INSTALLED_HINT) from exc


def gpu_identity(gpu: str | None = None, compute_capability: str | None = None) -> tuple[str, str]:
    """The given GPU name and capability, else what torch sees on device 0, else "none"."""
    if gpu is not None and compute_capability is not None:
        return gpu, compute_capability
    name, capability = "none", "none"
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            name, capability = torch.cuda.get_device_name(0), f"{major}.{minor}"
    except (ImportError, RuntimeError):   # no torch, or a CUDA that cannot start: the record says none
        pass
    return gpu or name, compute_capability or capability


def build_engine(onnx_path: Path, engine_path: Path, precision: str, settings: dict, timing_cache_path: Path | None,
                 log: logging.Logger | logging.LoggerAdapter, trt: Any = None, *, family: str = "tensorrt",
                 targets: tuple[str, ...] | None = None, gpu: str | None = None,
                 compute_capability: str | None = None) -> EngineRecord:
    """`settings`: one precision's entry merged with the shared keys, i.e.
    {**settings_for(...), **settings_for(...)[precision]}. TensorRT for RTX (family
    "tensorrt-rtx") takes no timing cache (it has no effect there and would need a GPU) and
    builds for `targets` (compute capabilities; default RTX_DEFAULT_TARGETS)."""
    trt = trt if trt is not None else import_tensorrt(family)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    version = str(trt.__version__)
    rtx = family == "tensorrt-rtx"
    if not rtx:
        _check_settings_version(settings, version)
    if not onnx_path.is_file():
        raise TrtError(f"ONNX model {onnx_path} not found", f"re-run {PROFILE_STEP} (and AG-DS-ONNXCONV-001)")
    profile = ShapeProfile.from_dict(settings["profile"])
    network_flags = list(settings.get("network_flags", []))
    builder_flags = list(settings.get("builder_flags", []))

    logger = shared_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    for name in network_flags:
        flags |= 1 << int(_member(trt, "NetworkDefinitionCreationFlag", name, version))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    _parse(parser, onnx_path, version, family)
    _check_input(network, profile, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings["workspace_bytes"]))
    for name in builder_flags:
        config.set_flag(_member(trt, "BuilderFlag", name, version))
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED     # the inspector then names each layer
    _add_profile(builder, config, profile)
    cache, reused = (None, False) if rtx else _attach_timing_cache(config, Path(timing_cache_path), log)
    target_list = _set_targets(trt, config, targets or RTX_DEFAULT_TARGETS) if rtx else []

    log.info("%s %s: building the %s engine from %s (flags %s, network flags %s, batch %d..%d%s)",
             "TensorRT for RTX" if rtx else "TensorRT", version, precision, onnx_path.name, builder_flags or "none",
             network_flags or "none", profile.min[0], profile.max[0],
             f", compute capabilities {', '.join(target_list)}" if rtx else "")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise TrtError(f"TensorRT {version} could not build the {precision} engine from {onnx_path.name}",
                       "the TensorRT messages above say why; a workspace too small for the tactics "
                       "(raise workspace_gb) or a model this GPU has no kernels for are the usual causes")
    write_atomically(engine_path, serialized)
    if cache is not None:
        # tactics timed in this build make the next one faster; TensorRT adds them to the cache
        write_atomically(Path(timing_cache_path), cache.serialize())

    gpu_name, capability = gpu_identity(gpu, compute_capability)
    return EngineRecord(
        engine=engine_path.name, precision=precision, builder="python-api", tensorrt_version=version,
        gpu=gpu_name, compute_capability=capability, profile=profile.as_dict(), build_seconds=round(seconds, 3),
        size_bytes=engine_path.stat().st_size, onnx=onnx_path.name, onnx_sha256=file_sha256(onnx_path),
        strongly_typed=rtx or "STRONGLY_TYPED" in network_flags or tensorrt_major(version) >= 11,
        builder_flags=builder_flags,
        timing_cache={} if rtx else {"path": str(timing_cache_path), "reused": reused},
        family=family, target_compute_capabilities=target_list or [capability],
        layers=network_layers(trt, network))


def _set_targets(trt: Any, config: Any, targets: tuple[str, ...]) -> list[str]:
    """Compute capabilities "8.9" -> ComputeCapability.SM89 ("current" targets the GPU here)."""
    members = []
    for target in targets:
        name = "CURRENT" if target == "current" else "SM" + str(target).replace(".", "")
        member = getattr(trt.ComputeCapability, name, None)
        if member is None:
            known = [m for m in dir(trt.ComputeCapability) if m.startswith("SM")]
            raise TrtError(f"TensorRT for RTX {trt.__version__} cannot build for compute capability {target}",
                           f"use some of {', '.join(k[2:-1] + '.' + k[-1] for k in known)}, or current")
        members.append(member)
    if "current" in targets and len(targets) > 1:
        raise TrtError("compute capability 'current' must be the only target", "list either current or capabilities")
    config.num_compute_capabilities = len(members)
    for index, member in enumerate(members):
        config.set_compute_capability(member, index)
    return [str(t) for t in targets]


def network_layers(trt: Any, network: Any) -> dict:
    """What the parsed network holds before the builder fuses it: layer count, and per layer
    its type and the data types of its outputs (a strongly typed network fixes them)."""
    layers, counts = [], {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        outputs = [str(layer.get_output(j).dtype).split(".")[-1] for j in range(layer.num_outputs)]
        kind = str(layer.type).split(".")[-1]
        layers.append({"name": layer.name, "type": kind, "outputs": outputs})
        key = f"{kind}:{'/'.join(outputs)}"
        counts[key] = counts.get(key, 0) + 1
    return {"source": "network definition (before the builder's fusion)", "count": len(layers),
            "by_type_and_output": dict(sorted(counts.items(), key=lambda kv: -kv[1])), "layers": layers}


def _check_settings_version(settings: dict, version: str) -> None:
    wanted = "11" if tensorrt_major(version) >= 11 else "10"
    written = settings.get("tensorrt")
    if written is not None and str(written) != wanted:
        raise TrtError(f"these build settings are for TensorRT {written}, but TensorRT {version} is installed",
                       f"take the settings with settings_for(profile['tensorrt'], '{version}')")


def _member(trt: Any, enum_name: str, name: str, version: str) -> Any:
    # TensorRT 11 removed the weak-typing flags (FP16, INT8, ...): asking for one means the
    # settings were chosen for the other major version.
    member = getattr(getattr(trt, enum_name), name, None)
    if member is None:
        other = "10" if tensorrt_major(version) >= 11 else "11"
        raise TrtError(f"{enum_name}.{name} does not exist in TensorRT {version}: these build settings are for "
                       f"TensorRT {other}",
                       f"take the settings with settings_for(profile['tensorrt'], '{version}'), or re-run "
                       f"{PROFILE_STEP} to write settings for both versions")
    return member


def _parse(parser: Any, onnx_path: Path, version: str = "", family: str = "tensorrt") -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"node {error.node()}"
        # node_name/node_operator exist from TensorRT 8.6; older parsers only give the index
        extra = [str(getattr(error, attr)()) for attr in ("node_name", "node_operator") if hasattr(error, attr)]
        if any(extra):
            where += f" ({', '.join(e for e in extra if e)})"
        errors.append(f"{where}: {error.desc()} [{error.code()}]")
    listed = "; ".join(errors) if errors else "no details given"
    who = ("TensorRT for RTX" if family == "tensorrt-rtx" else "TensorRT") + (f" {version}" if version else "")
    raise TrtError(f"{who} could not parse {onnx_path.name}: {listed}",
                   "the model uses an operator or type this TensorRT cannot import; re-export it (another opset "
                   "in AG-DS-ONNXCONV-001) or use a newer TensorRT")


def _check_input(network: Any, profile: ShapeProfile, onnx_path: Path) -> None:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if profile.input_name not in names:
        raise TrtError(f"the profile is for input {profile.input_name!r}, but {onnx_path.name} has inputs {names}",
                       f"re-run {PROFILE_STEP} for this model")


def _add_profile(builder: Any, config: Any, profile: ShapeProfile) -> None:
    optimization = builder.create_optimization_profile()
    optimization.set_shape(profile.input_name, profile.min, profile.opt, profile.max)
    if config.add_optimization_profile(optimization) < 0:
        raise TrtError(f"TensorRT refused the optimisation profile {profile.as_dict()}",
                       f"check the shapes against the model's input; re-run {PROFILE_STEP}")


def _attach_timing_cache(config: Any, path: Path, log: logging.Logger | logging.LoggerAdapter) -> tuple[Any, bool]:
    """(cache, reused). A cache from another GPU or TensorRT is refused rather than mixed in:
    its timings would pick tactics for the wrong hardware."""
    data = path.read_bytes() if path.is_file() else b""
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except (RuntimeError, ValueError, TypeError) as exc:
            log.warning("timing cache %s cannot be read (%s); starting a new one", path, exc)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            log.info("reusing timing cache %s (%d bytes)", path, len(data))
            return cache, True
        if cache is not None:
            log.warning("timing cache %s is from another GPU or TensorRT version; starting a new one", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache, False
