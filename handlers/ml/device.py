"""Where training runs and how fast it may go there: device, mixed precision, channels_last,
cuDNN autotuning and DataLoader workers, decided once from the machine and the params."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from handlers.ml.errors import DeviceError




@dataclass(frozen=True)
class Placement:
    device: torch.device
    amp_dtype: torch.dtype | None     # autocast dtype, None = full precision
    channels_last: bool
    workers: int
    pin_memory: bool
    note: str = ""                    # e.g. the CPU-fallback finding

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16 AMP", torch.float16: "fp16 AMP"}[self.amp_dtype]
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "CPU"
        return (f"{self.device} ({name}), {amp}, channels_last={self.channels_last}, "
                f"workers={self.workers}, pin_memory={self.pin_memory}")


CPU_FALLBACK = "no CUDA device: trained on the CPU"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def auto_workers(is_cuda: bool, processes_per_node: int = 1) -> int:
    """Workers per process: on a GPU, enough cores to keep it fed (leaving one per process
    for the training loop itself); on the CPU, decoding competes with the math, so few."""
    cores = max(1, cpu_count() // max(1, processes_per_node))
    if is_cuda:
        return max(1, min(12, cores - 1))
    return min(4, cores // 4)


def place(device: str = "auto", amp: str = "auto", channels_last: str | bool = "auto",
          workers: int | str = "auto", local_rank: int = 0, processes_per_node: int = 1) -> Placement:
    """Pick the device and the speed settings. `device`: auto | cuda | cpu."""
    note = ""
    if device == "auto":
        use_cuda = torch.cuda.is_available()
        note = "" if use_cuda else CPU_FALLBACK
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device: cuda was asked for, but torch sees no CUDA device",
                              "run `atlas env` to see why, or set device: auto to fall back to the CPU")
        use_cuda = True
    elif device == "cpu":
        use_cuda = False
    else:
        raise DeviceError(f"unknown device {device!r}", "use auto, cuda or cpu")
    if use_cuda:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True          # fixed input size: autotune once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    n_workers = auto_workers(use_cuda, processes_per_node) if workers == "auto" else int(workers)
    if use_cuda and n_workers:
        # the GPU does the math; the main process only launches kernels and collates. Its
        # default of one OpenMP thread per core would fight the decoding workers for the CPU.
        torch.set_num_threads(max(1, cpu_count() // max(1, processes_per_node) - n_workers))
    return Placement(dev, _amp_dtype(dev, amp), _channels_last(dev, channels_last), n_workers,
                     pin_memory=use_cuda, note=note)


def _amp_dtype(dev: torch.device, amp: str) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and dev.type != "cuda"):
        return None     # CPU autocast is slower than fp32 on most CPUs
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise DeviceError(f"unknown amp {amp!r}", "use auto, bf16, fp16 or off")


def _channels_last(dev: torch.device, value: str | bool) -> bool:
    if value == "auto":
        return dev.type == "cuda"     # tensor cores want NHWC; on CPU it rarely helps
    return bool(value)
