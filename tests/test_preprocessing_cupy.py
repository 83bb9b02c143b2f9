"""AG-DS-CUPY-001 on the CPU: the project's NumPy preprocessing against reference values,
and the porting machinery (discovery, what keeps code off the GPU, the equivalence check,
timing and bandwidth bookkeeping) on a fake array module; skip reasons and install hints.
The CuPy runs themselves are marked `gpu`."""
from __future__ import annotations

import importlib.util
import math
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from handlers.preprocessing import array_port

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("xray_preprocessing", ROOT / "data_processing_scripts" / "xray_preprocessing.py")
xr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(xr)
RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (64, 48), dtype=np.uint8)


# ------------------------------------------------------------------ the NumPy functions

def test_window_maps_the_window_to_0_1_and_clips():
    img = np.array([[0, 28, 128, 228, 255]], np.uint8)
    np.testing.assert_allclose(xr.window(img, center=128, width=200), [[0.0, 0.0, 0.5, 1.0, 1.0]])


def test_minmax_and_zscore():
    img = np.array([[10, 20], [30, 50]], np.uint8)
    np.testing.assert_allclose(xr.minmax_normalize(img), [[0, 0.25], [0.5, 1.0]])
    z = xr.zscore_normalize(img)
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1) < 1e-5
    assert np.all(xr.minmax_normalize(np.full((3, 3), 7, np.uint8)) == 0)


def test_gamma():
    img = np.array([[0, 64, 255]], np.uint8)
    np.testing.assert_allclose(xr.gamma_correct(img, gamma=0.5), [[0.0, math.sqrt(64 / 255), 1.0]], rtol=1e-6)


def test_histogram_equalisation_spreads_the_levels_and_keeps_their_order():
    img = (RNG.random((64, 64)) * 60 + 100).astype(np.uint8)         # levels 100..159 only
    out = xr.histogram_equalize(img)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)      # monotone mapping
    # reference: the textbook formula, one level at a time
    hist = np.bincount(img.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    cmin = cdf[cdf > 0][0]
    expected = np.round((cdf[img] - cmin) * 255 / (cdf[-1] - cmin)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def _clahe_reference(image, tiles, clip_limit):
    """Per pixel, the same definition written plainly with loops (small images only)."""
    h, w = image.shape
    th, tw = h // tiles, w // tiles
    luts = np.zeros((tiles, tiles, 256))
    limit = max(1.0, clip_limit * th * tw / 256.0)
    for i in range(tiles):
        for j in range(tiles):
            block = image[i * th:(i + 1) * th, j * tw:(j + 1) * tw]
            hist = np.bincount(block.ravel(), minlength=256).astype(np.float64)
            excess = np.maximum(hist - limit, 0).sum()
            hist = np.minimum(hist, limit) + excess / 256
            cdf = np.cumsum(hist)
            luts[i, j] = np.clip((cdf - cdf[0]) * 255 / max(cdf[-1] - cdf[0], 1), 0, 255)
    out = np.zeros_like(image)
    for y in range(h):
        for x in range(w):
            ty, tx = (y + 0.5) / th - 0.5, (x + 0.5) / tw - 0.5
            y0, x0 = min(max(math.floor(ty), 0), tiles - 1), min(max(math.floor(tx), 0), tiles - 1)
            y1, x1 = min(y0 + 1, tiles - 1), min(x0 + 1, tiles - 1)
            fy, fx = min(max(ty - y0, 0), 1), min(max(tx - x0, 0), 1)
            v = image[y, x]
            top = luts[y0, x0, v] * (1 - fx) + luts[y0, x1, v] * fx
            bottom = luts[y1, x0, v] * (1 - fx) + luts[y1, x1, v] * fx
            out[y, x] = min(max(round(top * (1 - fy) + bottom * fy), 0), 255)
    return out


def test_clahe_matches_its_per_pixel_definition():
    img = (RNG.random((32, 40)) ** 2 * 255).astype(np.uint8)
    out = xr.clahe(img, tiles=4, clip_limit=2.0)
    ref = _clahe_reference(img, 4, 2.0)
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01           # float32 vs float64 rounding at .5
    with pytest.raises(ValueError, match="multiple of 8 tiles"):
        xr.clahe(np.zeros((30, 30), np.uint8))


def test_bilinear_resize_matches_torch_without_antialiasing():
    torch = pytest.importorskip("torch")
    out = xr.resize_bilinear(IMAGE, size=24)
    ref = torch.nn.functional.interpolate(torch.from_numpy(IMAGE).float()[None, None], size=(24, 24),
                                          mode="bilinear", align_corners=False, antialias=False)[0, 0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_nchw_batch_is_the_models_normalisation():
    batch = RNG.integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    out = xr.to_nchw_batch(batch)
    assert out.shape == (2, 3, 5, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    for c, (m, s) in enumerate(zip(xr.IMAGENET_MEAN, xr.IMAGENET_STD)):
        np.testing.assert_allclose(out[:, c], (batch[..., c] / 255.0 - m) / s, rtol=1e-5, atol=1e-6)


def test_crop_to_content_and_sigmoid_contrast():
    img = np.zeros((10, 12), np.uint8)
    img[2:5, 3:9] = 200
    assert xr.crop_to_content(img).shape == (3, 6)
    out = xr.sigmoid_contrast(np.array([[0, 128, 255]], np.uint8), gain=10, cutoff=0.5)
    np.testing.assert_allclose(out, [[1 / (1 + math.exp(5)), 1 / (1 + math.exp(-10 * (128 / 255 - 0.5))),
                                      1 / (1 + math.exp(-5))]], rtol=1e-6)


# ------------------------------------------------------------------ porting, on a fake array module

class DeviceArray:
    """Stands in for a CuPy array: arithmetic and the methods the test module uses work,
    implicit conversion to NumPy fails as CuPy's does."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()`")

    def _wrap(self, other, op):
        other = other.a if isinstance(other, DeviceArray) else other
        return DeviceArray(op(self.a, other))

    __mul__ = lambda self, o: self._wrap(o, np.multiply)        # noqa: E731
    __add__ = lambda self, o: self._wrap(o, np.add)             # noqa: E731

    def astype(self, dtype):
        return DeviceArray(self.a.astype(dtype))

    @property
    def shape(self):
        return self.a.shape

    def __getitem__(self, key):
        return DeviceArray(self.a[key])

    def max(self):
        return DeviceArray(self.a.max())

    def __int__(self):
        return int(self.a)


fake_xp = types.SimpleNamespace(float32=np.float32, uint8=np.uint8,
                                sqrt=lambda x: DeviceArray(np.sqrt(x.a)))


def fake_backend(seconds=0.001):
    calls = []

    def timer(fn, args, repeat):
        fn(*args)
        calls.append(repeat)
        return seconds
    return array_port.ArrayBackend("fakegpu", fake_xp, DeviceArray, lambda d: d.a.copy(), timer), calls


USER_MODULE = '''
import numpy as np

def double(image, xp=np):
    return image * 2

def root(image, xp=np):
    return xp.sqrt(image.astype(xp.float32))

def host_only(image, xp=np):
    return np.asarray(image) * 2

def rows(image, xp=np):
    kept = [y for y in range(image.shape[0]) if int(image[y].max()) > 3]
    return image[kept[0]:kept[-1] + 1]

def off_by_one(image, xp=np):
    return image + (1 if xp is not np else 0)

def needs_a_shape(shape, xp=np):
    return xp.zeros(shape)

def not_written_for_xp(image):
    return image
'''


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "user_prep.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    module = array_port.load_module(path)
    yield module
    sys.modules.pop(module.__name__, None)


def test_discovery_lists_xp_functions_and_says_why_others_are_left(user_module):
    found, skipped = array_port.discover(user_module)
    assert [f.name for f in found] == ["double", "host_only", "needs_a_shape", "off_by_one", "root", "rows"]
    assert skipped == ["not_written_for_xp: no `xp` parameter (not written against an array module)"]
    kinds = {f.name: f.input_kind for f in found}
    assert kinds["double"] == "image" and kinds["needs_a_shape"] is None


def test_static_issues_name_the_line_and_the_habit(user_module):
    found = {f.name: f for f in array_port.discover(user_module)[0]}
    assert found["double"].static_issues == []
    assert found["host_only"].static_issues == ["line 11: calls NumPy directly (np.asarray) instead of xp"]
    assert "Python loop over pixels, rows or columns" in found["rows"].static_issues[0]
    real = {f.name: f for f in array_port.discover(xr)[0]}
    assert any("np.vectorize runs a Python function per pixel" in i for i in real["sigmoid_contrast"].static_issues)
    assert any("Python loop" in i for i in real["crop_to_content"].static_issues)
    clean = ["window", "minmax_normalize", "zscore_normalize", "gamma_correct", "histogram_equalize", "clahe",
             "resize_bilinear", "to_nchw_batch"]
    assert all(real[name].static_issues == [] for name in clean)


def test_porting_proves_equality_times_both_and_counts_bytes(user_module):
    backend, calls = fake_backend(seconds=0.002)
    found = {f.name: f for f in array_port.discover(user_module)[0]}
    image = RNG.integers(0, 100, (16, 8), dtype=np.uint8)
    report = array_port.port_function(user_module, found["double"], {"image": image}, backend, repeat=7)
    assert report.portable and report.reason == ""
    assert report.equivalence["ok"] and report.equivalence["max_abs"] == 0
    assert report.device_s == 0.002 and report.device_with_copy_s == 0.002 and calls == [7, 7]
    assert report.numpy_s > 0 and report.speedup == pytest.approx(report.numpy_s / 0.002)
    assert report.bytes_moved == image.nbytes * 2
    assert report.bandwidth_gbs == pytest.approx(image.nbytes * 2 / 0.002 / 1e9)


def test_a_function_that_needs_numpy_is_reported_not_crashed_on(user_module):
    backend, _ = fake_backend()
    found = {f.name: f for f in array_port.discover(user_module)[0]}
    image = RNG.integers(0, 100, (16, 8), dtype=np.uint8)
    report = array_port.port_function(user_module, found["host_only"], {"image": image}, backend)
    assert not report.portable and report.numpy_s is None
    assert report.reason.startswith("does not run with fakegpu: TypeError: Implicit conversion to a NumPy array")
    rows = array_port.port_function(user_module, found["rows"], {"image": image}, backend)
    assert not rows.portable and rows.equivalence["ok"]
    assert rows.reason.startswith("gives NumPy's result, but Python loop over pixels")
    wrong = array_port.port_function(user_module, found["off_by_one"], {"image": image}, backend)
    assert not wrong.portable and "differs from NumPy's" in wrong.reason
    none = array_port.port_function(user_module, found["needs_a_shape"], {"image": image}, backend)
    assert not none.portable and "no input could be built" in none.reason


@pytest.mark.parametrize("ref, got, ok", [
    (np.array([1.0, 2.0], np.float32), np.array([1.0, 2.0 + 1e-5], np.float32), True),
    (np.array([1.0, 2.0], np.float32), np.array([1.0, 2.01], np.float32), False),
    (np.array([1000.0], np.float32), np.array([1000.05], np.float32), True),          # relative to the range
    (np.array([np.nan, 1.0], np.float32), np.array([0.0, 1.0], np.float32), False),
    (np.arange(2000, dtype=np.uint8), np.arange(2000, dtype=np.uint8) + (np.arange(2000) == 5), True),
    (np.arange(200, dtype=np.uint8), np.arange(200, dtype=np.uint8) + 2 * (np.arange(200) == 5), False),
    (np.zeros(10, np.uint8), np.ones(10, np.uint8), False),                          # every value off by one
    (np.zeros(3, np.float32), np.zeros(3, np.float64), False),
    (np.zeros(3, np.float32), np.zeros(4, np.float32), False),
])
def test_equivalence_tolerances(ref, got, ok):
    assert array_port.compare(ref, got).ok is ok


def test_module_paths_must_stay_inside_the_project(tmp_path):
    from atlas.handler import Context
    from handlers.ml.errors import DataError
    from handlers.preprocessing import cupy_run
    from handlers.preprocessing.numpy_port import CupyParams
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="climbs out of the project"):       # caught by validate
        CupyParams(modules=["../elsewhere"])
    # and at run time too (params built without validation, a link swapped in after validate)
    ctx = Context("AG-DS-CUPY-001", CupyParams.model_construct(modules=["../elsewhere"]), {}, tmp_path / "out",
                  tmp_path / "proj", {})
    (tmp_path / "proj").mkdir()
    with pytest.raises(DataError, match="outside the project"):
        cupy_run._modules(ctx, ["../elsewhere"])
    (tmp_path / "proj" / "prep").mkdir()
    with pytest.raises(DataError, match="no Python files"):
        cupy_run._modules(ctx, ["prep"])


def test_the_step_is_skipped_without_cupy_with_the_wheel_for_the_cuda_major(tmp_path, monkeypatch):
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    from atlas.handler import Context
    from handlers.preprocessing.numpy_port import CupyParams, NumpyPort
    import atlas.probe
    monkeypatch.setattr(atlas.probe, "detected_cuda_major", lambda: "12")
    ctx = Context("AG-DS-CUPY-001", CupyParams(), {}, tmp_path, tmp_path, {})
    result = NumpyPort().run(ctx)
    assert result.status == "skipped" and result.message.startswith("CuPy is not installed")
    assert result.hint.startswith("pip install cupy-cuda12x ")


@pytest.mark.parametrize("major, wheel", [("12", "cupy-cuda12x"), ("13", "cupy-cuda13x"), (None, "cupy-cuda13x")])
def test_cupy_hint_per_major(major, wheel):
    from atlas.probe import cupy_install_hint
    assert cupy_install_hint(major).startswith(f"pip install {wheel} ")


# ------------------------------------------------------------------ on the GPU

@pytest.mark.gpu
def test_fused_kernels_match_numpy_on_the_gpu():
    cupy = pytest.importorskip("cupy")
    from handlers.preprocessing import cupy_kernels
    from handlers.preprocessing.cupy_run import cupy_backend, fused_kernel
    for shape in ((3, 8, 8, 3), (2, 5, 7, 3)):                 # H*W divisible by 4, and not
        batch = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        ref = xr.to_nchw_batch(batch)
        for name, kernel in cupy_kernels.VARIANTS.items():
            out = cupy.asnumpy(kernel(cupy.asarray(batch), xr.IMAGENET_MEAN, xr.IMAGENET_STD))
            assert array_port.compare(ref, out).ok, name
    result = fused_kernel(cupy_backend(), np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), 5)
    assert all(v["equivalence"]["ok"] for v in result["variants"].values())
    assert result["copy"]["bytes"] == 2 * 16 * 3 * 32 * 32 * 4     # bookkeeping; speed lives in the benchmark


@pytest.mark.gpu
def test_the_project_module_ports_to_cupy():
    pytest.importorskip("cupy")
    from handlers.preprocessing.cupy_run import cupy_backend, test_inputs
    inputs = test_inputs(256, 8, 32)
    backend = cupy_backend()
    found = {f.name: f for f in array_port.discover(xr)[0]}
    reports = {name: array_port.port_function(xr, info, inputs, backend, repeat=3) for name, info in found.items()}
    for name in ("window", "minmax_normalize", "zscore_normalize", "gamma_correct", "histogram_equalize", "clahe",
                 "resize_bilinear", "to_nchw_batch"):
        assert reports[name].portable, (name, reports[name].reason)
    assert not reports["sigmoid_contrast"].portable and not reports["crop_to_content"].portable
