"""The optimisation profile, the build settings for TensorRT 10 and 11, and profile.yaml."""
from __future__ import annotations

import pytest
import yaml

from handlers.inference.trt.errors import TrtError
from handlers.inference.trt.profile import (PRECISIONS, ShapeProfile, batch_profile, build_settings, read_profile,
                                  settings_for, tensorrt_major, write_profile)

ONNX = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8_qdq.onnx"}
WEAK_TYPING_FLAGS = {"FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                     "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"}


def settings(precisions=PRECISIONS, workspace_gb=4.0):
    return build_settings(batch_profile("input", 3, 224, 1, 32, 256), dict(ONNX), workspace_gb, precisions)


def document(tmp_path):
    profile = batch_profile("input", 3, 64, 1, 4, 16)
    data = {"model": {"input": "input"}, "profile": profile.as_dict(), "precisions": list(PRECISIONS),
            "onnx": dict(ONNX), "tensorrt": build_settings(profile, dict(ONNX), 1, PRECISIONS)}
    path = tmp_path / "profile.yaml"
    write_profile(path, data)
    return path, data


# ------------------------------------------------------------------------------- ShapeProfile

def test_batch_profile_makes_only_the_batch_dynamic():
    profile = batch_profile("input", 3, 224, 1, 32, 256)
    assert profile == ShapeProfile("input", (1, 3, 224, 224), (32, 3, 224, 224), (256, 3, 224, 224))
    assert profile.trtexec_shapes() == {"--minShapes": "input:1x3x224x224", "--optShapes": "input:32x3x224x224",
                                        "--maxShapes": "input:256x3x224x224"}


def test_shape_profile_round_trips_through_a_dict():
    profile = batch_profile("x", 1, 28, 2, 8, 64)
    data = profile.as_dict()
    assert data == {"input": "x", "min": [2, 1, 28, 28], "opt": [8, 1, 28, 28], "max": [64, 1, 28, 28]}
    assert ShapeProfile.from_dict(data) == profile
    assert yaml.safe_load(yaml.safe_dump(data)) == data


@pytest.mark.parametrize("args, words", [
    (("input", (1, 3, 8), (4, 3, 8, 8), (8, 3, 8, 8)), "rank"),
    (("input", (4, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8)), "min <= opt <= max on axis 0"),
    (("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 4, 8)), "axis 2"),
    (("input", (0, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)), "positive"),
    (("input", (-1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)), "positive"),
    (("input", (1.5, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)), "positive integers"),
    (("input", (True, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)), "positive integers"),
    (("input", "1x3x8x8", (4, 3, 8, 8), (8, 3, 8, 8)), "list of integers"),
    (("input", (), (), ()), "positive"),
    (("", (1,), (1,), (1,)), "input name"),
])
def test_shape_profile_refuses_bad_shapes(args, words):
    with pytest.raises(TrtError) as caught:
        ShapeProfile(*args)
    assert words in caught.value.message and caught.value.hint


def test_batch_profile_refuses_an_unordered_batch_range():
    with pytest.raises(TrtError, match="min <= opt <= max"):
        batch_profile("input", 3, 32, 8, 4, 16)


def test_shape_profile_from_dict_names_what_is_missing():
    with pytest.raises(TrtError, match="lacks opt, max"):
        ShapeProfile.from_dict({"input": "x", "min": [1]})


# ---------------------------------------------------------------------------------- settings

def test_settings_hold_both_majors_and_the_shared_keys():
    s = settings()
    assert set(s) == {"workspace_bytes", "profile", "10", "11"}
    assert s["workspace_bytes"] == 4 << 30
    assert s["profile"]["max"] == [256, 3, 224, 224]
    for major in ("10", "11"):
        assert set(s[major]) == set(PRECISIONS)
        for entry in s[major].values():
            assert set(entry) == {"onnx", "builder_flags", "network_flags", "trtexec_args"}


def test_tensorrt_10_keeps_the_fp32_model_and_uses_precision_flags():
    s = settings()["10"]
    assert s["fp32"]["onnx"] == "model.onnx" and s["fp32"]["builder_flags"] == []
    assert s["fp16"]["onnx"] == "model.onnx" and s["fp16"]["builder_flags"] == ["FP16"]
    # INT8 is how a weakly typed network accepts Q/DQ; FP16 for the layers around them
    assert s["int8"]["onnx"] == "model_int8_qdq.onnx" and s["int8"]["builder_flags"] == ["INT8", "FP16"]
    assert all(entry["network_flags"] == [] for entry in s.values())


def test_tensorrt_11_is_strongly_typed_and_takes_precision_from_the_model():
    s = settings()["11"]
    assert {p: s[p]["onnx"] for p in PRECISIONS} == ONNX
    for entry in s.values():
        assert entry["network_flags"] == ["STRONGLY_TYPED"]
        assert entry["builder_flags"] == []
        assert not WEAK_TYPING_FLAGS & set(entry["builder_flags"])


def test_trtexec_arguments_per_version():
    s = settings(workspace_gb=1.5)
    common = ["--memPoolSize=workspace:1536M", "--minShapes=input:1x3x224x224", "--optShapes=input:32x3x224x224",
              "--maxShapes=input:256x3x224x224"]
    assert s["10"]["fp32"]["trtexec_args"] == common
    assert s["10"]["fp16"]["trtexec_args"] == ["--fp16", *common]
    assert s["10"]["int8"]["trtexec_args"] == ["--int8", "--fp16", *common]
    for precision in PRECISIONS:
        args = s["11"][precision]["trtexec_args"]
        assert args == ["--stronglyTyped", *common]
        assert not {"--fp16", "--int8", "--best", "--bf16"} & set(args)


def test_settings_only_for_the_planned_precisions():
    s = settings(precisions=["fp32", "int8"])
    assert set(s["10"]) == set(s["11"]) == {"fp32", "int8"}


@pytest.mark.parametrize("precisions, workspace, words", [
    (["fp64"], 4, "unknown or no precisions"), ([], 4, "unknown or no precisions"), (["fp32"], 0, "workspace_gb")])
def test_settings_refuse_bad_plans(precisions, workspace, words):
    with pytest.raises(TrtError, match=words):
        settings(precisions=precisions, workspace_gb=workspace)


def test_settings_need_an_onnx_file_for_each_model_used():
    with pytest.raises(TrtError, match="no ONNX file for fp16 models .*TensorRT 11"):
        build_settings(batch_profile("input", 3, 8), {"fp32": "m.onnx", "int8": "q.onnx"}, 1, ["fp16"])


def test_the_real_tensorrt_11_api_lacks_the_weak_typing_flags_and_has_those_we_use():
    """The lean runtime bindings carry TensorRT 11's BuilderFlag enum: check the premise."""
    real = pytest.importorskip("tensorrt_lean_bindings")
    if tensorrt_major(real.__version__) < 11:
        pytest.skip(f"lean bindings are TensorRT {real.__version__}")
    assert not hasattr(real.BuilderFlag, "FP16") and not hasattr(real.BuilderFlag, "INT8")
    for entry in settings()["11"].values():
        assert all(hasattr(real.BuilderFlag, flag) for flag in entry["builder_flags"])
    assert hasattr(real.MemoryPoolType, "WORKSPACE")


# -------------------------------------------------------------------------- version selection

@pytest.mark.parametrize("version, major", [("10.3.0", 10), ("11.4.0.106", 11), ("10", 10), ("v10.13.0", 10),
                                            ("8.6.1", 8)])
def test_tensorrt_major(version, major):
    assert tensorrt_major(version) == major


def test_tensorrt_major_refuses_what_is_not_a_version():
    with pytest.raises(TrtError, match="cannot read a TensorRT version"):
        tensorrt_major("unknown")


@pytest.mark.parametrize("version, key", [("10.0.1", "10"), ("10.13.3.9", "10"), ("11.0.0", "11"),
                                          ("11.4.0.106", "11"), ("12.1.0", "11")])
def test_settings_for_picks_the_major(version, key):
    s = settings()
    chosen = settings_for(s, version)
    assert chosen["tensorrt"] == key
    assert chosen["workspace_bytes"] == s["workspace_bytes"] and chosen["profile"] == s["profile"]
    assert {p: chosen[p] for p in PRECISIONS} == s[key]


def test_settings_for_refuses_tensorrt_before_10():
    with pytest.raises(TrtError) as caught:
        settings_for(settings(), "8.6.1")
    assert "too old" in caught.value.message and "upgrade" in caught.value.hint


def test_settings_for_names_a_missing_major():
    s = settings()
    del s["11"]
    with pytest.raises(TrtError, match="no entry for TensorRT 11"):
        settings_for(s, "11.1.0")


# ------------------------------------------------------------------------------- profile.yaml

def test_profile_yaml_round_trips(tmp_path):
    path, data = document(tmp_path)
    assert read_profile(path) == data
    assert set(yaml.safe_load(path.read_text())["tensorrt"]) == {"workspace_bytes", "profile", "10", "11"}
    assert not list(tmp_path.glob(".profile.yaml.*"))   # no temporary file left behind


def test_read_profile_names_a_missing_file(tmp_path):
    with pytest.raises(TrtError) as caught:
        read_profile(tmp_path / "profile.yaml")
    assert "profile.yaml not found" in caught.value.message and "AG-DS-TRTPROFILE-001" in caught.value.hint


def test_read_profile_names_bad_yaml(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text("profile: [1, 2\n")
    with pytest.raises(TrtError, match="profile.yaml is not valid YAML"):
        read_profile(path)


@pytest.mark.parametrize("damage, key", [
    (lambda d: d.pop("tensorrt"), "tensorrt is missing"),
    (lambda d: d.pop("precisions"), "precisions is missing"),
    (lambda d: d["tensorrt"].pop("11"), "tensorrt.11 is missing"),
    (lambda d: d["tensorrt"].pop("workspace_bytes"), "tensorrt.workspace_bytes is missing"),
    (lambda d: d["tensorrt"].__setitem__("workspace_bytes", "4G"), "tensorrt.workspace_bytes must be"),
    (lambda d: d["tensorrt"]["10"].pop("int8"), "tensorrt.10.int8 is missing"),
    (lambda d: d["tensorrt"]["11"]["fp16"].pop("builder_flags"), "tensorrt.11.fp16.builder_flags is missing"),
    (lambda d: d["tensorrt"]["11"]["fp16"].__setitem__("network_flags", "STRONGLY_TYPED"),
     "tensorrt.11.fp16.network_flags must be a list"),
    (lambda d: d["profile"].__setitem__("max", [2, 3, 64, 64]), "profile is invalid"),
    (lambda d: d.__setitem__("precisions", ["fp64"]), "precisions must list"),
])
def test_read_profile_names_the_file_and_the_bad_key(tmp_path, damage, key):
    path, data = document(tmp_path)
    damage(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TrtError) as caught:
        read_profile(path)
    assert str(path) in caught.value.message and key in caught.value.message
    assert caught.value.hint == "re-run AG-DS-TRTPROFILE-001"


def test_read_profile_refuses_a_document_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(TrtError, match="expected a mapping"):
        read_profile(path)


# --------------------------------------------------------------- TRTPROFILE's verdict on the models

def _results(fp32, fp16, int8, agree16=1.0, agree8=1.0):
    row = lambda acc, agree: {"accuracy": acc, "auc": 0.9, "agreement": agree, "provider": "CPUExecutionProvider",  # noqa: E731
                               "model": "m.onnx", "f1": 0.8, "max_prob_diff": 0.0}
    return {"fp32": row(fp32, 1.0), "fp16": row(fp16, agree16), "int8": row(int8, agree8)}


def _verdict(results, **params):
    from handlers.inference.trt_profile import TrtProfile, TrtProfileParams
    from handlers.ml.quantize import QdqReport
    qdq = QdqReport(quantize_nodes=10, dequantize_nodes=20, int8_zero_points=10, per_channel_weights=5)
    noise = {"images": 8, "tensors": 3, "first": {"tensor": "a", "db": 40.0}, "last": {"tensor": "c", "db": 9.0},
             "by_depth_quarter_db": [30.0, 20.0, 10.0], "lowest": [{"tensor": "c", "db": 9.0}]}
    meta = {"image_size": 32, "synthetic": True, "quality_warning": "model near chance: test AUC 0.510 is within"}
    return TrtProfile()._result(TrtProfileParams(**params), meta, results, qdq, "ONNX Runtime static quantization",
                                noise)


def test_the_99_percent_rule_is_judged_and_said():
    met = _verdict(_results(0.80, 0.80, 0.795))
    assert any(f.startswith("INT8 keeps 99.4% of FP32's test accuracy (0.795 vs 0.800): meets the 99% rule")
               for f in met.findings)
    missed = _verdict(_results(0.80, 0.80, 0.70, agree8=0.80))
    text = "\n".join(missed.findings)
    assert "INT8 keeps 87.5% of FP32's test accuracy (0.700 vs 0.800): misses the 99% rule" in text
    assert "INT8 loses 10.0% accuracy against FP32 (limit 2.0%)" in text
    assert "INT8 decides the same class as FP32 for 80.0% of the test images (below 95%)" in text
    assert "FP16 loses" not in text


def test_the_verdict_repeats_the_training_warning_and_states_what_was_read_from_the_model():
    result = _verdict(_results(0.8, 0.8, 0.8))
    assert result.findings[0].startswith("from AG-DS-SCRIPTGPU-001's training: model near chance")
    assert "weights int8 symmetric, per channel (5 weight tensors)" in result.findings[1]
    assert "40 dB after the first layer, 9 dB at the output" in "\n".join(result.findings)
    assert "ONNX Runtime (CPUExecutionProvider)" in result.message
