"""The CuPy step's run (handlers/preprocessing/numpy_port.py): the test inputs, each module's
functions ported and timed, the fused normalisation kernel, and the files and metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas.handler import Context, Result
from atlas.paths import OutsideProject, resolve_inside
from handlers.ml.errors import DataError
from handlers.ml.layout import IMAGENET_MEAN, IMAGENET_STD
from handlers.ml.synthetic import render
from handlers.preprocessing import array_port, cupy_kernels
from handlers.preprocessing.figures import cupy_figures


def cupy_backend():
    import cupy
    from cupyx.profiler import benchmark

    def timer(fn, args, repeat):
        result = benchmark(fn, args, n_repeat=repeat, n_warmup=3)
        return float(np.median(result.gpu_times[0]))      # device time of each call
    return array_port.ArrayBackend("cupy", cupy, cupy.asarray, cupy.asnumpy, timer,
                                   cupy.cuda.runtime.deviceSynchronize)


def test_inputs(size: int, batch: int, batch_size: int) -> dict[str, np.ndarray]:
    """A chest X-ray-sized grayscale image, and an NHWC uint8 batch of 224 px images (gray
    replicated to three channels), from the built-in generator: deterministic, realistic
    histograms, no dataset needed."""
    rng = np.random.default_rng(0)
    image = render(rng, 1, size, exact_size=size)
    distinct = [render(np.random.default_rng((1, k)), k % 2, batch_size, exact_size=batch_size) for k in range(16)]
    gray = np.stack([distinct[i % len(distinct)] for i in range(batch)])
    return {"image": image, "batch": np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=3))}


def _modules(ctx: Context, names: list[str]) -> list[Path]:
    inside = []
    for name in names:
        try:
            inside.append(resolve_inside(ctx.project_root, name).relative_to(ctx.project_root.resolve()).as_posix())
        except OutsideProject as exc:
            raise DataError(f"params.modules: {exc}", "name folders or files inside the project") from None
    files = array_port.module_files(ctx.project_root.resolve(), inside)
    if not files:
        raise DataError(f"no Python files in {', '.join(names)}", "set params.modules to your NumPy code")
    return files


def fused_kernel(backend, batch: np.ndarray, repeat: int) -> dict:
    """Each variant of the hot path checked against NumPy and timed, beside a device copy of
    the output's size (the bandwidth a memory-bound kernel can reach here)."""
    cupy = backend.xp
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    reference = ((batch.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    reference = np.ascontiguousarray(reference.transpose(0, 3, 1, 2))
    device = cupy.asarray(batch)
    out_bytes = reference.nbytes
    moved = batch.nbytes + out_bytes
    src, dst = cupy.empty(out_bytes // 4, cupy.float32), cupy.empty(out_bytes // 4, cupy.float32)
    src[...] = 1.0
    copy_s = backend.timer(lambda: cupy.copyto(dst, src), (), repeat)
    copy_bw = 2 * out_bytes / copy_s
    variants = {}
    for name, kernel in cupy_kernels.VARIANTS.items():
        out = cupy.full(reference.shape, cupy.nan, dtype=cupy.float32)      # poisoned: every element must be written
        if name == "numpy_style":
            out = kernel(device, mean, std)
            run = lambda: kernel(device, mean, std)        # noqa: E731
        else:
            kernel(device, mean, std, out)
            run = lambda kernel=kernel, out=out: kernel(device, mean, std, out)   # noqa: E731
        eq = array_port.compare(reference, backend.to_host(out))
        seconds = backend.timer(run, (), repeat)
        variants[name] = {"equivalence": eq.as_dict(), "seconds": seconds, "bandwidth_gbs": moved / seconds / 1e9,
                          "fraction_of_copy": (moved / seconds) / copy_bw}
    return {"batch": list(batch.shape), "bytes_moved": moved, "copy": {"bytes": 2 * out_bytes, "seconds": copy_s,
            "bandwidth_gbs": copy_bw / 1e9}, "variants": variants}


def run_cupy_step(ctx: Context) -> Result:
    import cupy
    params = ctx.params
    backend = cupy_backend()
    inputs = test_inputs(params.image_size, params.batch_size, params.batch_image_size)
    files = _modules(ctx, params.modules)
    result: dict = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cupy": cupy.__version__,
                    "numpy": np.__version__, "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in inputs.items()},
                    "modules": {}}
    reports: list[dict] = []
    with ctx.progress(len(files) + 1, "porting NumPy to CuPy") as bar:
        for path in files:
            rel = path.relative_to(ctx.project_root.resolve()).as_posix()
            try:
                module = array_port.load_module(path)
            except Exception as exc:          # the user's module: its error is a finding, not our crash
                result["modules"][rel] = {"error": f"cannot import: {type(exc).__name__}: {exc}"}
                bar.advance()
                continue
            found, skipped = array_port.discover(module)
            entries = []
            for info in found:
                ctx.log.info("%s: %s", rel, info.name)
                report = array_port.port_function(module, info, inputs, backend, params.repeat)
                entries.append(report.as_dict())
                if report.speedup:
                    ctx.metric(f"cupy_{info.name}_speedup", report.speedup, "x")
                    ctx.metric(f"cupy_{info.name}_bandwidth", report.bandwidth_gbs, "GB/s")
            result["modules"][rel] = {"functions": entries, "skipped": skipped}
            reports += [{**e, "module": rel} for e in entries]
            bar.advance()
        kernel = fused_kernel(backend, inputs["batch"], params.kernel_repeat)
        bar.advance()
    result["fused_kernel"] = kernel
    result["tolerances"] = {"float_rtol": array_port.FLOAT_RTOL, "int_max_diff": array_port.INT_MAX_DIFF,
                            "int_max_share": array_port.INT_MAX_SHARE}
    best = kernel["variants"]["vectorized"]
    ctx.metric("cupy_copy_bandwidth", kernel["copy"]["bandwidth_gbs"], "GB/s")
    for name, v in kernel["variants"].items():
        ctx.metric(f"cupy_kernel_{name}_bandwidth", v["bandwidth_gbs"], "GB/s")
        ctx.metric(f"cupy_kernel_{name}_fraction", 100 * v["fraction_of_copy"], "%")
    ctx.write_json("cupy.json", result)
    for chart in cupy_figures(reports, kernel, params.kernel_target):
        ctx.figure(chart)
    ctx.write_text("report.md", report_markdown(result, reports))
    ported = [r for r in reports if r["portable"]]
    not_ported = [r for r in reports if not r["portable"]]
    findings = [f"not portable: {r['module']}:{r['name']}: {r['reason']}" for r in not_ported]
    findings += [f"{m}: {e['error']}" for m, e in result["modules"].items() if "error" in e]
    wrong = [n for n, v in kernel["variants"].items() if not v["equivalence"]["ok"]]
    if wrong:
        return Result.failed(f"fused kernel variants {', '.join(wrong)} differ from the NumPy reference",
                             "cupy.json has the differences", findings)
    if best["fraction_of_copy"] < params.kernel_target:
        findings.append(f"fused kernel at {best['fraction_of_copy']:.0%} of a same-size device copy "
                        f"(target {params.kernel_target:.0%})")
    speedups = ", ".join(f"{r['name']} {r['speedup']:.0f}x" for r in ported if r["speedup"])
    message = (f"{len(ported)} of {len(reports)} functions ported and equal to NumPy ({speedups}); fused "
               f"normalisation {best['bandwidth_gbs']:,.0f} GB/s = {best['fraction_of_copy']:.0%} of a device copy "
               f"({kernel['copy']['bandwidth_gbs']:,.0f} GB/s)")
    return Result.succeeded(message, findings)


def report_markdown(result: dict, reports: list[dict]) -> str:
    inp = result["inputs"]
    lines = ["# NumPy preprocessing on CuPy (AG-DS-CUPY-001)", "",
             f"{result['gpu']}, CuPy {result['cupy']}, NumPy {result['numpy']}. Image {inp['image'][0]} uint8, "
             f"batch {inp['batch'][0]} uint8 NHWC. Times are medians; CuPy's are device times "
             "(cupyx.profiler.benchmark).", "",
             "| function | result | NumPy ms | CuPy ms | speed-up | with H2D copy ms | speed-up | GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        if r["numpy_s"] is None:
            lines.append(f"| {r['module']}:{r['name']} | not portable: {r['reason']} | | | | | | |")
            continue
        status = "equal" if r["portable"] else f"equal, but {r['reason'].split('but ', 1)[-1]}"
        lines.append(f"| {r['module']}:{r['name']} | {status} | {1e3 * r['numpy_s']:.2f} | {1e3 * r['device_s']:.3f} | "
                     f"{r['speedup']:.0f}x | {1e3 * r['device_with_copy_s']:.3f} | {r['speedup_with_copy']:.1f}x | "
                     f"{r['bandwidth_gbs']:.0f} |")
    k = result["fused_kernel"]
    lines += ["", f"## Fused normalisation (uint8 NHWC {k['batch']} -> float32 NCHW)", "",
              f"Device-to-device copy of the output's size: {k['copy']['bandwidth_gbs']:,.0f} GB/s (read + written).", "",
              "| variant | equal to NumPy | max abs diff | ms | GB/s | share of copy |", "|---|---|---|---|---|---|"]
    for name, v in k["variants"].items():
        e = v["equivalence"]
        diff = "-" if e["max_abs"] is None else f"{e['max_abs']:.2e}"
        lines.append(f"| {name} | {e['ok']} | {diff} | {1e3 * v['seconds']:.3f} | {v['bandwidth_gbs']:,.0f} | "
                     f"{v['fraction_of_copy']:.0%} |")
    return "\n".join(lines) + "\n"
