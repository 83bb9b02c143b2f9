"""atlas.manifest: durations, input references, capabilities and the project defaults."""
from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from atlas.manifest import InputSpec, Manifest, ProjectDefaults, WbsNode, parse_duration
from atlas.probe import CAPABILITIES

BASE = {"id": "AG-DS-TRTENGINE-001", "title": "başlık", "title_en": "title", "wbs": "1.2.2.1",
        "handler": "trt_engine"}


def manifest(**fields) -> Manifest:
    return Manifest.model_validate({**BASE, **fields})


def errors(**fields) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        manifest(**fields)
    return info.value.errors()


# --- parse_duration ----------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800.0),
    ("1h30m", 5400.0),
    ("1h 30m", 5400.0),
    ("90s", 90.0),
    ("2h", 7200.0),
    ("45", 45.0),
    (" 5m ", 300.0),
    ("1.5h", 5400.0),
    ("1h30m15s", 5415.0),
    ("0.5s", 0.5),
])
def test_parse_duration_text(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("number, seconds", [(45, 45.0), (0.25, 0.25), (3600, 3600.0)])
def test_parse_duration_numbers_are_seconds(number, seconds):
    value = parse_duration(number)
    assert value == seconds
    assert isinstance(value, float)


@pytest.mark.parametrize("text", ["soon", "", "   ", "30 minutes", "1d", "m", "h30", "-5", "5x", "30m1h"])
def test_parse_duration_rejects_text(text):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == f"{text!r} is not a duration (write 90s, 30m, 2h or 1h30m)"


@pytest.mark.parametrize("value", [0, 0.0, "0", "0m", "0h0m0s", -1, -0.5])
def test_parse_duration_rejects_zero_and_negative(value):
    with pytest.raises(ValueError, match="^a duration must be positive$"):
        parse_duration(value)


def test_parse_duration_rejects_nan():
    with pytest.raises(ValueError, match="^a duration must be positive$"):
        parse_duration(math.nan)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_bool(value):
    # bool is an int subclass: True must not silently mean one second
    with pytest.raises(ValueError, match="a duration is a number of seconds or text like 30m"):
        parse_duration(value)


def test_manifest_timeout_goes_through_parse_duration():
    assert manifest(timeout="30m").timeout == 1800.0
    assert manifest(timeout=90).timeout == 90.0
    assert manifest(timeout=None).timeout is None
    assert manifest().timeout is None


@pytest.mark.parametrize("value, words", [
    ("soon", "'soon' is not a duration"),
    (True, "a duration is a number of seconds"),
    (0, "a duration must be positive"),
    ("-1h", "'-1h' is not a duration"),
])
def test_manifest_bad_timeout(value, words):
    (err,) = errors(timeout=value)
    assert err["loc"] == ("timeout",)
    assert words in err["msg"]


# --- inputs ------------------------------------------------------------------------------

def test_input_short_form():
    m = manifest(inputs={"onnx": "AG-DS-ONNXCONV-001:model.onnx"})
    spec = m.input_specs()["onnx"]
    assert spec.from_ == "AG-DS-ONNXCONV-001:model.onnx"
    assert spec.optional is False


def test_input_long_form():
    m = manifest(inputs={"profile": {"from": "AG-DS-TRTPROFILE-001:profile.yaml", "optional": True}})
    spec = m.input_specs()["profile"]
    assert isinstance(spec, InputSpec)
    assert spec.from_ == "AG-DS-TRTPROFILE-001:profile.yaml"
    assert spec.optional is True


def test_input_long_form_optional_defaults_to_false():
    assert InputSpec.model_validate({"from": "AG-DS-A-001:x"}).optional is False


def test_input_specs_mixes_both_forms_in_order():
    m = manifest(inputs={"a": "AG-DS-A-001:x", "b": {"from": "AG-DS-B-001:engines/fp16.engine"}})
    specs = m.input_specs()
    assert list(specs) == ["a", "b"]
    assert [s.from_ for s in specs.values()] == ["AG-DS-A-001:x", "AG-DS-B-001:engines/fp16.engine"]


def test_input_long_form_uses_the_from_alias():
    with pytest.raises(ValidationError) as info:
        InputSpec.model_validate({"from_": "AG-DS-A-001:x"})
    kinds = {(e["type"], e["loc"]) for e in info.value.errors()}
    assert ("missing", ("from",)) in kinds
    assert ("extra_forbidden", ("from_",)) in kinds


def test_input_long_form_rejects_unknown_keys():
    with pytest.raises(ValidationError) as info:
        InputSpec.model_validate({"from": "AG-DS-A-001:x", "optinal": True})
    (err,) = info.value.errors()
    assert err["type"] == "extra_forbidden"
    assert err["loc"] == ("optinal",)


@pytest.mark.parametrize("ref", ["AG-DS-ONNXCONV-001", "model.onnx", "AG-DS-ONNXCONV-001:", ""])
def test_string_input_without_output_is_rejected(ref):
    (err,) = errors(inputs={"onnx": ref})
    # located at the input itself, so the loader can point at its line
    assert err["loc"][:2] == ("inputs", "onnx")
    assert f"{ref!r} is not an input reference (write TASK-ID:output-name)" in err["msg"]


@pytest.mark.parametrize("ref", ["AG-DS-ONNXCONV-001", "AG-DS-ONNXCONV-001:"])
def test_long_form_input_without_output_is_rejected(ref):
    (err,) = errors(inputs={"onnx": {"from": ref}})
    assert err["loc"][:2] == ("inputs", "onnx")
    assert err["loc"][-1] == "from"
    assert f"{ref!r} is not an input reference" in err["msg"]


def test_input_reference_may_name_a_file_inside_a_folder():
    m = manifest(inputs={"engine": "AG-DS-TRTENGINE-001:engines/fp16.engine"})
    assert m.input_specs()["engine"].from_ == "AG-DS-TRTENGINE-001:engines/fp16.engine"


@pytest.mark.parametrize("value", [5, ["AG-DS-A-001:x"], None])
def test_input_of_another_type_is_one_error(value):
    (err,) = errors(inputs={"x": value})
    assert err["loc"][:2] == ("inputs", "x")
    assert "TASK-ID:output" in err["msg"]


# --- requires: the Capability literal ----------------------------------------------------

def test_every_probed_capability_is_accepted():
    m = manifest(requires=list(CAPABILITIES))
    assert m.requires == list(CAPABILITIES)


def test_known_capabilities_are_in_the_literal():
    assert {"cuda", "multi_gpu", "torch", "tensorrt", "dali", "cupy"} <= set(CAPABILITIES)


def test_unknown_capability_is_rejected_at_its_index():
    (err,) = errors(requires=["cuda", "quantum"])
    assert err["type"] == "literal_error"
    assert err["loc"] == ("requires", 1)
    assert "'cuda'" in err["msg"] and "'tensorrt'" in err["msg"]


def test_capabilities_are_case_sensitive():
    (err,) = errors(requires=["CUDA"])
    assert err["loc"] == ("requires", 0)


# --- the rest of the manifest ------------------------------------------------------------

def test_minimal_manifest_defaults():
    m = manifest()
    assert m.depends_on == [] and m.inputs == {} and m.requires == [] and m.params == {}
    assert m.retries == 0 and m.gpus is None and m.module is None


def test_manifests_without_a_slurm_block_share_one_frozen_default():
    first, second = manifest(), manifest()
    assert first.slurm is second.slurm              # not copied: pydantic copies no hashable default
    assert first.slurm.extra_args == () and first.slurm.nodes == 1
    with pytest.raises(ValidationError):
        first.slurm.nodes = 4                       # frozen: no step can change another's
    own = manifest(slurm={"cpus": 8, "extra_args": ["--constraint=h100"]})
    assert own.slurm is not first.slurm and own.slurm.extra_args == ("--constraint=h100",)
    assert first.slurm.cpus is None


@pytest.mark.parametrize("task_id", ["AG-DS-TRTENGINE-001", "AG-X-Y2-999"])
def test_valid_ids(task_id):
    assert manifest(id=task_id).id == task_id


@pytest.mark.parametrize("task_id", ["ag-ds-x-001", "AG-DS-X-1", "AG-DS-X-0001", "AG-DS-001", "AG-DS-X-001.yaml"])
def test_invalid_ids(task_id):
    (err,) = errors(id=task_id)
    assert err["loc"] == ("id",)
    assert err["type"] == "string_pattern_mismatch"


@pytest.mark.parametrize("field, value", [("retries", -1), ("retries", 11), ("retries", "two"),
                                          ("wbs", "1.x"), ("wbs", ""), ("gpus", 2), ("title", "")])
def test_invalid_field_values(field, value):
    (err,) = errors(**{field: value})
    assert err["loc"][0] == field


def test_unknown_field_is_forbidden():
    (err,) = errors(depend_on=[])
    assert err["type"] == "extra_forbidden"
    assert err["loc"] == ("depend_on",)


def test_json_schema_describes_both_input_forms():
    schema = Manifest.model_json_schema()
    inputs = schema["properties"]["inputs"]["additionalProperties"]
    forms = inputs.get("oneOf") or inputs.get("anyOf")
    assert {"type": "string"} in forms
    assert any("InputSpec" in f.get("$ref", "") for f in forms)
    assert schema["additionalProperties"] is False


# --- project defaults --------------------------------------------------------------------

HIERARCHY = [
    {"wbs": "1", "title": "Ana", "children": [
        {"wbs": "1.1", "title": "Alt", "children": [
            {"wbs": "1.1.1", "title": "Makro", "children": [
                {"wbs": "1.1.1.1", "task": "AG-DS-A-001", "title": "Mikro A"},
                {"wbs": "1.1.1.2", "task": "AG-DS-B-001", "title": "Mikro B"},
            ]},
        ]},
    ]},
    {"wbs": "2", "title": "Ana 2"},
]


def test_wbs_index_walks_the_whole_tree():
    index = ProjectDefaults(name="p", hierarchy=HIERARCHY).wbs_index()
    assert sorted(index) == ["1", "1.1", "1.1.1", "1.1.1.1", "1.1.1.2", "2"]
    assert all(isinstance(node, WbsNode) for node in index.values())
    assert index["1.1.1.2"].task == "AG-DS-B-001"
    assert index["1.1.1.2"].title == "Mikro B"
    assert index["1.1"].task is None
    assert [c.wbs for c in index["1.1.1"].children] == ["1.1.1.1", "1.1.1.2"]


def test_wbs_index_of_no_hierarchy_is_empty():
    assert ProjectDefaults(name="p").wbs_index() == {}


def test_project_defaults():
    d = ProjectDefaults(name="p")
    assert d.data.root is None
    assert d.data.classes == ["NORMAL", "PNEUMONIA"]
    assert d.data.image_size == 224
    assert d.model.arch == "resnet50"


def test_project_defaults_forbid_unknown_fields_at_any_depth():
    with pytest.raises(ValidationError) as info:
        ProjectDefaults.model_validate({"name": "p", "data": {"rot": "x"},
                                        "hierarchy": [{"wbs": "1", "title": "t", "tsak": "X"}]})
    locs = {e["loc"] for e in info.value.errors()}
    assert locs == {("data", "rot"), ("hierarchy", 0, "tsak")}
