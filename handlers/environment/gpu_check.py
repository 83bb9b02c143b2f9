"""AG-DS-LIBTEST-001: do the deep-learning libraries see and use the GPU correctly?

Runs `nvidia-smi`, reports what PyTorch (and TensorFlow, when installed) find, and on every
CUDA device computes a convolution (the ResNet-50 stem: 3 -> 64 channels, 7x7, stride 2)
and a matrix product, compared against a float64 reference computed on the CPU. Without a
CUDA device the same checks run on the CPU, so the step still proves the fallback path.

Metrics: conv_/matmul_ max_abs_err, rel_err, ms (and matmul_tflops); `step` is the CUDA
device index, or None for the CPU fallback.
"""
from __future__ import annotations

import importlib.util
import math
from contextlib import nullcontext
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from pydantic import Field

from atlas.handler import Context, Handler, Params, Result
from atlas.probe import query_gpus

SEED = 0
BATCH = 8
CONV_IN, CONV_OUT, CONV_KERNEL, CONV_STRIDE = 3, 64, 7, 2   # ResNet-50's first layer
TIMING_REPEATS = 10
SMI_TIMEOUT_S = 30
CPU_FALLBACK = "no CUDA device: CPU fallback"
MISMATCH_HINT = ("TF32 (on by default for convolutions) stays near 1e-3 on these inputs; larger "
                 "errors point at the driver/CUDA/cuDNN stack (`atlas env` shows it); raise "
                 "rtol/atol in the manifest only if the difference is expected")


@dataclass(frozen=True)
class Comparison:
    """How far a result is from its reference, with torch.allclose's tolerance rule."""

    max_abs_err: float
    rel_err: float          # ||actual - reference|| / ||reference||
    mismatched: int         # elements with |a - r| > atol + rtol * |r| (NaN counts)
    total: int
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def describe(self) -> str:
        return (f"{self.mismatched} of {self.total} elements beyond rtol={self.rtol:g} "
                f"atol={self.atol:g}, max abs err {self.max_abs_err:.3g}, rel err {self.rel_err:.3g}")

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(actual: Any, reference: Any, rtol: float, atol: float) -> Comparison:
    """Compare two torch tensors (any device/dtype) in float64 on the CPU."""
    a = actual.detach().to("cpu").double()
    r = reference.detach().to("cpu").double()
    if a.shape != r.shape:
        raise ValueError(f"shape {tuple(a.shape)} does not match reference {tuple(r.shape)}")
    diff = a - r
    abs_diff = diff.abs()
    # `~(x <= bound)` rather than `x > bound`, so that NaN counts as a mismatch
    mismatched = int((~(abs_diff <= atol + rtol * r.abs())).sum().item())
    ref_norm, diff_norm = r.norm().item(), diff.norm().item()
    if ref_norm > 0:
        rel = diff_norm / ref_norm
    else:
        rel = 0.0 if diff_norm == 0 else math.inf
    max_abs = abs_diff.max().item() if abs_diff.numel() else 0.0
    return Comparison(float(max_abs), float(rel), mismatched, int(a.numel()), rtol, atol)


class LibTest(Handler):
    """nvidia-smi, torch.cuda.is_available(), tf.config.list_physical_devices('GPU')."""

    name = "lib_test"
    outputs = ("report.json", "nvidia-smi.txt")
    requires = ("torch",)
    gpu_env = True

    class Params(Params):
        conv_size: int = Field(64, ge=1, description="height and width of the conv2d input")
        matmul_size: int = Field(1024, ge=1, description="n of the n x n matrix product")
        rtol: float = Field(1e-2, ge=0, description="relative tolerance against the float64 reference")
        atol: float = Field(1e-2, ge=0, description="absolute tolerance against the float64 reference")
        check_tensorflow: bool = True

    def run(self, ctx: Context) -> Result:
        import torch

        p: LibTest.Params = ctx.params  # type: ignore[assignment]
        findings: list[str] = []
        report: dict[str, Any] = {"task": ctx.task_id, "params": p.model_dump()}

        smi_text, report["nvidia_smi"] = run_nvidia_smi()
        ctx.write_text("nvidia-smi.txt", smi_text)
        findings.append(describe_smi(report["nvidia_smi"]))

        report["torch"] = torch_info(torch)
        report["cudnn"] = cudnn_info(torch)
        t = report["torch"]
        findings.append(f"torch {t['version']} (CUDA build {t['cuda_build'] or 'none: CPU-only wheel'}), "
                        f"cuDNN {report['cudnn']['version'] or 'unavailable'}")
        for line in findings:
            ctx.log.info(line)

        devices, problem = select_devices(ctx.devices, t["device_count"])
        smi_gpus = report["nvidia_smi"]["gpus"]
        if problem is None and not t["cuda_available"] and smi_gpus and not cuda_hidden():
            problem = (f"nvidia-smi lists {len(smi_gpus)} GPU(s) but torch.cuda.is_available() is False",
                       "install a torch build for a CUDA version the driver supports "
                       "(`atlas env` shows both); a CPU-only wheel has torch.version.cuda = None")

        checks: list[dict] = []
        if problem is None:
            inputs = make_inputs(torch, p.conv_size, p.matmul_size)
            refs = reference_results(torch, inputs)
            if devices:
                targets = [(torch.device("cuda", i), i) for i in devices]
            else:
                targets = [(torch.device("cpu"), None)]
                findings.append(f"{CPU_FALLBACK}: torch.cuda.is_available() is False; "
                                "conv2d and matmul checked on the CPU")
                ctx.log.warning(findings[-1])
            with ctx.progress(len(targets), "conv2d + matmul vs float64 CPU reference") as bar:
                for device, step in targets:
                    check = check_device(torch, device, inputs, refs, p)
                    checks.append(check)
                    emit_metrics(ctx, check, step)
                    findings.append(describe_check(check))
                    ctx.log.info(findings[-1])
                    bar.advance(1, device=check["device"])
        report["checks"] = checks
        report["cpu_fallback"] = problem is None and not devices

        if p.check_tensorflow:
            report["tensorflow"] = tensorflow_info()
            findings.append(describe_tensorflow(report["tensorflow"], bool(devices)))
            ctx.log.info(findings[-1])

        failed = [c for c in checks if not c["ok"]]
        if problem is None and failed:
            problem = (check_failure(failed[0]), failure_hint(failed[0]["error"], t["arch_list"]))
        if problem is not None:
            message, hint = problem
            report.update(status="failed", message=message, hint=hint, findings=findings)
            ctx.write_json("report.json", report)
            return Result.failed(message, hint, findings)

        message = summary(t, checks, report.get("tensorflow"))
        report.update(status="succeeded", message=message, findings=findings)
        ctx.write_json("report.json", report)
        return Result.succeeded(message, findings)


def run_nvidia_smi() -> tuple[str, dict]:
    """Full `nvidia-smi` output for the artifact, plus the parsed GPU list from the probe."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found\n", {"found": False, "returncode": None, "gpus": [],
                                          "error": "nvidia-smi not found"}
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}\n", {"found": True, "returncode": None, "gpus": [],
                                               "error": f"nvidia-smi failed: {exc}"}
    text = out.stdout + (f"\n--- stderr ---\n{out.stderr}" if out.stderr.strip() else "")
    gpus, error = query_gpus(SMI_TIMEOUT_S) if out.returncode == 0 else ([], None)
    if out.returncode != 0:
        first = (out.stderr or out.stdout).strip().splitlines()
        error = f"nvidia-smi failed (exit {out.returncode}): {first[0] if first else 'no output'}"
    return text, {"found": True, "returncode": out.returncode, "gpus": [asdict(g) for g in gpus],
                  "error": error}


def describe_smi(info: dict) -> str:
    if info["error"]:
        return info["error"]
    gpus = info["gpus"]
    names = ", ".join(f"{g['index']}: {g['name']} ({g['memory_mib']} MiB, sm {g['compute_capability']})"
                      for g in gpus)
    driver = f", driver {gpus[0]['driver']}" if gpus else ""
    return f"nvidia-smi: {len(gpus)} GPU(s){driver}" + (f": {names}" if names else "")


def torch_info(torch: Any) -> dict:
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    devices = []
    for i in range(count):
        prop = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": prop.name, "total_memory_bytes": prop.total_memory,
                        "total_memory_mib": prop.total_memory // 2**20,
                        "compute_capability": f"{prop.major}.{prop.minor}",
                        "multiprocessor_count": prop.multi_processor_count})
    return {"version": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": available, "device_count": count, "devices": devices,
            "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def cudnn_info(torch: Any) -> dict:
    cudnn = torch.backends.cudnn
    available = cudnn.is_available()
    return {"available": available, "enabled": cudnn.enabled,
            "version": cudnn.version() if available else None, "allow_tf32": cudnn.allow_tf32}


def cuda_hidden() -> bool:
    """CUDA_VISIBLE_DEVICES set to nothing (or -1) hides the GPUs on purpose."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is not None and value.strip() in ("", "-1")


def select_devices(assigned: list[int], count: int) -> tuple[list[int], tuple[str, str] | None]:
    """The assigned CUDA devices, or all of them; an assigned index torch lacks is an error."""
    if not assigned or count == 0:  # no CUDA at all: the CPU fallback, not an error
        return list(range(count)), None
    missing = [i for i in assigned if not 0 <= i < count]
    if missing:
        return [], (f"assigned device(s) {', '.join(f'cuda:{i}' for i in missing)} not visible "
                    f"to torch ({count} CUDA device(s))",
                    "check CUDA_VISIBLE_DEVICES and the devices given to the step")
    return list(assigned), None


def make_inputs(torch: Any, conv_size: int, matmul_size: int) -> dict:
    """Fixed-seed CPU inputs, scaled (like Kaiming init) so outputs are about N(0, 1)."""
    gen = torch.Generator().manual_seed(SEED)
    fan_in = CONV_IN * CONV_KERNEL * CONV_KERNEL
    return {
        "x": torch.randn(BATCH, CONV_IN, conv_size, conv_size, generator=gen),
        "w": torch.randn(CONV_OUT, CONV_IN, CONV_KERNEL, CONV_KERNEL, generator=gen) / math.sqrt(fan_in),
        "a": torch.randn(matmul_size, matmul_size, generator=gen),
        "b": torch.randn(matmul_size, matmul_size, generator=gen) / math.sqrt(matmul_size),
    }


def conv(torch: Any, x: Any, w: Any) -> Any:
    return torch.nn.functional.conv2d(x, w, stride=CONV_STRIDE, padding=CONV_KERNEL // 2)


def reference_results(torch: Any, inputs: dict) -> dict:
    """float64 on the CPU: exact enough that float32 and TF32 errors show up in full."""
    d = {k: v.double() for k, v in inputs.items()}
    return {"conv2d": conv(torch, d["x"], d["w"]), "matmul": d["a"] @ d["b"]}


def time_ms(torch: Any, fn: Callable[[], Any], device: Any, repeats: int = TIMING_REPEATS) -> float:
    """Mean milliseconds per call, after one warm-up (cuDNN algorithm choice, kernel load)."""
    fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) * 1000 / repeats


def check_device(torch: Any, device: Any, inputs: dict, refs: dict, p: "LibTest.Params") -> dict:
    """conv2d and matmul in float32 on `device`, compared with the float64 CPU reference."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    label = str(device) if device.type == "cpu" else f"cuda:{device.index}"
    check: dict[str, Any] = {"device": label, "name": name, "ok": False, "error": None}
    try:
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            x, w, a, b = (inputs[k].to(device) for k in ("x", "w", "a", "b"))
            ops = {"conv2d": lambda: conv(torch, x, w), "matmul": lambda: a @ b}
            for op, fn in ops.items():
                result = compare(fn(), refs[op], p.rtol, p.atol)
                check[op] = {**result.as_dict(), "ms": time_ms(torch, fn, device)}
    except RuntimeError as exc:  # e.g. "no kernel image is available", out of memory
        check["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        return check
    n = p.matmul_size
    check["matmul"]["tflops"] = 2 * n**3 / (check["matmul"]["ms"] * 1e-3) / 1e12
    check["ok"] = check["conv2d"]["ok"] and check["matmul"]["ok"]
    return check


def emit_metrics(ctx: Context, check: dict, step: int | None) -> None:
    if check["error"] is not None:
        return
    for op, prefix in (("conv2d", "conv"), ("matmul", "matmul")):
        ctx.metric(f"{prefix}_max_abs_err", check[op]["max_abs_err"], "", step)
        ctx.metric(f"{prefix}_rel_err", check[op]["rel_err"], "", step)
        ctx.metric(f"{prefix}_ms", check[op]["ms"], "ms", step)
    ctx.metric("matmul_tflops", check["matmul"]["tflops"], "TFLOP/s", step)


def describe_check(check: dict) -> str:
    head = f"{check['device']} ({check['name']})"
    if check["error"] is not None:
        return f"{head}: {check['error']}"
    c, m = check["conv2d"], check["matmul"]
    verdict = "OK" if check["ok"] else "MISMATCH"
    return (f"{head}: {verdict}: conv2d max abs err {c['max_abs_err']:.2e} "
            f"(rel {c['rel_err']:.2e}, {c['ms']:.3f} ms), matmul max abs err {m['max_abs_err']:.2e} "
            f"(rel {m['rel_err']:.2e}, {m['ms']:.3f} ms, {m['tflops']:.2f} TFLOP/s)")


def check_failure(check: dict) -> str:
    head = f"{check['device']} ({check['name']})"
    if check["error"] is not None:
        return f"{head}: conv2d/matmul check raised {check['error']}"
    op = "conv2d" if not check["conv2d"]["ok"] else "matmul"
    c = Comparison(**{k: check[op][k] for k in ("max_abs_err", "rel_err", "mismatched", "total",
                                                  "rtol", "atol")})
    return f"{head}: {op} differs from the float64 CPU reference: {c.describe()}"


def failure_hint(error: str | None, arch_list: list[str]) -> str:
    if error is None:
        return MISMATCH_HINT
    if "no kernel image" in error:
        return (f"this torch build has kernels for {', '.join(arch_list) or 'no GPU architecture'}; "
                "install a build that supports this GPU")
    if "out of memory" in error:
        return "lower conv_size/matmul_size, or free the GPU (nvidia-smi.txt lists its processes)"
    return "see nvidia-smi.txt and `atlas env` for the driver and CUDA stack"


def tensorflow_info() -> dict:
    if importlib.util.find_spec("tensorflow") is None:
        return {"installed": False}
    try:
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        build = dict(tf.sysconfig.get_build_info())
    except Exception as exc:  # a broken TF install is reported, not fatal: torch is the target
        return {"installed": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"installed": True, "version": tf.__version__, "gpus": [g.name for g in gpus],
            "built_with_cuda": tf.test.is_built_with_cuda(),
            "cuda_version": build.get("cuda_version"), "cudnn_version": build.get("cudnn_version")}


def describe_tensorflow(info: dict, torch_has_gpu: bool) -> str:
    if not info["installed"]:
        return "TensorFlow not installed"
    if "error" in info:
        return f"TensorFlow import failed: {info['error']}"
    line = (f"TensorFlow {info['version']}: list_physical_devices('GPU') -> {len(info['gpus'])} GPU(s)"
            + (f" ({', '.join(info['gpus'])})" if info["gpus"] else ""))
    if torch_has_gpu and not info["gpus"]:
        line += (f"; TensorFlow sees no GPU that torch sees (built with CUDA: {info['built_with_cuda']}, "
                 "install tensorflow[and-cuda])")
    return line


def summary(t: dict, checks: list[dict], tf: dict | None) -> str:
    tf_part = "" if tf is None else ("; TensorFlow not installed" if not tf["installed"] else
                                     "; TensorFlow import failed" if "error" in tf else
                                     f"; TensorFlow {tf['version']}: {len(tf['gpus'])} GPU(s)")
    if checks and checks[0]["device"] == "cpu":
        return (f"{CPU_FALLBACK}; torch {t['version']} conv2d and matmul match the float64 "
                f"reference on the CPU{tf_part}")
    names = ", ".join(sorted({c["name"] for c in checks}))
    return (f"torch {t['version']} (CUDA {t['cuda_build']}): {len(checks)} CUDA device(s) "
            f"pass conv2d and matmul checks ({names}){tf_part}")
