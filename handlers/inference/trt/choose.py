"""Which TensorRT builds the engines here: full TensorRT (the `tensorrt` package, for every
NVIDIA GPU, Hopper included), TensorRT for RTX (`tensorrt_rtx`: builds ahead of time without
a GPU, engines for RTX-class GPUs and the A100: compute capability 8.0, 8.6, 8.9, 12.x), or
the trtexec tool. Nothing here imports or runs them.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass

# "python-api" is the name older manifests used for full TensorRT's Python API
BUILDER_CHOICES = ("auto", "tensorrt", "tensorrt-rtx", "trtexec", "python-api")
FAMILY_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
NOT_INSTALLED = ("TensorRT not installed: neither tensorrt, nor TensorRT for RTX (tensorrt_rtx), nor trtexec "
                 "was found")
INSTALL_HINT = ("pip install 'atlas-runner[tensorrt-rtx]' (TensorRT for RTX: builds here, even without a GPU; "
                "its engines run on RTX GPUs and the A100), or pip install tensorrt-cu13 on a data-centre GPU "
                "such as the H100/H200")
RTX_NEEDS_NO_GPU = "TensorRT for RTX builds ahead of time on the CPU"


@dataclass(frozen=True)
class Found:
    tensorrt: bool = False
    tensorrt_rtx: bool = False
    trtexec: str | None = None

    def has(self, family: str) -> bool:
        return {"tensorrt": self.tensorrt, "tensorrt-rtx": self.tensorrt_rtx}.get(family, False)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def detect() -> Found:
    return Found(_importable("tensorrt"), _importable("tensorrt_rtx"), shutil.which("trtexec"))


def choose_builder(found: Found, prefer: str = "auto", has_gpu: bool = True) -> tuple[str | None, str, str]:
    """(builder or None, why, hint). auto: full TensorRT when it imports and there is a GPU to
    build for (its builder times kernels on the GPU), else TensorRT for RTX (no GPU needed),
    else trtexec (a GPU needed too)."""
    if prefer not in BUILDER_CHOICES:
        return None, f"unknown builder {prefer!r}", f"use builder: {', '.join(BUILDER_CHOICES[:4])}"
    prefer = "tensorrt" if prefer == "python-api" else prefer
    if prefer != "auto":
        return _asked(found, prefer, has_gpu)
    if found.tensorrt and has_gpu:
        return "tensorrt", "the tensorrt Python package is installed", ""
    if found.tensorrt_rtx:
        why = "TensorRT for RTX (tensorrt_rtx) is installed" + ("" if has_gpu else f"; {RTX_NEEDS_NO_GPU}")
        if found.tensorrt and not has_gpu:
            why = "full TensorRT needs a GPU to build, none is here; " + why
        return "tensorrt-rtx", why, ""
    if found.trtexec and has_gpu:
        return "trtexec", f"no TensorRT Python package; using trtexec at {found.trtexec}", ""
    if found.tensorrt or found.trtexec:
        return None, "no CUDA device: full TensorRT and trtexec build on the GPU the engine is for", \
            "run on the GPU machine, or pip install 'atlas-runner[tensorrt-rtx]' to build RTX engines here"
    return None, NOT_INSTALLED, INSTALL_HINT


def _asked(found: Found, prefer: str, has_gpu: bool) -> tuple[str | None, str, str]:
    if prefer == "trtexec":
        if not found.trtexec:
            return None, "builder: trtexec asked for, but trtexec is not on PATH", \
                "add TensorRT's bin folder to PATH, or use builder: auto"
        if not has_gpu:
            return None, "builder: trtexec asked for, but there is no CUDA device to build on", \
                "run on the GPU machine, or use builder: tensorrt-rtx"
        return "trtexec", f"builder: trtexec (asked for) at {found.trtexec}", ""
    if not found.has(prefer):
        package = "tensorrt-cu13" if prefer == "tensorrt" else "'atlas-runner[tensorrt-rtx]'"
        return None, f"builder: {prefer} asked for, but {FAMILY_MODULES[prefer]} is not installed", \
            f"pip install {package}, or use builder: auto"
    if prefer == "tensorrt" and not has_gpu:
        return None, "builder: tensorrt asked for, but there is no CUDA device: full TensorRT builds on the GPU", \
            "run on the GPU machine, or use builder: tensorrt-rtx (builds without a GPU)"
    return prefer, f"builder: {prefer} (asked for)", ""
