"""Build one engine with NVIDIA's trtexec tool: the fallback where only TensorRT's command
line tools are installed. Same settings, same timing cache, same record as the Python API."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from atlas.fingerprint import file_sha256
from handlers.inference.trt.errors import TrtError
from handlers.inference.trt.profile import PROFILE_STEP, ShapeProfile, tensorrt_major
from handlers.inference.trt.record import EngineRecord

KEEP_LINES = 40
HEAD_LINES = 5
# what trtexec logs when it read a timing cache (TensorRT's samples/common loadTimingCacheFile)
_CACHE_LOADED = re.compile(r"Loaded (\d+) bytes of timing cache from")
# set by trtexec_command from the settings' current values, not from the stored arguments
_DERIVED = ("--memPoolSize", "--minShapes", "--optShapes", "--maxShapes", "--timingCacheFile", "--onnx",
            "--saveEngine", "--skipInference")


def trtexec_command(trtexec: str, onnx_path: Path, engine_path: Path, settings: dict,
                    timing_cache_path: Path) -> list[str]:
    """`settings`: one precision's entry merged with the shared keys (as for build_engine)."""
    profile = ShapeProfile.from_dict(settings["profile"])
    kept = [arg for arg in settings.get("trtexec_args", []) if arg.split("=", 1)[0] not in _DERIVED]
    return [str(trtexec), f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
            f"--memPoolSize=workspace:{int(settings['workspace_bytes']) >> 20}M",
            *(f"{flag}={shape}" for flag, shape in profile.trtexec_shapes().items()),
            f"--timingCacheFile={timing_cache_path}",
            # build only: the benchmark step times the engine, the same way as every other backend
            "--skipInference", *kept]


def parse_trtexec_version(text: str) -> str | None:
    """"[TensorRT v101300]" -> "10.13.0" (8.x wrote v8601 for 8.6.1); or a "TensorRT version: X.Y.Z" line."""
    match = re.search(r"TensorRT version:?\s*(\d+\.\d+(?:\.\d+)*)", text)
    if match:
        return match.group(1)
    match = re.search(r"\[TensorRT v(\d+)\]", text)
    if not match:
        return None
    number = int(match.group(1))
    if number >= 100000:   # major*10000 + minor*100 + patch, from TensorRT 10
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    if number >= 1000:     # major*1000 + minor*100 + patch, up to TensorRT 9
        return f"{number // 1000}.{number // 100 % 10}.{number % 100}"
    return None


def trtexec_version(trtexec: str, timeout: float = 60) -> str | None:
    """The TensorRT version trtexec belongs to, from the banner `trtexec --help` prints; None
    when it cannot be run or read."""
    try:
        done = subprocess.run([str(trtexec), "--help"], capture_output=True, text=True, errors="replace",
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_trtexec_version((done.stdout or "") + "\n" + (done.stderr or ""))


def build_with_trtexec(trtexec: str, onnx_path: Path, engine_path: Path, precision: str, settings: dict,
                       timing_cache_path: Path, log: logging.Logger | logging.LoggerAdapter, *,
                       gpu: str | None = None, compute_capability: str | None = None, timeout: float = 3600,
                       version: str | None = None) -> EngineRecord:
    from handlers.inference.trt.builder import gpu_identity

    onnx_path, engine_path, timing_cache_path = Path(onnx_path), Path(engine_path), Path(timing_cache_path)
    if not onnx_path.is_file():
        raise TrtError(f"ONNX model {onnx_path} not found", f"re-run {PROFILE_STEP} (and AG-DS-ONNXCONV-001)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
    # trtexec writes the engine itself: into a side file, renamed once it is whole
    partial = engine_path.with_name(f".{engine_path.name}.partial")
    partial.unlink(missing_ok=True)
    command = trtexec_command(trtexec, onnx_path, partial, settings, timing_cache_path)
    log.info("building the %s engine: %s", precision, " ".join(command))

    started = time.perf_counter()
    try:
        code, head, tail, timed_out, loaded = _run(command, timeout, log)
        seconds = time.perf_counter() - started
        output = "\n".join(tail)
        if timed_out:
            raise TrtError(f"trtexec ran past {timeout:.0f}s building the {precision} engine; its last output:\n"
                           f"{output}", "raise trtexec_timeout_s, or build with the Python API")
        if code != 0:
            raise TrtError(f"trtexec failed (exit {code}) building the {precision} engine from {onnx_path.name}; "
                           f"its last output:\n{output}",
                           "the lines above say why; an unsupported operator, an unknown option for this "
                           "trtexec, or a workspace too small (workspace_gb) are the usual causes")
        if not partial.is_file() or partial.stat().st_size == 0:
            raise TrtError(f"trtexec exited 0 but wrote no engine for {precision}; its last output:\n{output}",
                           "run the command above by hand to see the whole log")
        os.replace(partial, engine_path)
    finally:
        partial.unlink(missing_ok=True)

    # the banner with the version is trtexec's first line
    version = version or parse_trtexec_version("\n".join(head + tail)) or trtexec_version(trtexec) or "unknown"
    builder_flags = list(settings.get("builder_flags", []))
    gpu_name, capability = gpu_identity(gpu, compute_capability)
    strongly_typed = "--stronglyTyped" in command or (version != "unknown" and tensorrt_major(version) >= 11)
    return EngineRecord(
        engine=engine_path.name, precision=precision, builder="trtexec", tensorrt_version=version, gpu=gpu_name,
        compute_capability=capability, profile=dict(settings["profile"]), build_seconds=round(seconds, 3),
        size_bytes=engine_path.stat().st_size, onnx=onnx_path.name, onnx_sha256=file_sha256(onnx_path),
        strongly_typed=strongly_typed, builder_flags=builder_flags,
        # reused only when trtexec says it read the cache, not because the file exists
        timing_cache={"path": str(timing_cache_path), "reused": loaded > 0, "loaded_bytes": loaded})


def _run(command: list[str], timeout: float,
         log: logging.Logger | logging.LoggerAdapter) -> tuple[int, list[str], list[str], bool, int]:
    """(exit code, first lines, last lines, timed out, timing-cache bytes trtexec says it
    loaded): the output goes to the debug log as it comes; the first lines hold the version
    banner, the last ones the reason for a failure."""
    loaded = 0
    head: list[str] = []
    tail: deque[str] = deque(maxlen=KEEP_LINES)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", bufsize=1)
    except OSError as exc:
        raise TrtError(f"cannot run {command[0]}: {exc}", "check that trtexec is installed and executable") from exc
    expired = threading.Event()

    def stop() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, stop)
    timer.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            if len(head) < HEAD_LINES:
                head.append(line)
            tail.append(line)
            found = _CACHE_LOADED.search(line)
            if found:
                loaded = int(found.group(1))
            log.debug("trtexec: %s", line)
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, head, list(tail), expired.is_set(), loaded
