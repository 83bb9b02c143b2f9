"""AG-DS-TRTENGINE-001's own logic, in-process: the builder it picks, the profile it reads,
which ONNX model each precision takes under TensorRT 10 and 11, the records it writes, and
the skip when there is no TensorRT at all. trtexec here is a test double (it writes a few
bytes where the engine goes): it checks the plumbing, never a real engine."""
from __future__ import annotations

import logging
import shlex

import pytest

from atlas.handler import Context
from handlers.inference.trt.profile import batch_profile, build_settings, write_profile
from handlers.inference.trt.record import find_engines
from handlers.inference.engine_build import TrtEngine, TrtEngineParams, timing_cache_path
from handlers.inference.trt.choose import Found
from fake_trtexec import WRITE_ENGINE, fake_trtexec

ONNX = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8_qdq.onnx"}


def context(tmp_path, **params):
    for name in ONNX.values():
        (tmp_path / name).write_bytes(b"onnx " + name.encode())
    profile = batch_profile("input", 3, 32, 1, 4, 16)
    write_profile(tmp_path / "profile.yaml", {
        "profile": profile.as_dict(), "precisions": ["fp32", "fp16", "int8"], "onnx": ONNX,
        "tensorrt": build_settings(profile, ONNX, 1.0, ["fp32", "fp16", "int8"])})
    inputs = {"onnx": tmp_path / "model.onnx", "onnx_fp16": tmp_path / "model_fp16.onnx",
              "onnx_int8": tmp_path / "model_int8_qdq.onnx", "profile": tmp_path / "profile.yaml"}
    return Context("AG-DS-TRTENGINE-001", TrtEngineParams(**params), inputs, tmp_path / "out", tmp_path, {},
                   log=logging.getLogger("test"))


def logging_trtexec(tmp_path, version: str):
    """The double of TensorRT `version`'s major, appending each command line to calls.txt."""
    body = f'echo "$@" >> {shlex.quote(str(tmp_path / "calls.txt"))}\n' + WRITE_ENGINE
    return fake_trtexec(tmp_path, body, major="11" if version.startswith("v11") else "10")


class _FakeCuda:
    """torch.cuda as it looks on an H100, for gpu_identity to read."""
    @staticmethod
    def is_available():
        return True

    @staticmethod
    def get_device_name(index=0):
        return "NVIDIA H100 80GB HBM3"

    @staticmethod
    def get_device_capability(index=0):
        return (9, 0)


def test_without_tensorrt_or_trtexec_the_step_is_skipped_with_the_hint(tmp_path, monkeypatch):
    monkeypatch.setattr("handlers.inference.trt.choose.detect", lambda: Found())
    result = TrtEngine().run(context(tmp_path))
    assert result.status == "skipped" and "TensorRT not installed" in result.message
    assert "tensorrt-rtx" in result.hint and "tensorrt-cu13" in result.hint


def test_trtexec_without_a_gpu_is_skipped_saying_it_builds_on_the_gpu(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr("handlers.inference.trt.choose.detect", lambda: Found(trtexec="/usr/bin/trtexec"))
    result = TrtEngine().run(context(tmp_path))
    assert result.status == "skipped" and result.message.startswith("no CUDA device: full TensorRT and trtexec")
    assert "tensorrt-rtx" in result.hint


@pytest.mark.parametrize("version, expected", [
    ("v101300", {"fp32": ("model.onnx", []), "fp16": ("model.onnx", ["--fp16"]),
                 "int8": ("model_int8_qdq.onnx", ["--int8", "--fp16"])}),
    ("v110400", {"fp32": ("model.onnx", ["--stronglyTyped"]), "fp16": ("model_fp16.onnx", ["--stronglyTyped"]),
                 "int8": ("model_int8_qdq.onnx", ["--stronglyTyped"])}),
])
def test_trtexec_fallback_builds_each_precision_from_the_right_model(tmp_path, monkeypatch, version, expected):
    torch = pytest.importorskip("torch")
    tool = logging_trtexec(tmp_path, version)
    monkeypatch.setattr("handlers.inference.trt.choose.detect", lambda: Found(trtexec=tool))
    monkeypatch.setattr(torch, "cuda", _FakeCuda)      # gpu_identity reads the GPU from torch, as on an H100
    result = TrtEngine().run(context(tmp_path, workspace_gb=2))
    assert result.status == "succeeded", (result.message, result.hint)
    assert "(trtexec) on NVIDIA H100 80GB HBM3 (sm 9.0)" in result.message
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    builds = [c for c in calls if "--saveEngine=" in c]
    assert len(builds) == 3
    for line, (precision, (onnx, flags)) in zip(builds, expected.items()):
        args = line.split()
        assert f"--onnx={tmp_path / onnx}" in args and f"model_{precision}.engine" in line
        assert [a for a in args if a in ("--fp16", "--int8", "--stronglyTyped")] == flags
        assert "--memPoolSize=workspace:2048M" in args and "--minShapes=input:1x3x32x32" in args
    found, problems = find_engines(tmp_path / "out" / "engines")
    assert problems == [] and sorted(r.precision for r, _ in found) == ["fp16", "fp32", "int8"]
    assert all(r.builder == "trtexec" and r.gpu == "NVIDIA H100 80GB HBM3" for r, _ in found)
    cache = timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", found[0][0].tensorrt_version)
    assert cache.parent == tmp_path / ".atlas" / "cache" / "tensorrt" and cache.is_file()
