"""Which TensorRT to install for the GPUs found: TensorRT for RTX on RTX-class GPUs (GeForce,
RTX workstation cards: compute capability 8.6, 8.9, 12.x, on Windows and Linux), full
TensorRT on data-centre GPUs (A100 8.0, H100/H200 9.0, Blackwell data-centre 10.x, and the
data-centre Ampere/Ada cards A10, L4, L40) and on older GPUs.

TensorRT for RTX 1.7's runtime lists 8.0, 8.6, 8.9, 12.0, 12.1 and newer as the capabilities
it runs on (measured on an H200, whose 9.0 it refuses); its builder needs no GPU. Full
TensorRT runs everywhere from Turing on and builds on the GPU it targets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

RTX_CAPABILITIES = ("8.6", "8.9")          # plus every 12.x (consumer Blackwell)
RTX_NAMES = ("RTX", "GEFORCE", "QUADRO", "TITAN")


@dataclass(frozen=True)
class TensorRtChoice:
    family: str                  # "tensorrt-rtx" | "tensorrt"
    package: str                 # the pip package for this machine's CUDA major
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def _rtx_class(name: str, capability: str) -> bool:
    cc_ok = capability in RTX_CAPABILITIES or capability.startswith("12.")
    return cc_ok and any(word in name.upper() for word in RTX_NAMES)


def choose_tensorrt(gpus: list[tuple[str, str]], driver_cuda: str | None) -> TensorRtChoice:
    """gpus: (name, compute capability) each; driver_cuda: the newest CUDA the driver runs."""
    major = "12" if driver_cuda and driver_cuda.split(".")[0] == "12" else "13"
    rtx, full = f"tensorrt-rtx-cu{major}", f"tensorrt-cu{major}"
    if not gpus:
        return TensorRtChoice("tensorrt-rtx", rtx, "no NVIDIA GPU here: TensorRT for RTX still builds engines ahead "
                              "of time (for RTX GPUs and the A100); full TensorRT builds only on the GPU it targets")
    listed = ", ".join(f"{name} ({cc})" for name, cc in gpus)
    if all(_rtx_class(name, cc) for name, cc in gpus):
        return TensorRtChoice("tensorrt-rtx", rtx, f"{listed}: RTX-class, which TensorRT for RTX is made for (small "
                              "install, engines compiled for the exact GPU at first load)")
    return TensorRtChoice("tensorrt", full, f"{listed}: data-centre or older GPU; full TensorRT supports it "
                          "(TensorRT for RTX 1.7 runs only on compute capability 8.0, 8.6, 8.9 and 12.x)")
