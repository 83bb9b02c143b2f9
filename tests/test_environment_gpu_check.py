"""LibTest (AG-DS-LIBTEST-001): the CPU fallback here, the CUDA path where a GPU exists."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil

import pydantic
import pytest

torch = pytest.importorskip("torch")

from atlas.handler import Context  # noqa: E402
from handlers.environment import gpu_check as lib_test  # noqa: E402
from handlers.environment.gpu_check import CPU_FALLBACK, LibTest, compare  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
TF_INSTALLED = importlib.util.find_spec("tensorflow") is not None


def make_ctx(tmp_path, events, **params):
    params = {"conv_size": 16, "matmul_size": 64, **params}
    return Context(task_id="AG-DS-LIBTEST-001", params=LibTest.Params(**params), inputs={},
                   output_dir=tmp_path / "out", project_root=tmp_path, project={},
                   emit=events.append)


def metrics(events):
    return {e["name"]: e for e in events if e["type"] == "metric"}


# --- compare: the pure check every device result goes through ----------------------------

def test_compare_identical_is_exact():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    c = compare(x, x.double(), rtol=0, atol=0)
    assert c.ok and c.max_abs_err == 0 and c.rel_err == 0 and c.total == 20


def test_compare_catches_a_wrong_element():
    ref = torch.ones(10, 10, dtype=torch.float64)
    wrong = ref.float().clone()
    wrong[3, 7] += 0.5
    c = compare(wrong, ref, rtol=1e-2, atol=1e-2)
    assert not c.ok
    assert c.mismatched == 1
    assert c.max_abs_err == pytest.approx(0.5)
    assert c.rel_err == pytest.approx(0.5 / 10.0)      # ||diff|| = 0.5, ||ref|| = 10
    assert "1 of 100 elements beyond rtol=0.01 atol=0.01" in c.describe()


def test_compare_tolerance_follows_allclose_rule():
    ref = torch.full((3,), 100.0, dtype=torch.float64)
    # atol + rtol * |ref| = 0.01 + 1.0: 1.005 off passes, 1.02 off does not
    assert compare(ref + 1.005, ref, rtol=1e-2, atol=1e-2).ok
    assert not compare(ref + 1.02, ref, rtol=1e-2, atol=1e-2).ok


def test_compare_counts_nan_as_mismatch():
    ref = torch.zeros(3, dtype=torch.float64)
    bad = torch.tensor([0.0, float("nan"), 0.0])
    c = compare(bad, ref, rtol=1, atol=1)
    assert c.mismatched == 1 and not c.ok


def test_compare_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) does not match reference \(3, 2\)"):
        compare(torch.zeros(2, 3), torch.zeros(3, 2), rtol=0, atol=0)


# --- params and helpers --------------------------------------------------------------------

def test_params_defaults_and_validation():
    p = LibTest.Params()
    assert (p.conv_size, p.matmul_size, p.rtol, p.atol, p.check_tensorflow) == (64, 1024, 1e-2, 1e-2, True)
    with pytest.raises(pydantic.ValidationError):
        LibTest.Params(matmul_size=0)
    with pytest.raises(pydantic.ValidationError):
        LibTest.Params(unknown=1)


def test_handler_declaration():
    assert LibTest.name == "lib_test"
    assert LibTest.outputs == ("report.json", "nvidia-smi.txt")
    assert LibTest.requires == ("torch",) and LibTest.gpu_env


def test_select_devices():
    assert lib_test.select_devices([], 2) == ([0, 1], None)
    assert lib_test.select_devices([1], 2) == ([1], None)
    assert lib_test.select_devices([0], 0) == ([], None)
    devices, problem = lib_test.select_devices([0, 3], 2)
    assert devices == [] and problem[0].startswith("assigned device(s) cuda:3 not visible")


def test_cuda_hidden(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert lib_test.cuda_hidden()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert not lib_test.cuda_hidden()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert not lib_test.cuda_hidden()


# --- the whole step on this machine's CPU --------------------------------------------------

@no_cuda
def test_cpu_fallback_succeeds_and_checks_the_cpu(tmp_path):
    events: list[dict] = []
    result = LibTest().run(make_ctx(tmp_path, events))

    assert result.status == "succeeded", result.message
    assert result.message.startswith(CPU_FALLBACK)
    assert any(f.startswith("no CUDA device: CPU fallback") for f in result.findings)
    assert any(f.startswith(f"torch {torch.__version__}") for f in result.findings)

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task"] == "AG-DS-LIBTEST-001" and report["status"] == "succeeded"
    assert report["params"]["conv_size"] == 16 and report["params"]["matmul_size"] == 64
    assert report["cpu_fallback"] is True
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] is False and report["torch"]["devices"] == []
    assert report["cudnn"]["available"] == torch.backends.cudnn.is_available()
    assert report["findings"] == result.findings

    [check] = report["checks"]
    assert check["device"] == "cpu" and check["ok"] and check["error"] is None
    # ResNet stem conv: (8, 3, 16, 16) -> (8, 64, 8, 8); float32 vs float64 is ~1e-7 off
    assert check["conv2d"]["total"] == 8 * 64 * 8 * 8
    assert check["matmul"]["total"] == 64 * 64
    for op in ("conv2d", "matmul"):
        assert check[op]["mismatched"] == 0
        assert 0 < check[op]["max_abs_err"] < 1e-4
        assert 0 < check[op]["rel_err"] < 1e-5
        assert check[op]["ms"] > 0

    smi = (tmp_path / "out" / "nvidia-smi.txt").read_text()
    if shutil.which("nvidia-smi") is None:
        assert smi == "nvidia-smi not found\n"
        assert report["nvidia_smi"]["found"] is False
        assert "nvidia-smi not found" in result.findings

    got = metrics(events)
    assert set(got) == {"conv_max_abs_err", "conv_rel_err", "conv_ms", "matmul_max_abs_err",
                        "matmul_rel_err", "matmul_ms", "matmul_tflops"}
    assert got["conv_max_abs_err"]["value"] == pytest.approx(check["conv2d"]["max_abs_err"])
    assert got["matmul_ms"]["unit"] == "ms" and got["matmul_ms"]["step"] is None
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 1
    assert any(e["type"] == "progress_end" for e in events)


@no_cuda
def test_tensorflow_finding(tmp_path):
    result = LibTest().run(make_ctx(tmp_path, []))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    if TF_INSTALLED:
        assert report["tensorflow"]["installed"] is True
        assert any(f.startswith("TensorFlow") for f in result.findings)
    else:
        assert report["tensorflow"] == {"installed": False}
        assert "TensorFlow not installed" in result.findings
        assert result.message.endswith("; TensorFlow not installed")


@no_cuda
def test_tensorflow_check_can_be_turned_off(tmp_path):
    result = LibTest().run(make_ctx(tmp_path, [], check_tensorflow=False))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result.status == "succeeded" and "tensorflow" not in report
    assert not any("TensorFlow" in f for f in result.findings)


@no_cuda
def test_zero_tolerance_fails_on_real_float32_error(tmp_path):
    # float32 cannot match the float64 reference exactly: the step must say so
    result = LibTest().run(make_ctx(tmp_path, [], rtol=0.0, atol=0.0, check_tensorflow=False))
    assert result.status == "failed"
    assert result.message.startswith("cpu (CPU): conv2d differs from the float64 CPU reference: ")
    assert "beyond rtol=0 atol=0, max abs err" in result.message
    assert "rtol/atol" in result.hint
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and report["checks"][0]["ok"] is False


@no_cuda
def test_wrong_convolution_fails_the_step(tmp_path, monkeypatch):
    real_conv = lib_test.conv

    def off_by_half(torch_, x, w):  # wrong only for the device result, not the reference
        out = real_conv(torch_, x, w)
        return out + 0.5 if x.dtype == torch.float32 else out

    monkeypatch.setattr(lib_test, "conv", off_by_half)
    result = LibTest().run(make_ctx(tmp_path, [], check_tensorflow=False))
    assert result.status == "failed"
    assert "cpu (CPU): conv2d differs" in result.message
    assert "max abs err 0.5" in result.message
    assert any("MISMATCH" in f for f in result.findings)


@no_cuda
def test_gpu_seen_by_nvidia_smi_but_not_torch_fails(tmp_path, monkeypatch):
    gpu = {"index": 0, "name": "NVIDIA H100", "memory_mib": 81559, "compute_capability": "9.0",
           "driver": "550.54"}
    monkeypatch.setattr(lib_test, "run_nvidia_smi", lambda: (
        "fake table\n", {"found": True, "returncode": 0, "gpus": [gpu], "error": None}))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = LibTest().run(make_ctx(tmp_path, [], check_tensorflow=False))
    assert result.status == "failed"
    assert result.message == "nvidia-smi lists 1 GPU(s) but torch.cuda.is_available() is False"
    assert "torch build" in result.hint
    assert "nvidia-smi: 1 GPU(s), driver 550.54: 0: NVIDIA H100 (81559 MiB, sm 9.0)" in result.findings


# --- the CUDA path -------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_devices_pass(tmp_path):
    events: list[dict] = []
    result = LibTest().run(make_ctx(tmp_path, events, conv_size=64, matmul_size=1024))
    assert result.status == "succeeded", f"{result.message} / {result.hint}"
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    count = torch.cuda.device_count()
    assert report["torch"]["cuda_available"] is True
    assert len(report["torch"]["devices"]) == count > 0
    assert all(d["total_memory_bytes"] > 0 and d["multiprocessor_count"] > 0
               for d in report["torch"]["devices"])
    assert report["cpu_fallback"] is False
    assert [c["device"] for c in report["checks"]] == [f"cuda:{i}" for i in range(count)]
    for check in report["checks"]:
        assert check["ok"] and check["error"] is None, check
        for op in ("conv2d", "matmul"):
            assert check[op]["mismatched"] == 0
            assert math.isfinite(check[op]["max_abs_err"]) and check[op]["ms"] > 0
    assert not any(f.startswith(CPU_FALLBACK) for f in result.findings)
    assert "NVIDIA-SMI" in (tmp_path / "out" / "nvidia-smi.txt").read_text()
    steps = {e["step"] for e in events if e["type"] == "metric"}
    assert steps == set(range(count))
