"""Which PyTorch CUDA build runs on which NVIDIA driver: tables and decisions, no I/O.

The rule that matters: a pip/uv PyTorch wheel bundles its own CUDA runtime and cuDNN, so
the only thing on the machine that must match is the NVIDIA *driver*. The CUDA toolkit
(nvcc) is irrelevant to which wheel to install; it only matters to compile extensions.

Sources (re-read when a new CUDA or PyTorch release appears):
- NVIDIA CUDA Toolkit release notes: "CUDA Toolkit and Corresponding Driver Versions"
  (each toolkit's own driver) and the minor-version-compatibility minimum per family.
- PyTorch RELEASE.md: channels per release, last release per channel, Python range,
  GPU architectures in each build (cu128 and newer dropped Maxwell, Pascal and Volta).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

OS = Literal["linux", "windows"]
Level = Literal["problem", "warning", "info", "ok"]
Version = tuple[int, ...]

NO_GPU = "no NVIDIA GPU/driver found: writing the CPU variant"

# Minor-version compatibility: any build of a CUDA major runs on drivers at least this new.
FAMILY_FLOOR: dict[int, dict[str, str]] = {
    11: {"linux": "450.80.02", "windows": "452.39"},
    12: {"linux": "525.60.13", "windows": "527.41"},
    13: {"linux": "580.65.06", "windows": "580.88"},
}


@dataclass(frozen=True)
class Channel:
    name: str
    cuda: str | None                  # CUDA runtime bundled in the wheels; None for cpu
    native_linux: str | None = None   # the toolkit's own driver: full support, no caveats
    native_windows: str | None = None
    last_torch: str | None = None     # last PyTorch release built for it; None = still published
    max_python: str | None = None     # newest Python that last release supports
    min_cc: str | None = None         # GPU compute capabilities in the build
    max_cc: str | None = None


CHANNELS: dict[str, Channel] = {c.name: c for c in (
    Channel("cpu", None),
    Channel("cu118", "11.8", "520.61.05", "520.06", "2.7", "3.13", "3.7", "9.0"),
    Channel("cu121", "12.1", "530.30.02", "531.14", "2.5", "3.12", "5.0", "9.0"),
    Channel("cu124", "12.4", "550.54.14", "551.61", "2.6", "3.13", "5.0", "9.0"),
    Channel("cu126", "12.6", "560.28.03", "560.76", None, None, "5.0", "9.0"),
    Channel("cu128", "12.8", "570.26", "570.65", "2.11", "3.14", "7.5", "12.0"),
    Channel("cu129", "12.9", "575.51.03", "576.02", "2.8", "3.13", "7.5", "12.0"),
    Channel("cu130", "13.0", "580.65.06", "580.88", None, None, "7.5", "12.0"),
    # NVIDIA lists no Windows toolkit driver for 13.2; the 13.x floor applies there.
    Channel("cu132", "13.2", "595.45.04", None, None, None, "7.5", "12.0"),
)}
GPU_CHANNELS: tuple[Channel, ...] = tuple(c for c in CHANNELS.values() if c.cuda)


def parse_version(text: str | None) -> Version | None:
    """'580.65.06' -> (580, 65, 6); None when there is no number in it."""
    numbers = re.findall(r"\d+", text or "")
    return tuple(int(n) for n in numbers) if numbers else None


def _mm(text: str | None) -> Version | None:
    """major.minor only: CUDA '12.4.1' and '12.4' are the same channel."""
    version = parse_version(text)
    return version[:2] if version else None


def channel_for_cuda(cuda: str | None) -> Channel | None:
    return next((c for c in GPU_CHANNELS if _mm(c.cuda) == _mm(cuda)), None) if cuda else None


def family_floor(cuda: str | None, os: OS) -> str | None:
    version = parse_version(cuda)
    return FAMILY_FLOOR.get(version[0], {}).get(os) if version else None


def native_driver(channel: Channel, os: OS) -> str | None:
    return channel.native_windows if os == "windows" else channel.native_linux


def driver_cuda_from_version(driver_version: str | None, os: OS) -> str | None:
    """Lower bound of the CUDA a driver supports, from the toolkits' own drivers."""
    dv = parse_version(driver_version)
    if dv is None:
        return None
    native = [c.cuda for c in GPU_CHANNELS if (nd := parse_version(native_driver(c, os))) and dv >= nd]
    return native[-1] if native else None


def runs_on(cuda: str | None, driver_cuda: str | None, driver_version: str | None, os: OS) -> str | None:
    """How a build for `cuda` runs on this driver: 'native', 'minor-version' or None (it doesn't)."""
    if cuda is None:
        return "native"
    build, dc, dv = _mm(cuda), _mm(driver_cuda), parse_version(driver_version)
    floor = parse_version(family_floor(cuda, os))
    if dv is not None and (floor is None or dv < floor):
        return None
    if dc is None:
        dc = _mm(driver_cuda_from_version(driver_version, os))
    if dc is not None and dc >= build:
        return "native"
    # Same major, older minor: allowed when the driver meets the family floor (checked above).
    if dv is not None and (dc is None or dc[0] == build[0]):
        return "minor-version"
    return None


def supports_cc(channel: Channel, cc: str | None) -> bool | None:
    """Does the build carry kernels for this GPU? None when unknown."""
    gpu, low, high = _mm(cc), _mm(channel.min_cc), _mm(channel.max_cc)
    if gpu is None or low is None or high is None:
        return None
    # Within a major, sm_80 kernels run on 8.6/8.9: only the major bounds the top.
    return gpu >= low and gpu[0] <= high[0]


@dataclass(frozen=True)
class Choice:
    channel: str
    cuda: str | None
    reason: str
    compat: Literal["native", "minor-version", "cpu", "unsupported"]
    requested: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _retired(channel: Channel) -> str:
    return (f"PyTorch stopped publishing {channel.name} builds after {channel.last_torch}"
            if channel.last_torch else "")


def _rank(fit: tuple[str, Channel]) -> tuple:
    """Sort key, best first: native before minor-version; still published before retired
    (it gets current PyTorch); newest CUDA major; within a major the retired channel whose
    last release is newest (cu128 reached 2.11, cu129 only 2.8); then newest CUDA."""
    how, channel = fit
    cuda = _mm(channel.cuda)
    last = [-n for n in parse_version(channel.last_torch)] if channel.last_torch else []
    return how != "native", channel.last_torch is not None, -cuda[0], last, -cuda[1]


def pick_channel(driver_cuda: str | None, driver_version: str | None, os: OS,
                 compute_capabilities: Sequence[str] = ()) -> Choice:
    """The PyTorch channel to install for this driver (and GPUs), with the reason in words."""
    if not driver_cuda and not driver_version:
        return Choice("cpu", None, "no NVIDIA driver found: the CPU build is the only one that runs here", "cpu")
    fits, no_kernels = [], []
    for channel in reversed(GPU_CHANNELS):
        how = runs_on(channel.cuda, driver_cuda, driver_version, os)
        if how is None:
            continue
        if any(supports_cc(channel, cc) is False for cc in compute_capabilities):
            no_kernels.append(channel.name)
            continue
        fits.append((how, channel))
    driver = f"driver {driver_version}" if driver_version else "the driver"
    supports = f"supports CUDA {driver_cuda}" if driver_cuda else "was found"
    if not fits:
        oldest = GPU_CHANNELS[0]
        why = (f"no channel that runs on it has kernels for compute capability {', '.join(compute_capabilities)}"
               if no_kernels else
               f"it is older than every PyTorch CUDA channel ({oldest.name} needs >= {family_floor(oldest.cuda, os)} on {os})")
        return Choice("cpu", None, f"{driver} {supports}, but {why}: CPU build until the driver is updated", "cpu")
    how, best = min(fits, key=_rank)
    if how == "native":
        skipped = [c for h, c in fits if h == "native" and _mm(c.cuda) > _mm(best.cuda)]
        reason = f"{driver} {supports}; {best.name} (CUDA {best.cuda}) is the newest PyTorch channel it runs natively"
        if skipped:
            reason = (f"{driver} {supports}; {best.name} (CUDA {best.cuda}) is the channel it runs natively with "
                      f"the newest PyTorch releases (" + ", ".join(f"{c.name} ended with {c.last_torch}" for c in skipped) + ")")
    else:
        reason = (f"{driver} {supports}, older than {best.name}'s CUDA {best.cuda}; CUDA minor-version "
                  f"compatibility runs CUDA {best.cuda.split('.')[0]}.x builds on drivers >= "
                  f"{family_floor(best.cuda, os)} ({os}), so {best.name}")
    if best.last_torch:
        reason += f". {_retired(best)}; a newer driver unlocks current releases"
    if no_kernels:
        reason += (f". Left out {', '.join(no_kernels)}: no kernels for compute capability "
                   f"{', '.join(compute_capabilities)}")
    return Choice(best.name, best.cuda, reason, how)


def force_channel(channel: str, driver_cuda: str | None, driver_version: str | None, os: OS,
                  compute_capabilities: Sequence[str] = ()) -> Choice:
    """A channel named in params: kept, with how (or whether) it runs here."""
    auto = pick_channel(driver_cuda, driver_version, os, compute_capabilities)
    target = CHANNELS[channel]
    has_driver = bool(driver_cuda or driver_version)
    how = runs_on(target.cuda, driver_cuda, driver_version, os) if has_driver or target.cuda is None else None
    compat = "cpu" if target.cuda is None else (how or "unsupported")
    return Choice(channel, target.cuda, f"requested in params (auto would pick {auto.channel})", compat, True)


@dataclass(frozen=True)
class Finding:
    level: Level
    text: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.level}: {self.text}" + (f" Fix: {self.fix}" if self.fix else "")

    def as_dict(self) -> dict:
        return asdict(self)


def _arch_ok(cc: str, arch_list: Sequence[str]) -> bool | None:
    """Is a GPU covered by torch.cuda.get_arch_list()? sm_XY runs on same-major GPUs >= it,
    compute_XY (PTX) JIT-compiles for any GPU >= it."""
    gpu = _mm(cc)
    if gpu is None or not arch_list:
        return None
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)
        if not match:
            continue
        built = (int(match.group(2)), int(match.group(3)))
        if (match.group(1) == "sm" and built[0] == gpu[0] and built <= gpu) or \
           (match.group(1) == "compute" and built <= gpu):
            return True
    return False


def check_python(channel: str, python: str | None) -> Finding | None:
    target = CHANNELS.get(channel)
    if target is None or not target.max_python or not python:
        return None
    if _mm(python) <= _mm(target.max_python):
        return None
    return Finding("problem",
                   f"{_retired(target)}, which supports Python up to {target.max_python}: there is no "
                   f"{channel} wheel for Python {python} ('No matching distribution found').",
                   f'set python: "{target.max_python}" in the step params, or update the driver so a newer channel fits.')


def check_fit(*, os: OS, driver_version: str | None, driver_cuda: str | None,
              gpus: Sequence[tuple[str, str]] = (), nvcc: str | None = None,
              torch_version: str | None = None, torch_cuda: str | None = None,
              torch_arch_list: Sequence[str] = (), torch_cuda_available: bool | None = None,
              python: str | None = None, choice: Choice | None = None) -> list[Finding]:
    """Findings about this machine: what is wrong (with a fix), what only looks wrong, what fits."""
    ccs = [cc for _, cc in gpus]
    choice = choice or pick_channel(driver_cuda, driver_version, os, ccs)
    has_driver = bool(driver_cuda or driver_version)
    findings: list[Finding] = []
    if not has_driver:
        findings.append(Finding("info", NO_GPU))
    elif choice.channel == "cpu" and not choice.requested:
        oldest = GPU_CHANNELS[0]
        findings.append(Finding("problem", f"no PyTorch CUDA build runs here: {choice.reason}.",
                                f"update the NVIDIA driver (>= {family_floor(oldest.cuda, os)} for {oldest.name}, "
                                f">= {family_floor('13.0', os)} for current CUDA 13 builds)."))
    if choice.requested and choice.compat == "unsupported":
        findings.append(Finding("problem",
                                f"the requested channel {choice.channel} (CUDA {choice.cuda}) does not run on "
                                f"{'driver ' + driver_version if driver_version else 'this machine'}"
                                f"{' (CUDA ' + driver_cuda + ')' if driver_cuda else ''}: torch will not see the GPU.",
                                f"use channel: auto ({pick_channel(driver_cuda, driver_version, os, ccs).channel}) "
                                f"or update the driver to >= {family_floor(choice.cuda, os) or 'a newer release'}."))
    findings += _torch_findings(os, driver_version, driver_cuda, gpus, torch_version, torch_cuda,
                                torch_arch_list, torch_cuda_available, choice, has_driver)
    findings += _toolkit_findings(os, driver_cuda, nvcc, torch_cuda, choice)
    python_finding = check_python(choice.channel, python)
    if python_finding:
        findings.append(python_finding)
    return findings


def _torch_findings(os, driver_version, driver_cuda, gpus, torch_version, torch_cuda,
                    torch_arch_list, torch_cuda_available, choice, has_driver) -> list[Finding]:
    reinstall = f"install the {choice.channel} build into a fresh virtual environment with the generated script " \
                f"(uv pip install torch --torch-backend={choice.channel})."
    if torch_version is None:
        return [Finding("info", f"PyTorch is not installed in this Python environment; "
                                f"the generated install scripts set up the {choice.channel} build.")]
    if torch_cuda is None:
        if not has_driver:
            return [Finding("ok", f"PyTorch {torch_version} is a CPU build, which matches a machine without an NVIDIA GPU.")]
        names = ", ".join(name for name, _ in gpus) or "driver " + (driver_version or "found")
        return [Finding("problem", f"PyTorch {torch_version} is a CPU-only build, but this machine has an NVIDIA GPU "
                                   f"({names}): torch.cuda.is_available() is False.",
                        reinstall + " A fresh venv keeps the CPU build from being reused."
                        if choice.channel != "cpu" else "update the NVIDIA driver first (see above).")]
    if not has_driver:
        return [Finding("info", f"PyTorch {torch_version} was built for CUDA {torch_cuda}, but there is no NVIDIA "
                                f"driver here: it runs on the CPU.", "the cpu channel is a much smaller download.")]
    findings = []
    how = runs_on(torch_cuda, driver_cuda, driver_version, os)
    driver = f"driver {driver_version or '?'}" + (f", CUDA {driver_cuda}" if driver_cuda else "")
    if how is None:
        findings.append(Finding(
            "problem", f"PyTorch {torch_version} was built for CUDA {torch_cuda}, newer than this driver supports "
                       f"({driver}): CUDA fails to initialise ('The NVIDIA driver on your system is too old') "
                       f"and torch.cuda.is_available() is False.",
            f"reinstall with --torch-backend={choice.channel}, or update the driver to >= "
            f"{family_floor(torch_cuda, os) or 'a release supporting CUDA ' + torch_cuda}."))
    elif how == "minor-version":
        findings.append(Finding(
            "warning", f"PyTorch {torch_version} (CUDA {torch_cuda}) is newer than the driver's CUDA "
                       f"({driver}); it runs through CUDA minor-version compatibility, but anything that "
                       f"JIT-compiles PTX for CUDA {torch_cuda} can fail.",
            f"{choice.channel} matches the driver natively, or update the driver."))
    elif choice.channel != "cpu" and _mm(choice.cuda) > _mm(torch_cuda):
        current = channel_for_cuda(torch_cuda)
        capped = f"; {_retired(current)}" if current and current.last_torch else ""
        findings.append(Finding(
            "info", f"PyTorch {torch_version} (CUDA {torch_cuda}) runs on this driver ({driver}), but the driver "
                    f"could run {choice.channel} (CUDA {choice.cuda}){capped}.",
            f"reinstall with --torch-backend={choice.channel} for current PyTorch releases."))
    else:
        findings.append(Finding("ok", f"PyTorch {torch_version} (CUDA {torch_cuda}) fits the driver ({driver})."))
    build = channel_for_cuda(torch_cuda)
    for name, cc in gpus:
        ok = _arch_ok(cc, torch_arch_list) if torch_arch_list else (supports_cc(build, cc) if build else None)
        if ok is False:
            archs = ", ".join(torch_arch_list) if torch_arch_list else f"compute capability {build.min_cc} to {build.max_cc}"
            findings.append(Finding(
                "problem", f"{name} (compute capability {cc}) is not covered by PyTorch {torch_version} ({archs}): "
                           f"kernels fail with 'no kernel image is available for execution on the device'.",
                reinstall))
    if torch_cuda_available is False and not any(f.level == "problem" for f in findings):
        findings.append(Finding(
            "problem", f"torch.cuda.is_available() is False although PyTorch {torch_version} "
                       f"(CUDA {torch_cuda}) fits the driver.",
            "check that `nvidia-smi` lists the GPU and that CUDA_VISIBLE_DEVICES is unset or names it; "
            "reboot after a driver update."))
    return findings


def _toolkit_findings(os, driver_cuda, nvcc, torch_cuda, choice) -> list[Finding]:
    if nvcc is None:
        return [Finding("info", "no CUDA toolkit (nvcc) on PATH: PyTorch wheels do not need one; "
                                "install a toolkit only to compile CUDA extensions.")]
    findings = []
    bundled = ("pip/uv wheels bundle their own CUDA runtime and cuDNN, so only the driver must be new enough; "
               "the toolkit matters only when compiling CUDA extensions")
    newest = GPU_CHANNELS[-1]
    if channel_for_cuda(nvcc) is None:
        where = (f"is newer than any PyTorch channel (newest: {newest.name}, CUDA {newest.cuda})"
                 if _mm(nvcc) > _mm(newest.cuda) else
                 f"has no PyTorch channel (there is no cu{''.join(map(str, _mm(nvcc)))})")
        findings.append(Finding(
            "info", f"CUDA toolkit {nvcc} {where}, so no PyTorch wheel matches it, and none needs to: {bundled}. "
                    f"Pick the channel by the driver, not the toolkit: {choice.channel} here; falling back to "
                    f"an old channel such as cu118 is not needed."))
    elif torch_cuda and _mm(nvcc) != _mm(torch_cuda):
        same_major = _mm(nvcc)[0] == _mm(torch_cuda)[0]
        findings.append(Finding(
            "info", f"CUDA toolkit {nvcc} differs from PyTorch's CUDA {torch_cuda}: not a problem. {bundled}, where "
                    f"torch.utils.cpp_extension wants the same CUDA major"
                    + ("." if same_major else f" (install a CUDA {_mm(torch_cuda)[0]}.x toolkit for that).")))
    dc = _mm(driver_cuda)
    if dc is not None and _mm(nvcc)[0] > dc[0]:
        findings.append(Finding(
            "warning", f"CUDA toolkit {nvcc} is newer than the driver's CUDA {driver_cuda}: programs compiled with "
                       f"this nvcc will not run until the driver is updated (PyTorch wheels are unaffected).",
            f"update the driver to >= {family_floor(nvcc, os) or 'a release supporting CUDA ' + nvcc}."))
    return findings
