"""Choosing a builder, the engine records, and building engines with the TensorRT Python API
(through a recording fake of it) and with trtexec (through a stand-in script)."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

import pytest

from fake_trt import ParserFailure, Recorder, builder_module
from fake_trtexec import WRITE_ENGINE, fake_trtexec
from atlas.fingerprint import file_sha256
from handlers.inference.trt.builder import build_engine
from handlers.inference.trt.choose import INSTALL_HINT, NOT_INSTALLED, Found, choose_builder, detect
from handlers.inference.trt.errors import TrtError
from handlers.inference.trt.profile import PRECISIONS, batch_profile, build_settings, settings_for
from handlers.inference.trt.record import EngineRecord, engine_name, find_engines, record_name
from handlers.inference.trt.trtexec import build_with_trtexec, parse_trtexec_version, trtexec_command, trtexec_version

LOG = logging.getLogger("test_trt_builder")
ONNX = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8_qdq.onnx"}


def entry(version: str, precision: str, workspace_gb: float = 1.0) -> dict:
    """One precision's settings merged with the shared keys, as the engine step passes them."""
    chosen = settings_for(build_settings(batch_profile("input", 3, 8, 1, 4, 16), dict(ONNX), workspace_gb,
                                         PRECISIONS), version)
    return {**chosen, **chosen[precision]}


@pytest.fixture
def models(tmp_path):
    for name in ONNX.values():
        (tmp_path / name).write_bytes(b"onnx:" + name.encode())
    return tmp_path


def build(models, version: str, precision: str, recorder: Recorder | None = None, **fake):
    recorder = recorder or Recorder()
    trt = builder_module(recorder, version=version, **fake)
    settings = entry(version, precision)
    record = build_engine(models / settings["onnx"], models / "engines" / engine_name(precision), precision,
                          settings, models / "cache" / "timing.cache", LOG, trt, gpu="Fake GPU",
                          compute_capability="9.0")
    return record, recorder


# ----------------------------------------------------------------------------- choose_builder

def test_choose_prefers_full_tensorrt_on_a_gpu():
    builder, reason, hint = choose_builder(Found(True, True, "/usr/bin/trtexec"), has_gpu=True)
    assert builder == "tensorrt" and "tensorrt Python package" in reason and hint == ""


def test_choose_takes_tensorrt_for_rtx_without_a_gpu():
    builder, reason, _ = choose_builder(Found(True, True, "/usr/bin/trtexec"), has_gpu=False)
    assert builder == "tensorrt-rtx"
    assert "full TensorRT needs a GPU to build" in reason and "builds ahead of time on the CPU" in reason
    assert choose_builder(Found(tensorrt_rtx=True), has_gpu=True)[0] == "tensorrt-rtx"


def test_choose_falls_back_to_trtexec_on_a_gpu_only():
    builder, reason, _ = choose_builder(Found(trtexec="/opt/trt/bin/trtexec"), has_gpu=True)
    assert builder == "trtexec" and "/opt/trt/bin/trtexec" in reason
    builder, reason, hint = choose_builder(Found(trtexec="/opt/trt/bin/trtexec"), has_gpu=False)
    assert builder is None and reason.startswith("no CUDA device") and "tensorrt-rtx" in hint


def test_choose_says_tensorrt_is_not_installed():
    builder, reason, hint = choose_builder(Found(), has_gpu=True)
    assert builder is None and reason == NOT_INSTALLED
    assert "tensorrt_rtx" in reason and "trtexec" in reason
    assert hint == INSTALL_HINT and "atlas-runner[tensorrt-rtx]" in hint and "tensorrt-cu13" in hint


@pytest.mark.parametrize("found, prefer, gpu, expected", [
    (Found(True, False, "/bin/trtexec"), "trtexec", True, "trtexec"),
    (Found(True), "tensorrt", True, "tensorrt"),
    (Found(True), "python-api", True, "tensorrt"),          # the older name
    (Found(True), "tensorrt", False, None),                  # full TensorRT builds on the GPU
    (Found(tensorrt_rtx=True), "tensorrt-rtx", False, "tensorrt-rtx"),
    (Found(trtexec="/bin/trtexec"), "tensorrt-rtx", True, None),
    (Found(True), "trtexec", True, None),
    (Found(trtexec="/bin/trtexec"), "trtexec", False, None),
    (Found(True), "tensorflow", True, None)])
def test_choose_forced_builders(found, prefer, gpu, expected):
    builder, reason, hint = choose_builder(found, prefer, has_gpu=gpu)
    assert builder == expected
    if expected is None:
        assert reason and hint
    else:
        assert "asked for" in reason


def test_forcing_a_missing_builder_says_how_to_get_it():
    _, reason, hint = choose_builder(Found(trtexec="/bin/trtexec"), "tensorrt-rtx")
    assert "tensorrt_rtx is not installed" in reason and "atlas-runner[tensorrt-rtx]" in hint
    _, reason, hint = choose_builder(Found(True), "trtexec")
    assert "not on PATH" in reason


def test_detect_looks_without_importing(monkeypatch, tmp_path):
    tool = tmp_path / "trtexec"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    imported_before = {m for m in ("tensorrt", "tensorrt_rtx") if m in sys.modules}
    found = detect()
    assert found.trtexec == str(tool)
    assert found.tensorrt == (importlib.util.find_spec("tensorrt") is not None)
    assert found.tensorrt_rtx == (importlib.util.find_spec("tensorrt_rtx") is not None)
    assert {m for m in ("tensorrt", "tensorrt_rtx") if m in sys.modules} == imported_before


# ------------------------------------------------------------------------------------ records

def record(engine: str = "model_fp16.engine", size: int = 5, **changes) -> EngineRecord:
    fields = dict(engine=engine, precision="fp16", builder="python-api", tensorrt_version="10.13.0",
                  gpu="NVIDIA H100", compute_capability="9.0", profile=batch_profile("input", 3, 8).as_dict(),
                  build_seconds=12.5, size_bytes=size, onnx="model.onnx", onnx_sha256="ab" * 32,
                  strongly_typed=False, builder_flags=["FP16"], timing_cache={"path": "/c/t.cache", "reused": True})
    return EngineRecord(**{**fields, **changes})


def test_record_round_trips(tmp_path):
    original = record()
    path = tmp_path / record_name("fp16")
    original.write(path)
    assert EngineRecord.read(path) == original
    assert json.loads(path.read_text())["timing_cache"] == {"path": "/c/t.cache", "reused": True}
    assert original.created.endswith("+00:00")
    assert [p.name for p in tmp_path.iterdir()] == ["model_fp16.json"]   # written atomically


def test_record_names():
    assert engine_name("int8") == "model_int8.engine" and record_name("int8") == "model_int8.json"


def test_record_ignores_keys_it_does_not_know(tmp_path):
    path = tmp_path / "model_fp16.json"
    path.write_text(json.dumps({**json.loads(record().to_json()), "added_later": 1}))
    assert EngineRecord.read(path) == record(created=json.loads(path.read_text())["created"])


@pytest.mark.parametrize("text, words", [("{not json", "is not valid JSON"), ("[1, 2]", "expected a JSON object"),
                                         ('{"engine": "e"}', "missing precision")])
def test_a_bad_record_names_its_file(tmp_path, text, words):
    path = tmp_path / "model_fp16.json"
    path.write_text(text)
    with pytest.raises(TrtError) as caught:
        EngineRecord.read(path)
    assert str(path) in caught.value.message and words in caught.value.message
    assert "AG-DS-TRTENGINE-001" in caught.value.hint


def test_a_missing_record_is_a_trt_error(tmp_path):
    with pytest.raises(TrtError, match="not found"):
        EngineRecord.read(tmp_path / "model_fp32.json")


def test_find_engines_keeps_matching_engines_and_says_why_others_are_skipped(tmp_path):
    (tmp_path / "model_fp32.engine").write_bytes(b"12345")
    record(engine="model_fp32.engine", precision="fp32").write(tmp_path / "model_fp32.json")
    (tmp_path / "model_fp16.engine").write_bytes(b"123")            # shorter than recorded
    record().write(tmp_path / "model_fp16.json")
    record(engine="model_int8.engine", precision="int8").write(tmp_path / "model_int8.json")   # no engine
    (tmp_path / "notes.json").write_text("{broken")
    found, problems = find_engines(tmp_path)
    assert [(r.precision, p.name) for r, p in found] == [("fp32", "model_fp32.engine")]
    text = "\n".join(problems)
    assert len(problems) == 3
    assert "model_fp16.engine is 3 bytes but its record says 5" in text
    assert "model_int8.json: engine file model_int8.engine is missing" in text
    assert "notes.json is not valid JSON" in text


def test_find_engines_in_an_empty_folder(tmp_path):
    assert find_engines(tmp_path) == ([], [])


# ---------------------------------------------------------------- build_engine, TensorRT 10 / 11

def test_tensorrt_10_fp16_sets_the_fp16_flag_on_a_weakly_typed_network(models):
    rec, calls = build(models, "10.13.0", "fp16")
    assert calls.args_of("Builder", "create_network") == [(0,)]
    assert [str(a[0]) for a in calls.args_of("IBuilderConfig", "set_flag")] == ["BuilderFlag.FP16"]
    assert calls.args_of("OnnxParser", "parse_from_file") == [(str(models / "model.onnx"),)]
    assert rec.onnx == "model.onnx" and rec.builder_flags == ["FP16"] and not rec.strongly_typed


def test_tensorrt_10_int8_sets_int8_and_fp16_and_parses_the_qdq_model(models):
    rec, calls = build(models, "10.3.0", "int8")
    assert [str(a[0]) for a in calls.args_of("IBuilderConfig", "set_flag")] == ["BuilderFlag.INT8",
                                                                              "BuilderFlag.FP16"]
    assert calls.args_of("OnnxParser", "parse_from_file") == [(str(models / "model_int8_qdq.onnx"),)]
    assert rec.onnx == "model_int8_qdq.onnx"


def test_tensorrt_10_fp32_sets_no_precision_flag(models):
    _, calls = build(models, "10.13.0", "fp32")
    assert not calls.called("IBuilderConfig", "set_flag")


@pytest.mark.parametrize("precision, model", [("fp32", "model.onnx"), ("fp16", "model_fp16.onnx"),
                                              ("int8", "model_int8_qdq.onnx")])
def test_tensorrt_11_builds_strongly_typed_from_the_precision_s_own_model(models, precision, model):
    rec, calls = build(models, "11.4.0", precision)
    assert calls.args_of("Builder", "create_network") == [(1 << 1,)]      # STRONGLY_TYPED is bit 1
    assert not calls.called("IBuilderConfig", "set_flag")
    assert calls.args_of("OnnxParser", "parse_from_file") == [(str(models / model),)]
    assert rec.strongly_typed and rec.builder_flags == [] and rec.onnx == model
    assert rec.tensorrt_version == "11.4.0"


def test_build_applies_workspace_and_profile_and_writes_engine_and_record_facts(models):
    rec, calls = build(models, "10.13.0", "fp32")
    (pool, size), = calls.args_of("IBuilderConfig", "set_memory_pool_limit")
    assert str(pool) == "MemoryPoolType.WORKSPACE" and size == 1 << 30
    assert calls.args_of("IOptimizationProfile", "set_shape") == [
        ("input", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))]
    assert calls.called("IBuilderConfig", "add_optimization_profile")
    engine = models / "engines" / "model_fp32.engine"
    assert engine.read_bytes() == b"serialized-engine"
    assert rec.engine == "model_fp32.engine" and rec.size_bytes == len(b"serialized-engine")
    assert rec.builder == "python-api" and rec.precision == "fp32"
    assert rec.gpu == "Fake GPU" and rec.compute_capability == "9.0"
    assert rec.onnx_sha256 == file_sha256(models / "model.onnx")
    assert rec.profile["max"] == [16, 3, 8, 8]
    assert [p.name for p in (models / "engines").iterdir()] == ["model_fp32.engine"]
    assert rec.family == "tensorrt" and rec.target_compute_capabilities == ["9.0"]
    assert rec.layers["count"] == 4 and rec.layers["layers"][0] == {"name": "q", "type": "QUANTIZE", "outputs": ["INT8"]}
    assert rec.layers["by_type_and_output"]["CONVOLUTION:FLOAT"] == 1


def test_build_seconds_is_the_span_of_the_build_call_alone(models, monkeypatch):
    """The clock is read just before and just after build_serialized_network."""
    import handlers.inference.trt.builder as builder
    ticks = iter([100.0, 102.5])
    real = builder.time.perf_counter
    monkeypatch.setattr(builder.time, "perf_counter", lambda: next(ticks, real()))
    rec, calls = build(models, "10.13.0", "fp32")
    assert rec.build_seconds == 2.5


def test_timing_cache_is_written_then_reused(models):
    cache = models / "cache" / "timing.cache"
    first, calls = build(models, "10.13.0", "fp32")
    assert calls.args_of("IBuilderConfig", "create_timing_cache") == [(b"",)]
    assert first.timing_cache == {"path": str(cache), "reused": False}   # built without a cache to reuse
    assert cache.read_bytes() == b"tactics;"

    second, calls = build(models, "10.13.0", "fp16")
    assert calls.args_of("IBuilderConfig", "create_timing_cache") == [(b"tactics;",)]
    assert second.timing_cache == {"path": str(cache), "reused": True}
    assert cache.read_bytes() == b"tactics;tactics;"


def test_timing_cache_is_attached_without_ignoring_mismatches(models):
    _, calls = build(models, "10.13.0", "fp32")
    (kind, name, args, kwargs), = [c for c in calls.calls if c[:2] == ("IBuilderConfig", "set_timing_cache")]
    assert kwargs == {"ignore_mismatch": False}


def test_parser_errors_are_listed_with_node_and_description(models):
    failures = (ParserFailure(7, "Unsupported operator GridSample", node_name="/grid/GridSample",
                              node_operator="GridSample"),
                ParserFailure(9, "Input tensor has wrong type", code="INVALID_NODE"))
    with pytest.raises(TrtError) as caught:
        build(models, "10.13.0", "fp32", parse_errors=failures)
    message = caught.value.message
    assert message.startswith("TensorRT 10.13.0 could not parse model.onnx: ")
    assert "node 7 (/grid/GridSample, GridSample): Unsupported operator GridSample [UNSUPPORTED_NODE]" in message
    assert "node 9: Input tensor has wrong type [INVALID_NODE]" in message
    assert "opset" in caught.value.hint
    assert not (models / "engines").exists()


def test_a_failed_build_is_a_trt_error_and_leaves_no_engine(models):
    with pytest.raises(TrtError) as caught:
        build(models, "10.13.0", "fp16", engine=None)
    assert "could not build the fp16 engine from model.onnx" in caught.value.message
    assert "workspace" in caught.value.hint
    assert not (models / "engines" / "model_fp16.engine").exists()


def test_tensorrt_10_settings_on_tensorrt_11_name_the_other_version(models):
    recorder = Recorder()
    trt = builder_module(recorder, version="11.4.0")
    chosen = settings_for(build_settings(batch_profile("input", 3, 8, 1, 4, 16), dict(ONNX), 1, PRECISIONS), "10.13")
    settings = {k: v for k, v in {**chosen, **chosen["fp16"]}.items() if k != "tensorrt"}
    with pytest.raises(TrtError) as caught:
        build_engine(models / "model.onnx", models / "e.engine", "fp16", settings, models / "t.cache", LOG, trt)
    assert "BuilderFlag.FP16 does not exist in TensorRT 11.4.0" in caught.value.message
    assert "settings are for TensorRT 10" in caught.value.message and "settings_for" in caught.value.hint


def test_settings_marked_for_another_major_are_refused_before_building(models):
    trt = builder_module(Recorder(), version="11.4.0")
    with pytest.raises(TrtError, match="settings are for TensorRT 10, but TensorRT 11.4.0 is installed"):
        build_engine(models / "model.onnx", models / "e.engine", "fp16", entry("10.13.0", "fp16"),
                     models / "t.cache", LOG, trt)


def test_a_profile_for_another_input_name_is_refused(models):
    with pytest.raises(TrtError, match="profile is for input 'input', but model.onnx has inputs \\['images'\\]"):
        build(models, "10.13.0", "fp32", inputs=("images",))


def test_a_missing_onnx_model_is_named(tmp_path):
    trt = builder_module(Recorder())
    with pytest.raises(TrtError, match="model.onnx not found"):
        build_engine(tmp_path / "model.onnx", tmp_path / "e.engine", "fp32", entry("10.13.0", "fp32"),
                     tmp_path / "t.cache", LOG, trt)


# ------------------------------------------------------------------------------------ trtexec

def test_trtexec_command_for_tensorrt_10(tmp_path):
    command = trtexec_command("/opt/trt/bin/trtexec", tmp_path / "model.onnx", tmp_path / "m.engine",
                              entry("10.13.0", "int8", workspace_gb=2), tmp_path / "t.cache")
    assert command[0] == "/opt/trt/bin/trtexec"
    assert command[1:] == [f"--onnx={tmp_path / 'model.onnx'}", f"--saveEngine={tmp_path / 'm.engine'}",
                           "--memPoolSize=workspace:2048M", "--minShapes=input:1x3x8x8", "--optShapes=input:4x3x8x8",
                           "--maxShapes=input:16x3x8x8", f"--timingCacheFile={tmp_path / 't.cache'}",
                           "--skipInference", "--int8", "--fp16"]


def test_trtexec_command_for_tensorrt_11_is_strongly_typed_only(tmp_path):
    command = trtexec_command("trtexec", tmp_path / "model_fp16.onnx", tmp_path / "m.engine",
                              entry("11.4.0", "fp16"), tmp_path / "t.cache")
    assert "--stronglyTyped" in command
    assert not {"--fp16", "--int8", "--best"} & set(command)


def test_trtexec_command_takes_an_overridden_workspace(tmp_path):
    settings = {**entry("10.13.0", "fp32"), "workspace_bytes": 8 << 30}
    command = trtexec_command("trtexec", tmp_path / "m.onnx", tmp_path / "m.engine", settings, tmp_path / "t")
    assert [a for a in command if a.startswith("--memPoolSize")] == ["--memPoolSize=workspace:8192M"]


@pytest.mark.parametrize("text, version", [
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v101300] [b7] # trtexec --help", "10.13.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100200] # D:\\TensorRT-10.2.0.19\\bin\\trtexec.exe", "10.2.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110400] # trtexec", "11.4.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", "8.6.1"),
    ("[11/21/2026-10:00:00] [I] TensorRT version: 10.13.3\nother", "10.13.3"),
    ("usage: trtexec [options]", None), ("", None)])
def test_trtexec_version_parsing(text, version):
    assert parse_trtexec_version(text) == version


def test_trtexec_version_runs_the_tool(tmp_path):
    assert trtexec_version(fake_trtexec(tmp_path, "exit 0\n")) == "10.13.0"
    assert trtexec_version(str(tmp_path / "nowhere" / "trtexec")) is None


def test_build_with_trtexec_records_the_engine(models):
    tool = fake_trtexec(models, WRITE_ENGINE)
    cache = models / "cache" / "timing.cache"
    rec = build_with_trtexec(tool, models / "model.onnx", models / "engines" / "model_fp16.engine", "fp16",
                             entry("10.13.0", "fp16"), cache, LOG, gpu="Fake GPU", compute_capability="8.9")
    engine = models / "engines" / "model_fp16.engine"
    assert engine.read_bytes() == b"plan-bytes"
    assert rec.builder == "trtexec" and rec.tensorrt_version == "10.13.0" and rec.precision == "fp16"
    assert rec.size_bytes == len(b"plan-bytes") and rec.engine == "model_fp16.engine"
    assert rec.builder_flags == ["FP16"] and not rec.strongly_typed
    assert rec.timing_cache == {"path": str(cache), "reused": False, "loaded_bytes": 0}
    assert [p.name for p in engine.parent.iterdir()] == ["model_fp16.engine"]   # no partial file left

    again = build_with_trtexec(tool, models / "model.onnx", engine, "fp16", entry("10.13.0", "fp16"), cache, LOG,
                               gpu="Fake GPU", compute_capability="8.9")
    assert again.timing_cache == {"path": str(cache), "reused": True, "loaded_bytes": len(b"cache")}


def test_a_cache_file_trtexec_does_not_load_is_not_called_reused(models):
    """The file exists, but this trtexec never says it read it (it ignores the option)."""
    cache = models / "t.cache"
    cache.write_bytes(b"old tactics")
    quiet = 'for arg in "$@"; do case "$arg" in --saveEngine=*) printf x > "${arg#--saveEngine=}";; esac; done\n'
    rec = build_with_trtexec(fake_trtexec(models, quiet), models / "model.onnx", models / "e" / "model_fp32.engine",
                             "fp32", entry("10.13.0", "fp32"), cache, LOG)
    assert rec.timing_cache["reused"] is False and rec.timing_cache["loaded_bytes"] == 0


def test_a_flag_the_trtexec_does_not_have_fails_the_build(models):
    """TensorRT 11's trtexec has no --fp16: settings written for 10 must not slip through."""
    with pytest.raises(TrtError) as caught:
        build_with_trtexec(fake_trtexec(models, WRITE_ENGINE, major="11"), models / "model.onnx",
                           models / "e" / "model_fp16.engine", "fp16", entry("10.13.0", "fp16"), models / "t.cache", LOG)
    assert "trtexec failed (exit 1)" in caught.value.message and "Unknown option: --fp16" in caught.value.message


def test_a_failing_trtexec_reports_its_last_lines(models):
    tool = fake_trtexec(models, "i=0\nwhile [ $i -lt 100 ]; do echo \"log line $i\"; i=$((i+1)); done\n"
                                "echo '[E] Error[4]: unsupported operator GridSample'\nexit 3\n")
    with pytest.raises(TrtError) as caught:
        build_with_trtexec(tool, models / "model.onnx", models / "engines" / "model_fp32.engine", "fp32",
                           entry("10.13.0", "fp32"), models / "t.cache", LOG)
    message = caught.value.message
    assert "trtexec failed (exit 3)" in message and "unsupported operator GridSample" in message
    assert "log line 99" in message and "log line 50" not in message      # the last lines only
    assert not (models / "engines" / "model_fp32.engine").exists()


def test_a_trtexec_that_writes_no_engine_is_an_error(models):
    tool = fake_trtexec(models, "exit 0\n")
    with pytest.raises(TrtError, match="wrote no engine"):
        build_with_trtexec(tool, models / "model.onnx", models / "e" / "model_fp32.engine", "fp32",
                           entry("10.13.0", "fp32"), models / "t.cache", LOG)


def test_a_trtexec_past_its_timeout_is_stopped(models):
    tool = fake_trtexec(models, "exec sleep 30\n")
    with pytest.raises(TrtError, match="ran past 1s"):
        build_with_trtexec(tool, models / "model.onnx", models / "e" / "model_fp32.engine", "fp32",
                           entry("10.13.0", "fp32"), models / "t.cache", LOG, timeout=1)


@pytest.mark.skipif(os.name != "posix", reason="shell script stand-in")
def test_trtexec_11_records_a_strongly_typed_engine(models):
    tool = fake_trtexec(models, WRITE_ENGINE, major="11")
    rec = build_with_trtexec(tool, models / "model_int8_qdq.onnx", models / "e" / "model_int8.engine", "int8",
                             entry("11.4.0", "int8"), models / "t.cache", LOG, version="11.4.0")
    assert rec.strongly_typed and rec.builder_flags == [] and rec.onnx == "model_int8_qdq.onnx"
