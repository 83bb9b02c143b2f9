"""Build one TensorRT engine with the TensorRT Python API: parse the ONNX model, apply the
settings for this TensorRT major (profile.py), reuse the timing cache, write the engine and
return its record.

tensorrt is imported only when a build runs (or given, for tests), so this module imports
on any machine.
"""
from __future__ import annotations

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

_NOT_INSTALLED_HINT = "pip install tensorrt-cu13 (NVIDIA's wheels) on a CUDA machine, or use builder: trtexec"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise TrtError(f"the tensorrt Python package cannot be imported ({exc})", _NOT_INSTALLED_HINT) from exc
    return tensorrt


def gpu_identity(gpu: str | None = None, compute_capability: str | None = None) -> tuple[str, str]:
    """The given GPU name and capability, else what torch sees on device 0, else "unknown"."""
    if gpu is not None and compute_capability is not None:
        return gpu, compute_capability
    name, capability = "unknown", "unknown"
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            name, capability = torch.cuda.get_device_name(0), f"{major}.{minor}"
    except (ImportError, RuntimeError):   # no torch, or a CUDA that cannot start: the record says unknown
        pass
    return gpu or name, compute_capability or capability


def build_engine(onnx_path: Path, engine_path: Path, precision: str, settings: dict, timing_cache_path: Path,
                 log: logging.Logger | logging.LoggerAdapter, trt: Any = None, *, gpu: str | None = None,
                 compute_capability: str | None = None) -> EngineRecord:
    """`settings`: one precision's entry merged with the shared keys, i.e.
    {**settings_for(...), **settings_for(...)[precision]}."""
    trt = trt if trt is not None else import_tensorrt()
    onnx_path, engine_path, timing_cache_path = Path(onnx_path), Path(engine_path), Path(timing_cache_path)
    version = str(trt.__version__)
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
    _parse(parser, onnx_path)
    _check_input(network, profile, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings["workspace_bytes"]))
    for name in builder_flags:
        config.set_flag(_member(trt, "BuilderFlag", name, version))
    _add_profile(builder, config, profile)
    cache, reused = _attach_timing_cache(config, timing_cache_path, log)

    log.info("TensorRT %s: building the %s engine from %s (flags %s, network flags %s, batch %d..%d)",
             version, precision, onnx_path.name, builder_flags or "none", network_flags or "none",
             profile.min[0], profile.max[0])
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise TrtError(f"TensorRT {version} could not build the {precision} engine from {onnx_path.name}",
                       "the TensorRT messages above say why; a workspace too small for the tactics "
                       "(raise workspace_gb) or a model this GPU has no kernels for are the usual causes")
    write_atomically(engine_path, serialized)
    # tactics timed in this build make the next one faster; TensorRT adds them to the cache
    write_atomically(timing_cache_path, cache.serialize())

    gpu_name, capability = gpu_identity(gpu, compute_capability)
    return EngineRecord(
        engine=engine_path.name, precision=precision, builder="python-api", tensorrt_version=version,
        gpu=gpu_name, compute_capability=capability, profile=profile.as_dict(), build_seconds=round(seconds, 3),
        size_bytes=engine_path.stat().st_size, onnx=onnx_path.name, onnx_sha256=file_sha256(onnx_path),
        strongly_typed="STRONGLY_TYPED" in network_flags or tensorrt_major(version) >= 11,
        builder_flags=builder_flags, timing_cache={"path": str(timing_cache_path), "reused": reused})


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


def _parse(parser: Any, onnx_path: Path) -> None:
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
    raise TrtError(f"TensorRT could not parse {onnx_path.name}: {listed}",
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
