"""Porting NumPy code to another array module (CuPy) and proving it: which functions of a
user's module take an array module `xp`, what in them cannot run on the GPU (read from the
source), whether they give the same result with both modules on the same inputs, and how
fast each is.

Everything that touches the second module goes through an `ArrayBackend` (its module, the
copies to and from it, its timer), so the bookkeeping is tested on the CPU with a fake
module and runs on the GPU with CuPy unchanged.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import textwrap
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# A float output may differ by this much relative to the reference's largest magnitude:
# float32 reductions (mean, std, cumulative sums) add in a different order on the GPU,
# a few units in the last place; 1e-4 leaves room for that and catches a wrong formula.
FLOAT_RTOL = 1e-4
# An integer output (a lookup-table result) may differ by one level where a float32 value
# before rounding sat within rounding error of .5, on at most this share of elements.
INT_MAX_DIFF, INT_MAX_SHARE = 1, 1e-3
INPUT_NAMES = {"image": "image", "img": "image", "batch": "batch", "images": "batch"}
# Names of NumPy that are fine on any array module (dtypes and constants).
NUMPY_CONSTANTS = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "bool_",
                   "pi", "e", "inf", "nan", "newaxis", "dtype"}
NUMPY_ONLY_LIBRARIES = {"scipy", "cv2", "PIL", "skimage", "sklearn"}


@dataclass
class ArrayBackend:
    """A second array module and how to reach it."""
    name: str
    xp: types.ModuleType
    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]
    # timer(fn, args, repeat) -> seconds per call (median), fn run on device arrays
    timer: Callable[[Callable, tuple, int], float]
    synchronize: Callable[[], None] = lambda: None


def wall_timer(fn: Callable, args: tuple, repeat: int) -> float:
    """Median seconds per call on the host clock (the NumPy side), after one warm-up call."""
    fn(*args)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


@dataclass
class PortableFunction:
    name: str
    qualname: str
    input_kind: str | None           # "image" | "batch" | None (no input we know how to build)
    static_issues: list[str] = field(default_factory=list)
    line: int = 0


def load_module(path: Path) -> types.ModuleType:
    """Import a user's .py file by path, under a name of its own (never shadowing a package)."""
    name = f"atlas_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _numpy_aliases(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name == "numpy"}
    return names or {"np", "numpy"}


def static_issues(func: Callable) -> list[str]:
    """What in a function's source keeps it off the GPU, each with its line."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
        module_tree = ast.parse(Path(inspect.getsourcefile(func)).read_text(encoding="utf-8"))
    except (OSError, TypeError, SyntaxError):
        return []
    tree = ast.parse(source)
    numpy_names = _numpy_aliases(module_tree)
    first = func.__code__.co_firstlineno - 1
    issues = []
    array_params = {a.arg for a in tree.body[0].args.args if a.arg in INPUT_NAMES}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 1) + first
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in numpy_names and node.attr not in NUMPY_CONSTANTS):
            if node.attr == "vectorize":
                issues.append(f"line {line}: {node.value.id}.vectorize runs a Python function per pixel on the CPU")
            else:
                issues.append(f"line {line}: calls NumPy directly ({node.value.id}.{node.attr}) instead of xp")
        elif isinstance(node, (ast.For, ast.comprehension)):
            target = node.iter
            if _loops_over_pixels(target, array_params):
                issues.append(f"line {line}: Python loop over pixels, rows or columns: each step is a "
                              f"separate GPU launch and a synchronisation")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if mod and mod.split(".")[0] in NUMPY_ONLY_LIBRARIES:
                issues.append(f"line {line}: imports {mod}, which works on NumPy arrays only")
    return sorted(set(issues), key=lambda s: int(s.split(":")[0].split()[1]))


def _loops_over_pixels(iterable: ast.AST, array_params: set[str]) -> bool:
    """`range(image.shape[0])`, `range(len(image))`, `range(h)` after `h, w = image.shape`,
    or iterating the array itself."""
    if isinstance(iterable, ast.Name):
        return iterable.id in array_params
    if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name) and iterable.func.id == "range":
        text = ast.unparse(iterable)
        return any(p in text for p in array_params) or any(k in text for k in (".shape", "len("))
    return False


def discover(module: types.ModuleType) -> tuple[list[PortableFunction], list[str]]:
    """(functions written against `xp`, names skipped with the reason)."""
    found, skipped = [], []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
            continue
        params = list(inspect.signature(obj).parameters)
        if "xp" not in params:
            skipped.append(f"{name}: no `xp` parameter (not written against an array module)")
            continue
        kind = INPUT_NAMES.get(params[0]) if params else None
        found.append(PortableFunction(name, obj.__qualname__, kind, static_issues(obj), obj.__code__.co_firstlineno))
    return found, skipped


@dataclass
class Equivalence:
    ok: bool
    shape: tuple | None = None
    dtype: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    differing_share: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def compare(reference: Any, candidate: Any) -> Equivalence:
    """Same shape and dtype, values within the tolerance of their kind."""
    ref, got = np.asarray(reference), np.asarray(candidate)
    if ref.shape != got.shape:
        return Equivalence(False, ref.shape, str(ref.dtype), error=f"shape {got.shape}, NumPy gives {ref.shape}")
    if ref.dtype != got.dtype:
        return Equivalence(False, ref.shape, str(ref.dtype), error=f"dtype {got.dtype}, NumPy gives {ref.dtype}")
    if ref.size == 0:
        return Equivalence(True, ref.shape, str(ref.dtype), 0.0, 0.0, 0.0)
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    scale = max(1.0, float(np.abs(ref.astype(np.float64)).max()))
    max_abs, share = float(diff.max()), float((diff > 0).mean())
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        ok = max_abs <= INT_MAX_DIFF and share <= INT_MAX_SHARE
    else:
        ok = bool(np.isfinite(got).all() == np.isfinite(ref).all()) and max_abs <= FLOAT_RTOL * scale
    return Equivalence(bool(ok), ref.shape, str(ref.dtype), max_abs, max_abs / scale, share)


@dataclass
class FunctionReport:
    name: str
    portable: bool
    reason: str = ""
    static_issues: list[str] = field(default_factory=list)
    equivalence: dict | None = None
    numpy_s: float | None = None
    device_s: float | None = None
    device_with_copy_s: float | None = None
    speedup: float | None = None
    speedup_with_copy: float | None = None
    bytes_moved: int | None = None
    bandwidth_gbs: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def port_function(module: types.ModuleType, info: PortableFunction, inputs: dict[str, np.ndarray],
                  backend: ArrayBackend, repeat: int = 10) -> FunctionReport:
    """Run one function with NumPy and with the backend on the same input; compare; time."""
    func = getattr(module, info.name)
    report = FunctionReport(info.name, False, static_issues=list(info.static_issues))
    if info.input_kind is None or info.input_kind not in inputs:
        report.reason = "its first parameter is not an image or a batch, so no input could be built for it"
        return report
    host = inputs[info.input_kind]
    try:
        reference = func(host, xp=np)
    except Exception as exc:
        report.reason = f"fails with NumPy on the test input: {_error_text(exc)}"
        return report
    try:
        device_in = backend.to_device(host)
        out = func(device_in, xp=backend.xp)
        backend.synchronize()
        result = backend.to_host(out)
    except Exception as exc:
        report.reason = f"does not run with {backend.name}: {_error_text(exc)}"
        return report
    eq = compare(reference, result)
    report.equivalence = eq.as_dict()
    if not eq.ok:
        report.reason = f"{backend.name} result differs from NumPy's: " + (eq.error or
                        f"max |diff| {eq.max_abs:.3g} (relative {eq.max_rel:.3g}), {eq.differing_share:.2%} of values")
        return report
    report.portable = not info.static_issues
    if info.static_issues:
        report.reason = "gives NumPy's result, but " + "; ".join(i.split(": ", 1)[1] for i in info.static_issues)
    report.numpy_s = wall_timer(lambda x: func(x, xp=np), (host,), repeat)
    report.device_s = backend.timer(lambda x: func(x, xp=backend.xp), (device_in,), repeat)
    report.device_with_copy_s = backend.timer(lambda x: func(backend.to_device(x), xp=backend.xp), (host,), repeat)
    report.speedup = report.numpy_s / report.device_s if report.device_s else None
    report.speedup_with_copy = report.numpy_s / report.device_with_copy_s if report.device_with_copy_s else None
    report.bytes_moved = int(host.nbytes + np.asarray(reference).nbytes)
    report.bandwidth_gbs = report.bytes_moved / report.device_s / 1e9 if report.device_s else None
    return report


def module_files(root: Path, names: list[str]) -> list[Path]:
    """The .py files named (files, or folders searched one level deep), sorted."""
    files: list[Path] = []
    for name in names:
        path = root / name
        if path.is_dir():
            files += sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
        elif path.suffix == ".py" and path.is_file():
            files.append(path)
    return files
