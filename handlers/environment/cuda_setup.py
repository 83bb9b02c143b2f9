"""cuda_setup: inspect the NVIDIA driver / CUDA / cuDNN / PyTorch stack and write a set-up kit.

detect() reads the machine (the only I/O besides writing outputs) into Facts; decide() turns
Facts into a channel choice and findings with handlers.environment.cuda_compat; render() fills the
templates. Tests feed Facts straight into decide() and render() to cover GPU machines.
It runs everywhere: on a machine without a GPU it writes the CPU variant.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from atlas import probe
from atlas.handler import Context, Handler, Params, Result
from handlers.environment import cuda_compat
from handlers.environment.tensorrt_choice import TensorRtChoice, choose_tensorrt

if TYPE_CHECKING:
    import jinja2

TEMPLATES = Path(__file__).parent / "templates"
_VENV_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_PYTHON = re.compile(r"^3\.\d{1,2}$")
# A name, optional extras, optional version specifiers: nothing a shell would interpret.
_OP = r"(?:===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_REQUIREMENT = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[A-Za-z0-9._,-]+\])?(?:\s*{_OP}(?:\s*,\s*{_OP})*)?$")


class CudaSetupParams(Params):
    channel: str = "auto"
    venv: str = "gpu_env"
    python: str = "3.12"
    packages: list[str] = Field(default_factory=lambda: ["torch", "torchvision"])
    extra_packages: list[str] = Field(default_factory=list)

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, value: str) -> str:
        if value != "auto" and value not in cuda_compat.CHANNELS:
            raise ValueError(f"unknown channel {value!r}: use auto or one of {', '.join(cuda_compat.CHANNELS)}")
        return value

    @field_validator("venv")
    @classmethod
    def _plain_folder(cls, value: str) -> str:
        if not _VENV_NAME.match(value):
            raise ValueError(f"venv {value!r} must be a plain folder name (letters, digits, . _ -)")
        return value

    @field_validator("python")
    @classmethod
    def _python_version(cls, value: str) -> str:
        if not _PYTHON.match(value):
            raise ValueError(f"python {value!r} must look like 3.12")
        return value

    @field_validator("packages", "extra_packages")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        for requirement in value:
            if not _REQUIREMENT.match(requirement):
                raise ValueError(f"{requirement!r} is not a plain requirement such as torch or torch>=2.5")
        return value


@dataclass
class Facts:
    """What detect() found; every field is plain data so report.json can hold it as is."""

    os: str                                   # linux | windows (which driver table applies)
    platform: str = sys.platform
    python: str = ""
    gpus: list[dict] = field(default_factory=list)
    driver_version: str | None = None
    driver_cuda: str | None = None            # newest CUDA the driver supports
    driver_cuda_source: str | None = None     # libcuda | nvidia-smi
    nvidia_smi_error: str | None = None
    nvcc: str | None = None
    cudnn_package: str | None = None          # nvidia-cudnn-cu* wheel, if any
    torch_version: str | None = None
    torch_cuda: str | None = None
    torch_cudnn: str | None = None
    torch_cuda_available: bool | None = None
    torch_arch_list: list[str] = field(default_factory=list)
    torch_warnings: list[str] = field(default_factory=list)
    torch_error: str | None = None


@dataclass
class Decision:
    choice: cuda_compat.Choice
    findings: list[cuda_compat.Finding]
    tensorrt: TensorRtChoice | None = None


def host_os(platform: str = sys.platform) -> str:
    return "windows" if platform.startswith(("win", "cygwin", "msys")) else "linux"


def parse_smi_cuda(text: str) -> str | None:
    """'CUDA Version: 13.0' from the nvidia-smi banner."""
    match = re.search(r"CUDA Version:\s*(\d+\.\d+)", text or "")
    return match.group(1) if match else None


def format_cudnn(version: int | None) -> str | None:
    """torch.backends.cudnn.version(): 90100 -> 9.1.0 (cuDNN 9), 8700 -> 8.7.0 (cuDNN 8)."""
    if not version:
        return None
    if version >= 90000:
        return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
    return f"{version // 1000}.{version % 1000 // 100}.{version % 100}"


def _smi_banner() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def inspect_torch() -> dict:
    """torch facts; imported here only, and a broken import is recorded, not raised."""
    version = probe.package_version("torch")
    info: dict = {"torch_version": None if version in (None, "unknown") else version,
                  "torch_cuda": probe.torch_cuda_build() if version else None}
    if version is None:
        return info
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - e.g. a DLL load failure on Windows is a finding
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
        return info
    info.update(torch_version=torch.__version__, torch_cuda=torch.version.cuda)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            info["torch_cudnn"] = format_cudnn(torch.backends.cudnn.version())
            info["torch_cuda_available"] = bool(torch.cuda.is_available())
            if info["torch_cuda_available"]:
                info["torch_arch_list"] = list(torch.cuda.get_arch_list())
        except Exception as exc:  # noqa: BLE001 - CUDA init errors belong in the report
            info["torch_error"] = f"{type(exc).__name__}: {exc}"
    info["torch_warnings"] = sorted({str(w.message).strip() for w in caught})
    return info


def detect() -> Facts:
    gpus, smi_error = probe.query_gpus()
    facts = Facts(os=host_os(), python=".".join(map(str, sys.version_info[:3])),
                  gpus=[asdict(g) for g in gpus], nvidia_smi_error=smi_error,
                  nvcc=probe.nvcc_version(), cudnn_package=probe.cudnn_version())
    if gpus:
        facts.driver_version = gpus[0].driver
        facts.driver_cuda = probe.cuda_driver_version()
        facts.driver_cuda_source = "libcuda" if facts.driver_cuda else None
        if facts.driver_cuda is None:  # Windows has no libcuda.so: read the banner instead
            facts.driver_cuda = parse_smi_cuda(_smi_banner())
            facts.driver_cuda_source = "nvidia-smi" if facts.driver_cuda else None
    for key, value in inspect_torch().items():
        setattr(facts, key, value)
    return facts


def decide(facts: Facts, params: CudaSetupParams) -> Decision:
    ccs = [g["compute_capability"] for g in facts.gpus]
    if params.channel == "auto":
        choice = cuda_compat.pick_channel(facts.driver_cuda, facts.driver_version, facts.os, ccs)
    else:
        choice = cuda_compat.force_channel(params.channel, facts.driver_cuda, facts.driver_version, facts.os, ccs)
    findings: list[cuda_compat.Finding] = []
    if facts.nvidia_smi_error and facts.nvidia_smi_error != "nvidia-smi not found":
        findings.append(cuda_compat.Finding(
            "problem", f"{facts.nvidia_smi_error}: the NVIDIA driver is installed but not working.",
            "reinstall or update the NVIDIA driver and reboot; `nvidia-smi` must list the GPU."))
    if facts.torch_error:
        findings.append(cuda_compat.Finding(
            "problem", f"PyTorch is installed but failed: {facts.torch_error}",
            f"install it again into a fresh virtual environment with the generated script ({choice.channel})."))
    findings += cuda_compat.check_fit(
        os=facts.os, driver_version=facts.driver_version, driver_cuda=facts.driver_cuda,
        gpus=[(g["name"], g["compute_capability"]) for g in facts.gpus], nvcc=facts.nvcc,
        torch_version=facts.torch_version, torch_cuda=facts.torch_cuda,
        torch_arch_list=facts.torch_arch_list, torch_cuda_available=facts.torch_cuda_available,
        python=params.python, choice=choice)
    trt = choose_tensorrt([(g["name"], g["compute_capability"]) for g in facts.gpus], facts.driver_cuda)
    findings.append(cuda_compat.Finding("info", f"TensorRT: {trt.package} ({trt.reason}).",
                                        "the install scripts add it with --tensorrt / -TensorRT"))
    return Decision(choice, findings, trt)


def _ps_quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _ascii(text: str) -> str:
    # Windows PowerShell 5.1 reads BOM-less scripts as ANSI: keep generated scripts ASCII.
    return str(text).encode("ascii", "replace").decode("ascii")


def _environment() -> "jinja2.Environment":
    import jinja2  # only when the step runs: `atlas validate` imports this module too

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(shq=shlex.quote, psq=_ps_quote, ascii=_ascii)
    return env


def report(task_id: str, facts: Facts, decision: Decision, params: CudaSetupParams) -> dict:
    channel = cuda_compat.CHANNELS[decision.choice.channel]
    return {"task": task_id, "facts": asdict(facts), "choice": decision.choice.as_dict(),
            "channel": asdict(channel), "findings": [f.as_dict() for f in decision.findings],
            "params": params.model_dump(),
            "tensorrt": decision.tensorrt.as_dict() if decision.tensorrt else None,
            "scripts": {"linux": "install_linux.sh", "windows": "install_windows.ps1"}}


def render(task_id: str, facts: Facts, decision: Decision, params: CudaSetupParams) -> dict[str, str]:
    """The three text outputs, keyed by file name (report.json is written from report())."""
    choice = decision.choice
    context = {
        "task_id": task_id, "facts": facts, "choice": choice, "findings": decision.findings,
        "channel": cuda_compat.CHANNELS[choice.channel], "params": params,
        "packages": [*params.packages, *params.extra_packages],
        # What torch.version.cuda must read after install; str(None).lower() for cpu.
        "expected_cuda": choice.cuda or "none",
        "problems": [f for f in decision.findings if f.level == "problem"],
        "tensorrt": decision.tensorrt,
    }
    env = _environment()
    return {name: env.get_template(f"cuda_setup_{name}.j2").render(context)
            for name in ("SETUP.md", "install_linux.sh", "install_windows.ps1")}


def summary(facts: Facts, decision: Decision) -> str:
    problems = sum(f.level == "problem" for f in decision.findings)
    if facts.gpus:
        names = sorted({g["name"] for g in facts.gpus})
        where = f"{len(facts.gpus)} GPU ({', '.join(names)}), driver {facts.driver_version}, CUDA {facts.driver_cuda or '?'}"
    else:
        where = "no NVIDIA GPU"
    return f"channel {decision.choice.channel} for {where}; {problems} problem(s); see SETUP.md"


class CudaSetup(Handler):
    """Check the GPU stack and write a set-up kit: report.json, SETUP.md, install scripts."""

    name = "cuda_setup"
    version = "1"
    Params = CudaSetupParams
    outputs = ("report.json", "SETUP.md", "install_linux.sh", "install_windows.ps1")
    requires = ()
    gpu_env = True
    code_modules = ("handlers.environment.templates",)   # the documents it renders

    def run(self, ctx: Context) -> Result:
        params: CudaSetupParams = ctx.params  # type: ignore[assignment]
        facts = detect()
        decision = decide(facts, params)
        self._log(ctx, facts, decision)
        ctx.metric("gpu_count", len(facts.gpus))
        if facts.gpus:
            ctx.metric("gpu_memory_total", sum(g["memory_mib"] for g in facts.gpus), "MiB")
        ctx.metric("problems", sum(f.level == "problem" for f in decision.findings))
        import jinja2

        try:
            texts = render(ctx.task_id, facts, decision, params)
        except jinja2.TemplateError as exc:
            return Result.failed(f"rendering the set-up kit failed: {exc}",
                                 "a template in handlers/environment/templates/ is broken; run the cuda_setup tests")
        try:
            ctx.write_json("report.json", report(ctx.task_id, facts, decision, params))
            ctx.write_text("SETUP.md", texts["SETUP.md"])
            ctx.write_text("install_linux.sh", texts["install_linux.sh"], executable=True)
            ctx.write_text("install_windows.ps1", texts["install_windows.ps1"])
        except OSError as exc:
            return Result.failed(f"cannot write the set-up kit to {ctx.output_dir}: {exc}",
                                 "check that the output folder is writable and the disk is not full")
        return Result.succeeded(summary(facts, decision), [str(f) for f in decision.findings])

    @staticmethod
    def _log(ctx: Context, facts: Facts, decision: Decision) -> None:
        for gpu in facts.gpus:
            ctx.log.info("GPU %s: %s, %s MiB, compute capability %s", gpu["index"], gpu["name"],
                         gpu["memory_mib"], gpu["compute_capability"])
        ctx.log.info("driver %s (CUDA %s via %s); nvcc %s; cuDNN wheel %s",
                     facts.driver_version or "none", facts.driver_cuda or "-", facts.driver_cuda_source or "-",
                     facts.nvcc or "none", facts.cudnn_package or "none")
        ctx.log.info("PyTorch %s (CUDA %s, cuDNN %s, cuda available: %s)", facts.torch_version or "not installed",
                     facts.torch_cuda or "-", facts.torch_cudnn or "-", facts.torch_cuda_available)
        ctx.log.info("channel %s: %s", decision.choice.channel, decision.choice.reason)
        for finding in decision.findings:
            log = ctx.log.warning if finding.level in ("problem", "warning") else ctx.log.info
            log("%s", finding)
