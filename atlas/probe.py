"""The capability probe: what this machine can run, found without importing frameworks.

Everything here must stay fast on a machine without a GPU: package versions come from
the names of the installed metadata folders (NAME-VERSION.dist-info, what
importlib.metadata reads, without its 15-40 ms import on every `atlas plan`), the GPU
list from `nvidia-smi` when it exists, the driver's CUDA version from libcuda through
ctypes. torch is never imported.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import shutil
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

# capability -> (reason when missing, hint). `requires:` in manifests uses these names.
CAPABILITIES: dict[str, tuple[str, str]] = {
    "cuda": ("no CUDA device", "run on a machine with an NVIDIA GPU and driver; `atlas env` shows what was found"),
    "multi_gpu": ("fewer than 2 CUDA devices", "run on a machine with 2 or more GPUs, or lower nproc_per_node"),
    "torch": ("PyTorch not installed", "pip install torch torchvision"),
    "torchvision": ("torchvision not installed", "pip install torch torchvision"),
    "onnx": ("onnx not installed", "pip install onnx (or pip install 'atlas-runner[onnx]')"),
    "onnxruntime": ("ONNX Runtime not installed", "pip install onnxruntime (or onnxruntime-gpu)"),
    "tensorrt": ("TensorRT not installed", "pip install 'atlas-runner[tensorrt-rtx]' (TensorRT for RTX builds without "
                 "a GPU), or tensorrt-cu13 on a data-centre GPU, or put trtexec on PATH"),
    "trtexec": ("trtexec not on PATH", "install TensorRT and add its bin/ folder to PATH"),
    "dali": ("NVIDIA DALI not installed", "pip install nvidia-dali-cuda130 (or -cuda120 for CUDA 12)"),
    "cupy": ("CuPy not installed", "pip install cupy-cuda13x (or cupy-cuda12x for CUDA 12)"),
    "pycuda": ("PyCUDA not installed", "pip install pycuda"),
    "tensorflow": ("TensorFlow not installed", "pip install tensorflow[and-cuda]"),
    "nvcc": ("CUDA toolkit (nvcc) not on PATH", "install the CUDA toolkit, or add its bin/ folder to PATH"),
}

# import name -> distributions that provide it (first installed one wins)
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
    "tensorrt_rtx": ("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx"),
    "nvidia.dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
    "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"),
    "pycuda": ("pycuda",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
}
_CAPABILITY_PACKAGE = {"torch": "torch", "torchvision": "torchvision", "onnx": "onnx", "onnxruntime": "onnxruntime",
                       "tensorrt": "tensorrt", "dali": "nvidia.dali", "cupy": "cupy", "pycuda": "pycuda",
                       "tensorflow": "tensorflow"}
CUDNN_DISTS = ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", "nvidia-cudnn-cu11")


WHEEL_MAJORS = ("12", "13")   # the CUDA majors NVIDIA builds DALI and CuPy wheels for


def wheel_major(major: str | None) -> str:
    """The wheel family for a CUDA major: 13 when unknown (today's default), the newest for
    a newer driver (it runs older CUDA), 12 for anything older."""
    if major in WHEEL_MAJORS:
        return major
    if major is None or not major.isdigit():
        return WHEEL_MAJORS[-1]
    return WHEEL_MAJORS[-1] if int(major) > int(WHEEL_MAJORS[-1]) else WHEEL_MAJORS[0]


def dali_wheel(major: str) -> str:
    return f"nvidia-dali-cuda{major}0"


def cupy_wheel(major: str) -> str:
    return f"cupy-cuda{major}x"


def detected_cuda_major() -> str | None:
    """The driver's CUDA major (libcuda), else the installed torch's CUDA build; no import."""
    version = cuda_driver_version() or torch_cuda_build()
    return version.split(".")[0] if version else None


def dali_install_hint(major: str | None) -> str:
    m = wheel_major(major)
    return f"pip install {dali_wheel(m)} (CUDA {m}; or pip install 'atlas-runner[gpu-cu{m}]'); DALI needs Linux and an NVIDIA GPU"


def cupy_install_hint(major: str | None) -> str:
    m = wheel_major(major)
    return f"pip install {cupy_wheel(m)} (CUDA {m}; or pip install 'atlas-runner[gpu-cu{m}]')"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int
    compute_capability: str
    driver: str


@dataclass
class Probe:
    gpus: list[Gpu] = field(default_factory=list)
    driver: str | None = None
    cuda_driver: str | None = None        # highest CUDA version the driver supports
    nvcc: str | None = None               # CUDA toolkit on PATH
    torch_cuda: str | None = None         # CUDA runtime the installed torch was built with
    cudnn: str | None = None
    packages: dict[str, str | None] = field(default_factory=dict)
    trtexec: str | None = None
    nvidia_smi_error: str | None = None

    def has(self, capability: str) -> bool:
        if capability == "cuda":
            return bool(self.gpus)
        if capability == "multi_gpu":
            return len(self.gpus) >= 2
        if capability == "trtexec":
            return self.trtexec is not None
        if capability == "nvcc":
            return self.nvcc is not None
        if capability == "tensorrt":     # any builder: full TensorRT, TensorRT for RTX, or trtexec
            return any(self.packages.get(p) is not None for p in ("tensorrt", "tensorrt_rtx")) or self.trtexec is not None
        return self.packages.get(_CAPABILITY_PACKAGE[capability]) is not None

    def capabilities(self) -> set[str]:
        return {c for c in CAPABILITIES if self.has(c)}

    def cuda_major(self) -> str | None:
        """The CUDA major this machine's wheels must be built for: the driver's, else the
        installed torch's CUDA build."""
        version = self.cuda_driver or self.torch_cuda
        return version.split(".")[0] if version else None

    def hints(self) -> dict[str, str]:
        """Install hints naming the wheels for this machine's CUDA major (DALI and CuPy come
        one per major); the other capabilities keep CAPABILITIES' text."""
        major = self.cuda_major()
        return {"dali": dali_install_hint(major), "cupy": cupy_install_hint(major)}

    def gpu_environment(self) -> dict:
        """The part of the environment a GPU step's results depend on (fingerprinted)."""
        return {"gpus": sorted({g.name for g in self.gpus}), "driver": self.driver,
                "cuda_driver": self.cuda_driver, "torch": self.packages.get("torch"),
                "torch_cuda": self.torch_cuda, "cudnn": self.cudnn,
                "tensorrt": self.packages.get("tensorrt"), "tensorrt_rtx": self.packages.get("tensorrt_rtx")}

    def as_dict(self) -> dict:
        data = asdict(self)
        data["capabilities"] = sorted(self.capabilities())
        return data


def package_version(import_name: str) -> str | None:
    """Version of an importable package, read from metadata without importing it."""
    try:
        if importlib.util.find_spec(import_name) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in PACKAGES.get(import_name, (import_name,)):
        version = dist_version(dist)
        if version is not None:
            return version
    return "unknown"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=1)
def _installed() -> dict[str, str | Path]:
    """Normalised distribution name -> its version (or the PKG-INFO that holds it), for
    every distribution on sys.path; the first one found wins, as for imports."""
    found: dict[str, str | Path] = {}
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            stem, dot, kind = name.rpartition(".")
            if kind not in ("dist-info", "egg-info") or not dot:
                continue
            dist, _, rest = stem.partition("-")
            version = rest.split("-")[0]   # an egg's name may go on with -py3.11
            found.setdefault(_normal(dist), version or Path(folder or ".", name))
    return found


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    found = _installed().get(_normal(dist))
    if isinstance(found, Path):         # NAME.egg-info: the version is inside
        info = found / "PKG-INFO" if found.is_dir() else found
        try:
            match = re.search(r"^Version:\s*(\S+)", info.read_text(errors="replace"), re.M)
        except OSError:
            return "unknown"
        return match.group(1) if match else "unknown"
    return found


def torch_cuda_build() -> str | None:
    """CUDA version torch was built with, read from torch/version.py (no import)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    version_py = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([\d.]+)['\"]", version_py.read_text(), re.M)
    except OSError:
        return None
    return match.group(1) if match else None


def cudnn_version() -> str | None:
    for dist in CUDNN_DISTS:
        version = dist_version(dist)
        if version is not None:
            return version
    return None


def cuda_driver_version() -> str | None:
    """cuDriverGetVersion through libcuda: the newest CUDA the driver can run."""
    import ctypes           # on first use: the probe asks only where nvidia-smi saw a GPU

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value == 0:
        return None
    return f"{version.value // 1000}.{(version.value % 1000) // 10}"


def query_gpus(timeout: float = 10.0) -> tuple[list[Gpu], str | None]:
    """GPUs through nvidia-smi; ([], reason) when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    import subprocess               # here: a machine without nvidia-smi (every plan there) needs none

    fields = "index,name,memory.total,compute_cap,driver_version"
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if out.returncode != 0:
        return [], f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}"
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        index, name, memory, cc, driver = parts
        try:
            gpus.append(Gpu(int(index), name, int(float(memory)), cc, driver))
        except ValueError:
            continue
    return gpus, None


def nvcc_version() -> str | None:
    exe = shutil.which("nvcc")
    if exe is None:
        return None
    import subprocess

    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"release (\d+\.\d+)", out.stdout)
    return match.group(1) if match else None


def _gpu_fields(found: Probe) -> dict[str, Any]:
    gpus, smi_error = query_gpus()
    return {"gpus": gpus, "driver": gpus[0].driver if gpus else None, "nvidia_smi_error": smi_error}


# field -> how this machine's value is found (the GPU fields come from one nvidia-smi call)
_FINDERS: dict[str, Callable[[Probe], dict[str, Any]]] = {
    "gpus": _gpu_fields, "driver": _gpu_fields, "nvidia_smi_error": _gpu_fields,
    "cuda_driver": lambda found: {"cuda_driver": cuda_driver_version() if found.gpus else None},
    "nvcc": lambda found: {"nvcc": nvcc_version()},
    "torch_cuda": lambda found: {"torch_cuda": torch_cuda_build()},
    "cudnn": lambda found: {"cudnn": cudnn_version()},
    "packages": lambda found: {"packages": {name: package_version(name) for name in PACKAGES}},
    "trtexec": lambda found: {"trtexec": shutil.which("trtexec")},
}


class _FoundOnRead:
    """A field of MachineProbe, found the first time it is read and kept in the instance
    (as functools.cached_property; a field with a default is also a class attribute of
    Probe, which this shadows)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Probe | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        for key, value in _FINDERS[self.name](instance).items():
            instance.__dict__[key] = value
        return instance.__dict__[self.name]


class MachineProbe(Probe):
    """This machine's Probe, each field found the first time something reads it: `atlas
    plan` of steps that require nothing runs no `nvcc --version` and looks up no package
    (12 ms of a 0.2 s plan on a machine with the CUDA toolkit). Reading every field (a
    run records them all, `atlas env` shows them) finds what `Probe` would hold."""

    def __init__(self) -> None:          # nothing found yet: no dataclass __init__
        pass


for _name in _FINDERS:
    setattr(MachineProbe, _name, _FoundOnRead(_name))


class HasCapability:
    """`capability in it`: does this machine have it, its fields found when first asked
    (the planner's test; Probe.capabilities() finds them all)."""

    def __init__(self, found: Probe) -> None:
        self._probe = found

    def __contains__(self, capability: object) -> bool:
        return capability in CAPABILITIES and self._probe.has(str(capability))


class Hints(Mapping):
    """Probe.hints(), worked out the first time a skipped step needs one."""

    def __init__(self, found: Probe) -> None:
        self._probe, self._hints = found, None

    def _all(self) -> dict[str, str]:
        if self._hints is None:
            self._hints = self._probe.hints()
        return self._hints

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


@lru_cache(maxsize=1)
def probe() -> Probe:
    return MachineProbe()
