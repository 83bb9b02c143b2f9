"""Which TensorRT builder this machine has: the Python API, else the trtexec tool."""
from __future__ import annotations

import importlib.util
import shutil

BUILDER_CHOICES = ("auto", "python-api", "trtexec")
NOT_INSTALLED = "TensorRT not installed: neither the tensorrt Python package nor trtexec was found"
INSTALL_HINT = ("pip install tensorrt-cu13 (NVIDIA's wheels; tensorrt-cu12 for CUDA 12) on a CUDA machine, "
                "or put TensorRT's bin folder (with trtexec) on PATH")


def detect() -> tuple[bool, str | None]:
    """(the tensorrt package can be imported, trtexec's path); neither is imported or run."""
    try:
        has_api = importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        has_api = False
    return has_api, shutil.which("trtexec")


def choose_builder(has_python_api: bool, trtexec_path: str | None,
                   prefer: str = "auto") -> tuple[str | None, str, str]:
    """(builder or None, why, hint): the Python API when it imports, else trtexec."""
    if prefer not in BUILDER_CHOICES:
        return None, f"unknown builder {prefer!r}", f"use builder: {', '.join(BUILDER_CHOICES)}"
    if prefer == "python-api":
        if has_python_api:
            return "python-api", "builder: python-api (asked for)", ""
        return None, "builder: python-api asked for, but the tensorrt Python package is not installed", \
            "pip install tensorrt-cu13, or use builder: auto" + (" (trtexec is here)" if trtexec_path else "")
    if prefer == "trtexec":
        if trtexec_path:
            return "trtexec", f"builder: trtexec (asked for) at {trtexec_path}", ""
        return None, "builder: trtexec asked for, but trtexec is not on PATH", \
            "add TensorRT's bin folder to PATH, or use builder: auto" + \
            (" (the Python API is here)" if has_python_api else "")
    if has_python_api:
        return "python-api", "the tensorrt Python package is installed", ""
    if trtexec_path:
        return "trtexec", f"no tensorrt Python package; using trtexec at {trtexec_path}", ""
    return None, NOT_INSTALLED, INSTALL_HINT
