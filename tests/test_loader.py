"""atlas.loader: every manifest problem, located as `tasks/FILE.yaml:LINE:COL: message [field]`.

Each test builds a tiny project under tmp_path with in-memory handlers, so nothing here
imports a real handler (except the last test, which loads the real tasks/).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Literal

import pytest

from atlas.errors import EXIT_INVALID, InvalidManifests, ManifestProblem, ProjectNotFound
from atlas.handler import Handler, Params
from atlas.loader import find_root, load_project, produces
from atlas.registry import Registry

REPO = Path(__file__).resolve().parents[1]


# --- in-memory handlers ------------------------------------------------------------------

class TrainParams(Params):
    epochs: int = 1
    lr: float = 0.1
    batch: int | Literal["auto"] = "auto"


class Train(Handler):
    name = "train"
    Params = TrainParams
    outputs = ("model.pt", "metrics.json")
    requires = ("torch",)


class BuildParams(Params):
    precisions: list[Literal["fp32", "fp16", "int8"]] = ["fp32"]


class BuildEngines(Handler):
    name = "build_engines"
    Params = BuildParams
    outputs = ("engines/", "build.log")


class Nothing(Handler):
    name = "nothing"


REGISTRY = Registry.from_classes(Train, BuildEngines, Nothing)


# --- project builders --------------------------------------------------------------------

def manifest(task_id: str, handler: str = "train", wbs: str = "1", extra: str = "") -> str:
    """Lines 1-5 are fixed, so `extra` starts on line 6."""
    return (f"id: {task_id}\n"
            f"title: Görev {task_id}\n"
            f"title_en: Task {task_id}\n"
            f'wbs: "{wbs}"\n'
            f"handler: {handler}\n") + textwrap.dedent(extra)


def make_project(root: Path, files: dict[str, str], defaults: str | None = None) -> Path:
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tasks / name).write_text(text, encoding="utf-8")
    if defaults is not None:
        (tasks / "project.yaml").write_text(textwrap.dedent(defaults), encoding="utf-8")
    return root


def problems(root: Path, registry: Registry = REGISTRY) -> list[str]:
    with pytest.raises(InvalidManifests) as info:
        load_project(root, registry)
    return [str(p) for p in info.value.problems]


def only_problem(tmp_path: Path, files: dict[str, str], defaults: str | None = None,
                 registry: Registry = REGISTRY) -> str:
    found = problems(make_project(tmp_path, files, defaults), registry)
    assert len(found) == 1, found
    return found[0]


A, B, C = "AG-DS-A-001", "AG-DS-B-001", "AG-DS-C-001"


def fa(task_id: str) -> str:
    return f"{task_id}.yaml"


HIERARCHY = """\
    name: tiny
    hierarchy:
      - wbs: "1"
        title: Ana
        children:
          - wbs: "1.1"
            task: AG-DS-A-001
            title: Mikro A
          - wbs: "1.2"
            task: AG-DS-B-001
            title: Mikro B
    """


# --- a valid project ---------------------------------------------------------------------

def test_valid_project_loads_with_its_graph(tmp_path):
    root = make_project(tmp_path, {
        fa(A): manifest(A, extra="params: {epochs: 3}\n"),
        fa(B): manifest(B, "build_engines", extra=f"""\
            depends_on: [{A}]
            inputs:
              model: {A}:model.pt
            requires: [cuda, tensorrt]
            params: {{precisions: [fp16, int8]}}
            timeout: 30m
            """),
        fa(C): manifest(C, "nothing", extra=f"""\
            depends_on: [{A}, {B}]
            inputs:
              engine: {B}:engines/fp16.engine
              log: {{from: "{B}:build.log", optional: true}}
            """),
    })
    project = load_project(root, REGISTRY)
    assert project.root == root
    assert project.state_dir == root / ".atlas"
    assert project.defaults.name == tmp_path.name          # no project.yaml: named after the folder
    assert sorted(project.steps) == [A, B, C]
    assert sorted(project.graph.nodes) == [A, B, C]
    assert sorted(project.graph.edges) == [(A, B), (A, C), (B, C)]   # dependency -> dependent
    a, b, c = (project.steps[t] for t in (A, B, C))
    assert a.file == "tasks/AG-DS-A-001.yaml"
    assert a.handler is Train and a.params == TrainParams(epochs=3)
    assert b.params.precisions == ["fp16", "int8"]
    assert b.manifest.timeout == 1800.0
    assert b.requirements() == ["cuda", "tensorrt"]
    assert a.requirements() == ["torch"]                    # from the handler class
    assert c.manifest.input_specs()["log"].optional is True


def test_valid_project_with_hierarchy_and_yml_extension(tmp_path):
    root = make_project(tmp_path, {"AG-DS-A-001.yml": manifest(A, wbs="1.1"),
                                   fa(B): manifest(B, wbs="1.2", extra=f"depends_on: [{A}]\n"),
                                   "notes.txt": "not a manifest: ignored\n"},
                        defaults=HIERARCHY)
    project = load_project(root, REGISTRY)
    assert project.defaults.name == "tiny"
    assert sorted(project.steps) == [A, B]
    assert project.steps[A].file == "tasks/AG-DS-A-001.yml"
    assert list(project.graph.edges) == [(A, B)]


def test_empty_tasks_folder_is_an_empty_project(tmp_path):
    project = load_project(make_project(tmp_path, {}), REGISTRY)
    assert project.steps == {} and len(project.graph) == 0


def test_manifest_paths_from_a_listing_are_those_found_by_listing(tmp_path):
    from atlas import manifest_file

    root = make_project(tmp_path, {"AG-DS-A-001.yml": manifest(A), fa(B): manifest(B), "notes.txt": "x\n",
                                   ".yaml": "hidden, no suffix\n", "b.c.yaml": "a: 1\n"},
                        defaults=HIERARCHY)                # tasks/project.yaml: not a manifest
    (root / "tasks" / "folder.yaml").mkdir()           # listed: the loader says it is a folder
    listed = manifest_file.manifest_paths(root)
    assert [Path(p).name for p in listed] == ["AG-DS-A-001.yml", fa(B), "b.c.yaml", "folder.yaml"]
    assert [Path(p).parent for p in listed] == [root / "tasks"] * 4
    names = [p.name for p in (root / "tasks").iterdir()]
    assert manifest_file.manifest_paths(root, names) == listed
    assert [p for p in listed if Path(p).suffix in (".yaml", ".yml")] == listed    # as pathlib sees suffixes
    assert [manifest_file.stem(Path(p).name) for p in listed] == [Path(p).stem for p in listed]


# --- YAML-level problems -----------------------------------------------------------------

def test_bad_yaml_syntax(tmp_path):
    text = manifest(A, extra="params: {epochs: 3\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:7:1: YAML syntax error: while parsing a flow mapping: "
        "did not find expected ',' or '}'")


def test_bad_yaml_inside_a_block(tmp_path):
    text = manifest(A, extra="params:\n  epochs: 3\n lr: 0.1\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:8:2: YAML syntax error: while parsing a block mapping: "
        "did not find expected key")


def test_unknown_yaml_tag_is_a_problem_not_a_crash(tmp_path):
    text = manifest(A, extra="retries: !secret 3\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:10: YAML error: could not determine a constructor for the tag '!secret'")


def test_a_tag_on_a_mapping_is_not_silently_dropped(tmp_path):
    text = manifest(A, extra="params: !secret {epochs: 3}\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:9: YAML error: the tag '!secret' is not supported here")


def test_not_utf8(tmp_path):
    root = make_project(tmp_path, {})
    (root / "tasks" / fa(A)).write_bytes(b"id: AG-DS-A-001\ntitle: G\xf6rev\n")
    assert problems(root) == [
        "tasks/AG-DS-A-001.yaml:1:1: not UTF-8 text: invalid start byte"]


@pytest.mark.parametrize("text", ["- id: AG-DS-A-001\n- wbs: '1'\n", "just some text\n", "", "# nothing yet\n"])
def test_non_mapping_document(tmp_path, text):
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:1:1: a manifest must be a YAML mapping (key: value lines)")


def test_duplicate_key(tmp_path):
    text = manifest(A, extra="retries: 1\ntimeout: 5m\nretries: 2\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:8:1: duplicate key 'retries' [retries]")


def test_duplicate_param_key(tmp_path):
    text = manifest(A, extra="params:\n  epochs: 1\n  epochs: 2\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:8:3: duplicate key 'epochs' [params.epochs]")


def test_yaml_merge_keys_are_understood(tmp_path):
    text = manifest(A, extra="""\
        x-defaults: &d {epochs: 4, lr: 0.5}
        params:
          <<: *d
          lr: 0.01
        """)
    # the merge itself works; the anchor holder is still an unknown field
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:1: unknown field 'x-defaults' [x-defaults]")
    root = make_project(tmp_path / "ok", {fa(A): manifest(A, extra="""\
        params:
          <<: {epochs: 4, lr: 0.5}
          lr: 0.01
        """)})
    assert load_project(root, REGISTRY).steps[A].params == TrainParams(epochs=4, lr=0.01)


# --- schema problems ---------------------------------------------------------------------

def test_unknown_field_with_suggestion(tmp_path):
    text = manifest(A, extra=f"depend_on: [{B}]\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:1: unknown field 'depend_on' (did you mean 'depends_on'?) [depend_on]")


def test_unknown_field_without_close_match(tmp_path):
    text = manifest(A, extra="colour: blue\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:1: unknown field 'colour' [colour]")


def test_wrong_type_retries(tmp_path):
    text = manifest(A, extra="retries: two\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:10: Input should be a valid integer, unable to parse string "
        "as an integer (got 'two') [retries]")


def test_wrong_type_timeout(tmp_path):
    text = manifest(A, extra="timeout: soon\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:10: 'soon' is not a duration (write 90s, 30m, 2h "
        "or 1h30m) [timeout]")


def test_wrong_type_depends_on(tmp_path):
    text = manifest(A, extra=f"depends_on: {B}\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:13: Input should be a valid list (got 'AG-DS-B-001') [depends_on]")


def test_several_schema_errors_in_one_file(tmp_path):
    text = manifest(A, extra="retries: two\ntimeout: soon\ngpus: 3\n")
    assert problems(make_project(tmp_path, {fa(A): text})) == [
        "tasks/AG-DS-A-001.yaml:6:10: Input should be a valid integer, unable to parse string "
        "as an integer (got 'two') [retries]",
        "tasks/AG-DS-A-001.yaml:7:10: 'soon' is not a duration (write 90s, 30m, 2h "
        "or 1h30m) [timeout]",
        "tasks/AG-DS-A-001.yaml:8:7: Input should be 0, 1 or 'all' (got 3) [gpus]",
    ]


def test_missing_required_fields(tmp_path):
    text = "# no id, no handler\ntitle: t\ntitle_en: t\nwbs: '1'\n"
    assert problems(make_project(tmp_path, {fa(A): text})) == [
        "tasks/AG-DS-A-001.yaml:2:1: missing required field 'handler' [handler]",
        "tasks/AG-DS-A-001.yaml:2:1: missing required field 'id' [id]",
    ]


def test_missing_required_field_in_a_long_form_input(tmp_path):
    text = manifest(A, extra=f"depends_on: [{B}]\ninputs:\n  m: {{optional: true}}\n")
    assert only_problem(tmp_path, {fa(A): text, fa(B): manifest(B)}) == (
        "tasks/AG-DS-A-001.yaml:8:6: missing required field 'from' [inputs.m.from]")


def test_input_reference_without_colon(tmp_path):
    text = manifest(A, extra=f"depends_on: [{B}]\ninputs:\n  model: {B}\n")
    assert only_problem(tmp_path, {fa(A): text, fa(B): manifest(B)}) == (
        "tasks/AG-DS-A-001.yaml:8:10: 'AG-DS-B-001' is not an input reference "
        "(write TASK-ID:output-name) [inputs.model]")


def test_long_form_input_reference_without_colon(tmp_path):
    text = manifest(A, extra=f"depends_on: [{B}]\ninputs:\n  model: {{from: {B}}}\n")
    assert only_problem(tmp_path, {fa(A): text, fa(B): manifest(B)}) == (
        "tasks/AG-DS-A-001.yaml:8:17: 'AG-DS-B-001' is not an input reference "
        "(write TASK-ID:output-name) [inputs.model.from]")


def test_input_of_the_wrong_shape(tmp_path):
    text = manifest(A, extra="inputs:\n  model: 5\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:7:10: an input is TASK-ID:output or {from: TASK-ID:output, "
        "optional: true} (got 5) [inputs.model]")


def test_unknown_capability_in_requires(tmp_path):
    text = manifest(A, extra="requires: [cuda, quantum]\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:18: Input should be 'cuda', 'multi_gpu', 'torch', 'torchvision', "
        "'onnx', 'onnxruntime', 'tensorrt', 'trtexec', 'dali', 'cupy', 'pycuda', 'tensorflow' or 'nvcc' "
        "(got 'quantum') [requires[1]]")


def test_long_values_are_shortened(tmp_path):
    text = manifest(A, extra=f"retries: {'x' * 100}\n")
    line = only_problem(tmp_path, {fa(A): text})
    assert line.endswith("(got '" + "x" * 56 + "...) [retries]")


# --- identity ----------------------------------------------------------------------------

def test_id_not_matching_the_file_name(tmp_path):
    assert only_problem(tmp_path, {fa(A): manifest(B)}) == (
        "tasks/AG-DS-A-001.yaml:1:5: id 'AG-DS-B-001' does not match the file name "
        "(expected 'AG-DS-A-001') [id]")


def test_id_with_a_bad_pattern(tmp_path):
    assert only_problem(tmp_path, {"task.yaml": manifest("task-1")}) == (
        "tasks/task.yaml:1:5: String should match pattern '^AG-[A-Z0-9]+-[A-Z0-9]+-\\d{3}$' "
        "(got 'task-1') [id]")


def test_duplicate_id_across_two_files(tmp_path):
    # same stem, two extensions: both ids match their file name
    root = make_project(tmp_path, {"AG-DS-A-001.yaml": manifest(A), "AG-DS-A-001.yml": manifest(A)})
    assert problems(root) == [
        "tasks/AG-DS-A-001.yml:1:5: duplicate ID 'AG-DS-A-001': also defined in tasks/AG-DS-A-001.yaml [id]"]


def test_duplicate_id_in_a_misnamed_file(tmp_path):
    root = make_project(tmp_path, {fa(A): manifest(A), fa(B): manifest(A)})
    assert problems(root) == [
        "tasks/AG-DS-B-001.yaml:1:5: duplicate ID 'AG-DS-A-001': also defined in tasks/AG-DS-A-001.yaml [id]",
        "tasks/AG-DS-B-001.yaml:1:5: id 'AG-DS-A-001' does not match the file name (expected 'AG-DS-B-001') [id]",
    ]


# --- handlers and params -----------------------------------------------------------------

def test_unknown_handler_with_suggestion(tmp_path):
    assert only_problem(tmp_path, {fa(A): manifest(A, "trian")}) == (
        "tasks/AG-DS-A-001.yaml:5:10: unknown handler 'trian' (did you mean 'train'?) [handler]")


def test_unknown_handler_lists_the_known_ones(tmp_path):
    assert only_problem(tmp_path, {fa(A): manifest(A, "quantum_annealer")}) == (
        "tasks/AG-DS-A-001.yaml:5:10: unknown handler 'quantum_annealer' "
        "(known: build_engines, nothing, train) [handler]")


def test_handler_that_fails_to_import(tmp_path):
    from importlib.metadata import EntryPoint
    registry = Registry([EntryPoint(name="broken", value="atlas_no_such_module_xyz:Broken",
                                    group="atlas.handlers")])
    assert only_problem(tmp_path, {fa(A): manifest(A, "broken")}, registry=registry) == (
        "tasks/AG-DS-A-001.yaml:5:10: handler 'broken' (atlas_no_such_module_xyz:Broken) failed to "
        "import: ModuleNotFoundError: No module named 'atlas_no_such_module_xyz' [handler]")


def test_unknown_param_key_at_its_line(tmp_path):
    text = manifest(A, extra="params:\n  epochs: 2\n  learning_rate: 0.1\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:8:3: unknown field 'learning_rate' [params.learning_rate]")


def test_unknown_param_key_with_suggestion(tmp_path):
    text = manifest(A, extra="params: {epoch: 2}\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:10: unknown field 'epoch' (did you mean 'epochs'?) [params.epoch]")


def test_param_of_the_wrong_type(tmp_path):
    text = manifest(A, extra="params:\n  epochs: many\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:7:11: Input should be a valid integer, unable to parse string as an "
        "integer (got 'many') [params.epochs]")


def test_param_list_item_of_the_wrong_value(tmp_path):
    text = manifest(A, "build_engines", extra="params:\n  precisions: [fp16, fp8]\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:7:22: Input should be 'fp32', 'fp16' or 'int8' (got 'fp8') "
        "[params.precisions[1]]")


def test_union_param_reports_once_without_branch_labels(tmp_path):
    # batch: int | Literal["auto"]; pydantic reports one error per branch, labelled
    # 'int' and "literal['auto']": neither is a field of the manifest
    text = manifest(A, extra="params:\n  batch: {size: 8}\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:7:10: Input should be a valid integer (got {'size': 8}) [params.batch]")


def test_params_for_a_handler_without_params(tmp_path):
    text = manifest(A, "nothing", extra="params: {epochs: 2}\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:10: unknown field 'epochs' [params.epochs]")


# --- dependencies ------------------------------------------------------------------------

def test_unknown_task_in_depends_on(tmp_path):
    text = manifest(A, extra="depends_on:\n  - AG-DS-B-002\n")
    assert only_problem(tmp_path, {fa(A): text, fa(B): manifest(B)}) == (
        "tasks/AG-DS-A-001.yaml:7:5: unknown task 'AG-DS-B-002' in depends_on "
        "(did you mean 'AG-DS-B-001'?) [depends_on[0]]")


def test_unknown_task_without_close_match(tmp_path):
    text = manifest(A, extra="depends_on: [AG-XY-QQQQQQQQ-999]\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:14: unknown task 'AG-XY-QQQQQQQQ-999' in depends_on [depends_on[0]]")


def test_two_task_cycle(tmp_path):
    root = make_project(tmp_path, {fa(A): manifest(A, extra=f"depends_on: [{B}]\n"),
                                   fa(B): manifest(B, extra=f"depends_on: [{A}]\n")})
    assert problems(root) == [
        "tasks/AG-DS-A-001.yaml:6:14: dependency cycle: AG-DS-A-001 -> AG-DS-B-001 -> AG-DS-A-001 "
        "[depends_on[0]]"]


def test_three_task_cycle_reads_as_depends_on(tmp_path):
    # A depends on C, C on B, B on A: the message follows depends_on from the line it points at
    root = make_project(tmp_path, {fa(A): manifest(A, extra=f"depends_on: [{C}]\n"),
                                   fa(B): manifest(B, extra=f"depends_on: [{A}]\n"),
                                   fa(C): manifest(C, extra=f"depends_on: [{B}]\n")})
    assert problems(root) == [
        "tasks/AG-DS-A-001.yaml:6:14: dependency cycle: AG-DS-A-001 -> AG-DS-C-001 -> AG-DS-B-001 "
        "-> AG-DS-A-001 [depends_on[0]]"]


def test_cycle_points_at_the_right_dependency(tmp_path):
    root = make_project(tmp_path, {
        fa(A): manifest(A, extra=f"depends_on: [AG-DS-X-001, {B}]\n"),
        fa(B): manifest(B, extra=f"depends_on: [{C}]\n"),
        fa(C): manifest(C, extra=f"depends_on: [{A}]\n"),
        "AG-DS-X-001.yaml": manifest("AG-DS-X-001"),
    })
    assert problems(root) == [
        "tasks/AG-DS-A-001.yaml:6:27: dependency cycle: AG-DS-A-001 -> AG-DS-B-001 -> AG-DS-C-001 "
        "-> AG-DS-A-001 [depends_on[1]]"]


def test_two_separate_cycles_are_both_reported(tmp_path):
    d = "AG-DS-D-001"
    root = make_project(tmp_path, {fa(A): manifest(A, extra=f"depends_on: [{B}]\n"),
                                   fa(B): manifest(B, extra=f"depends_on: [{A}]\n"),
                                   fa(C): manifest(C, extra=f"depends_on: [{d}]\n"),
                                   fa(d): manifest(d, extra=f"depends_on: [{C}]\n")})
    assert problems(root) == [
        "tasks/AG-DS-A-001.yaml:6:14: dependency cycle: AG-DS-A-001 -> AG-DS-B-001 -> AG-DS-A-001 "
        "[depends_on[0]]",
        "tasks/AG-DS-C-001.yaml:6:14: dependency cycle: AG-DS-C-001 -> AG-DS-D-001 -> AG-DS-C-001 "
        "[depends_on[0]]",
    ]


def test_self_dependency(tmp_path):
    text = manifest(A, extra=f"depends_on:\n  - {A}\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:7:5: dependency cycle: AG-DS-A-001 -> AG-DS-A-001 [depends_on[0]]")


# --- data flow ---------------------------------------------------------------------------

def test_input_from_a_task_not_in_depends_on(tmp_path):
    text = manifest(B, extra=f"inputs:\n  model: {A}:model.pt\n")
    assert only_problem(tmp_path, {fa(A): manifest(A), fa(B): text}) == (
        "tasks/AG-DS-B-001.yaml:7:10: input 'model' comes from AG-DS-A-001, which is not in "
        "depends_on [inputs.model]")


def test_input_naming_an_output_the_upstream_does_not_produce(tmp_path):
    text = manifest(B, extra=f"depends_on: [{A}]\ninputs:\n  onnx: {A}:model.onnx\n")
    assert only_problem(tmp_path, {fa(A): manifest(A), fa(B): text}) == (
        "tasks/AG-DS-B-001.yaml:8:9: input 'onnx': AG-DS-A-001 (train) produces no 'model.onnx' "
        "(it produces: model.pt, metrics.json) [inputs.onnx]")


def test_input_from_a_handler_that_produces_nothing(tmp_path):
    text = manifest(B, extra=f"depends_on: [{A}]\ninputs:\n  x: {{from: '{A}:x.bin', optional: true}}\n")
    assert only_problem(tmp_path, {fa(A): manifest(A, "nothing"), fa(B): text}) == (
        "tasks/AG-DS-B-001.yaml:8:6: input 'x': AG-DS-A-001 (nothing) produces no 'x.bin' "
        "(it produces: nothing) [inputs.x]")


@pytest.mark.parametrize("ref", ["engines/fp16.engine", "engines/sub/int8.engine", "engines/", "engines",
                                 "build.log"])
def test_inputs_inside_a_declared_folder_output(tmp_path, ref):
    text = manifest(B, extra=f"depends_on: [{A}]\ninputs:\n  engine: {A}:{ref}\n")
    root = make_project(tmp_path, {fa(A): manifest(A, "build_engines"), fa(B): text})
    project = load_project(root, REGISTRY)
    assert project.steps[B].manifest.input_specs()["engine"].from_ == f"{A}:{ref}"


def test_a_file_beside_a_folder_output_is_not_produced(tmp_path):
    text = manifest(B, extra=f"depends_on: [{A}]\ninputs:\n  engine: {A}:engines.tar\n")
    assert only_problem(tmp_path, {fa(A): manifest(A, "build_engines"), fa(B): text}) == (
        "tasks/AG-DS-B-001.yaml:8:11: input 'engine': AG-DS-A-001 (build_engines) produces no "
        "'engines.tar' (it produces: engines/, build.log) [inputs.engine]")


def test_produces():
    assert produces(BuildEngines, "engines/fp16.engine")
    assert produces(BuildEngines, "engines")
    assert produces(BuildEngines, "build.log")
    assert not produces(BuildEngines, "engines2/x")
    assert not produces(BuildEngines, "build.log/x")
    assert not produces(Train, "model")
    assert not produces(Nothing, "anything")


def test_input_from_an_upstream_with_errors_is_not_double_reported(tmp_path):
    text = manifest(B, extra=f"depends_on: [{A}]\ninputs:\n  onnx: {A}:model.onnx\n")
    assert only_problem(tmp_path, {fa(A): manifest(A, "trian"), fa(B): text}) == (
        "tasks/AG-DS-A-001.yaml:5:10: unknown handler 'trian' (did you mean 'train'?) [handler]")


# --- the WBS hierarchy -------------------------------------------------------------------

def test_wbs_not_in_the_project_hierarchy(tmp_path):
    assert only_problem(tmp_path, {fa(A): manifest(A, wbs="9.9")}, defaults=HIERARCHY) == (
        "tasks/AG-DS-A-001.yaml:4:6: wbs '9.9' is not in the project hierarchy (tasks/project.yaml) [wbs]")


def test_wbs_belonging_to_another_task(tmp_path):
    files = {fa(A): manifest(A, wbs="1.1"), fa(B): manifest(B, wbs="1.1")}
    assert only_problem(tmp_path, files, defaults=HIERARCHY) == (
        "tasks/AG-DS-B-001.yaml:4:6: wbs '1.1' belongs to AG-DS-A-001 in the project hierarchy "
        "(tasks/project.yaml) [wbs]")


def test_wbs_of_a_group_node_is_accepted(tmp_path):
    root = make_project(tmp_path, {fa(C): manifest(C, wbs="1")}, defaults=HIERARCHY)
    assert sorted(load_project(root, REGISTRY).steps) == [C]


def test_without_a_hierarchy_any_wbs_is_accepted(tmp_path):
    root = make_project(tmp_path, {fa(A): manifest(A, wbs="7.7.7")}, defaults="name: flat\n")
    assert load_project(root, REGISTRY).defaults.name == "flat"


def test_problem_in_project_yaml(tmp_path):
    defaults = """\
        name: tiny
        dat:
          root: /data
        """
    assert only_problem(tmp_path, {fa(A): manifest(A)}, defaults=defaults) == (
        "tasks/project.yaml:2:1: unknown field 'dat' (did you mean 'data'?) [dat]")


def test_nested_problem_in_project_yaml(tmp_path):
    defaults = """\
        name: tiny
        hierarchy:
          - wbs: "1"
            title: Ana
            children:
              - wbs: one
                title: Alt
        """
    assert only_problem(tmp_path, {fa(A): manifest(A)}, defaults=defaults) == (
        "tasks/project.yaml:6:14: String should match pattern '^\\d+(\\.\\d+)*$' (got 'one') "
        "[hierarchy[0].children[0].wbs]")


def test_project_yaml_that_is_not_a_mapping(tmp_path):
    assert only_problem(tmp_path, {fa(A): manifest(A)}, defaults="- a\n") == (
        "tasks/project.yaml:1:1: a manifest must be a YAML mapping (key: value lines)")


# --- everything at once ------------------------------------------------------------------

def test_all_problems_in_all_files_are_reported_at_once_and_sorted(tmp_path):
    d, e, f, g = "AG-DS-D-001", "AG-DS-E-001", "AG-DS-F-001", "AG-DS-G-001"
    root = make_project(tmp_path, {
        fa(g): manifest(g, extra=f"depends_on: [{f}]\n"),
        fa(e): manifest(e, extra="retries: two\n"),
        fa(A): manifest(A, wbs="1.1"),
        fa(f): manifest(f, "trian", extra=f"depends_on: [{g}]\n"),
        fa(d): "id: [\n",
        fa(B): manifest(B, extra=f"depends_on: [{A}, AG-DS-Q-001]\ncolor: red\n"),
        fa(C): manifest(C, wbs="1.2", extra=f"""\
            depends_on: [{B}, {A}]
            inputs:
              m: {d}:model.pt
              n: {A}:model.onnx
            """),
    }, defaults=HIERARCHY)
    with pytest.raises(InvalidManifests) as info:
        load_project(root, REGISTRY)
    err = info.value
    assert [str(p) for p in err.problems] == [
        "tasks/AG-DS-B-001.yaml:7:1: unknown field 'color' [color]",
        "tasks/AG-DS-C-001.yaml:4:6: wbs '1.2' belongs to AG-DS-B-001 in the project hierarchy "
        "(tasks/project.yaml) [wbs]",
        "tasks/AG-DS-C-001.yaml:8:6: input 'm' comes from AG-DS-D-001, which is not in depends_on "
        "[inputs.m]",
        "tasks/AG-DS-C-001.yaml:9:6: input 'n': AG-DS-A-001 (train) produces no 'model.onnx' "
        "(it produces: model.pt, metrics.json) [inputs.n]",
        "tasks/AG-DS-D-001.yaml:2:1: YAML syntax error: while parsing a flow node: "
        "did not find expected node content",
        "tasks/AG-DS-E-001.yaml:6:10: Input should be a valid integer, unable to parse string as "
        "an integer (got 'two') [retries]",
        "tasks/AG-DS-F-001.yaml:5:10: unknown handler 'trian' (did you mean 'train'?) [handler]",
        "tasks/AG-DS-F-001.yaml:6:14: dependency cycle: AG-DS-F-001 -> AG-DS-G-001 -> AG-DS-F-001 "
        "[depends_on[0]]",
    ]
    assert err.problems == sorted(err.problems)
    assert err.exit_code == EXIT_INVALID
    assert err.message == f"{len(err.problems)} problems in the manifests"
    assert "atlas validate" in err.hint


def test_problems_in_project_yaml_and_manifests_together(tmp_path):
    root = make_project(tmp_path, {fa(A): manifest(A, extra="colour: red\n")}, defaults="name: x\nownr: me\n")
    assert problems(root) == [
        "tasks/AG-DS-A-001.yaml:6:1: unknown field 'colour' [colour]",
        "tasks/project.yaml:2:1: unknown field 'ownr' (did you mean 'owner'?) [ownr]",
    ]


def test_a_dependency_whose_manifest_is_broken_is_not_also_unknown(tmp_path):
    # B's file exists but does not validate: report B's problem once, not "unknown task B" in A
    root = make_project(tmp_path, {fa(A): manifest(A, extra=f"depends_on: [{B}, {C}]\n"),
                                   fa(B): manifest(B, extra="retries: two\n"),
                                   fa(C): "[unclosed\n"})
    assert problems(root) == [
        "tasks/AG-DS-B-001.yaml:6:10: Input should be a valid integer, unable to parse string as "
        "an integer (got 'two') [retries]",
        "tasks/AG-DS-C-001.yaml:2:1: YAML syntax error: while parsing a flow sequence: "
        "did not find expected ',' or ']'",
    ]


def test_unknown_task_is_never_suggested_as_itself(tmp_path):
    text = manifest(A, extra="depends_on: [AG-DS-A-002]\n")
    assert only_problem(tmp_path, {fa(A): text}) == (
        "tasks/AG-DS-A-001.yaml:6:14: unknown task 'AG-DS-A-002' in depends_on [depends_on[0]]")


def test_problems_are_manifest_problem_values(tmp_path):
    root = make_project(tmp_path, {fa(A): manifest(A, extra="retries: two\n")})
    with pytest.raises(InvalidManifests) as info:
        load_project(root, REGISTRY)
    (problem,) = info.value.problems
    assert isinstance(problem, ManifestProblem)
    assert problem.as_dict() == {
        "file": "tasks/AG-DS-A-001.yaml", "line": 6, "col": 10,
        "message": "Input should be a valid integer, unable to parse string as an integer (got 'two')",
        "field": "retries"}
    assert info.value.message == "1 problem in the manifests"


# --- find_root ---------------------------------------------------------------------------

def test_find_root_at_the_project(tmp_path):
    make_project(tmp_path, {})
    assert find_root(tmp_path) == tmp_path.resolve()


def test_find_root_walks_up_from_a_subfolder(tmp_path):
    make_project(tmp_path, {})
    deep = tmp_path / "handlers" / "sub" / "deeper"
    deep.mkdir(parents=True)
    assert find_root(deep) == tmp_path.resolve()


def test_find_root_takes_the_nearest_project(tmp_path):
    make_project(tmp_path, {})
    inner = make_project(tmp_path / "nested", {})
    assert find_root(inner / "tasks") == inner.resolve()


def test_find_root_ignores_a_file_named_tasks(tmp_path):
    outer = make_project(tmp_path, {})
    inner = tmp_path / "x"
    inner.mkdir()
    (inner / "tasks").write_text("not a folder\n")
    assert find_root(inner) == outer.resolve()


def test_find_root_without_a_project(tmp_path):
    if any((p / "tasks").is_dir() for p in (tmp_path, *tmp_path.parents)):
        pytest.skip("a tasks/ folder above the temporary directory")
    start = tmp_path / "a" / "b"
    start.mkdir(parents=True)
    with pytest.raises(ProjectNotFound) as info:
        find_root(start)
    err = info.value
    assert err.message == f"no tasks/ folder in {start.resolve()} or any parent"
    assert err.hint == "run atlas inside a project, or pass -C PROJECT_DIR"
    assert err.exit_code == 2


# --- the real project --------------------------------------------------------------------

def test_the_real_project_loads_without_problems():
    project = load_project(REPO, Registry())
    assert project.steps, "tasks/ holds manifests"
    for task_id, step in project.steps.items():
        assert step.file == f"tasks/{task_id}.yaml"
        assert step.handler.name == step.manifest.handler
    assert {"AG-DS-CUDASETUP-001", "AG-DS-LIBTEST-001", "AG-DS-LITREVIEW-001"} <= set(project.steps)
    assert ("AG-DS-CUDASETUP-001", "AG-DS-LIBTEST-001") in project.graph.edges
    assert project.defaults.name == "chest-xray-gpu"
    wbs = project.defaults.wbs_index()
    for task_id, step in project.steps.items():
        assert wbs[step.manifest.wbs].task == task_id


def test_the_real_project_found_from_a_subfolder():
    assert find_root(REPO / "atlas") == REPO


# --- many manifests: read on two cores, the same project and the same problems -------------

def many(root: Path, broken: bool) -> Path:
    tid = [f"AG-DS-N{i:04d}-001" for i in range(3 * 128)]
    files = {fa(tid[0]): manifest(tid[0])}
    for i in range(1, len(tid)):
        deps = sorted({tid[i - 1], tid[i // 2]})
        files[fa(tid[i])] = manifest(tid[i], extra=f"depends_on: [{', '.join(deps)}]\n"
                                                   f"inputs: {{m: '{tid[i - 1]}:model.pt'}}\n"
                                                   "params: {epochs: 2, lr: 0.5}\n")
    if broken:       # at both ends and in the middle: where each process reads
        files[fa(tid[1])] = files[fa(tid[1])].replace("epochs: 2", "epochs: two")
        files[fa(tid[200])] += "retries: 1\nretries: 2\n"
        files[fa(tid[-1])] = files[fa(tid[-1])].replace("depends_on: [", "depends_on: [AG-DS-NOPE-001, ")
        files[fa(tid[-2])] = "id: [unclosed\n"
        files[fa(tid[-3])] = files[fa(tid[-3])] + "anchor: &a {x: 1}\nmore: {<<: *a}\n"
    return make_project(root, files)


def load_both_ways(root: Path, monkeypatch) -> tuple:
    from atlas import two_cores

    def outcome():
        try:
            project = load_project(root, REGISTRY)
        except InvalidManifests as exc:
            return [str(p) for p in exc.problems]
        return [(s.id, s.info, project.graph.preds[s.id]) for s in project.steps.values()], project.graph.levels

    on_two = outcome()
    monkeypatch.setattr(two_cores, "MIN_ITEMS", 10 ** 9)
    return on_two, outcome()


def test_many_manifests_load_alike_on_two_cores_and_on_one(tmp_path, monkeypatch):
    on_two, on_one = load_both_ways(many(tmp_path, broken=False), monkeypatch)
    assert on_two == on_one and len(on_two[0]) == 3 * 128


def test_many_manifests_report_alike_on_two_cores_and_on_one(tmp_path, monkeypatch):
    on_two, on_one = load_both_ways(many(tmp_path, broken=True), monkeypatch)
    assert on_two == on_one
    assert [p.split(": ", 1)[0] for p in on_two] == [
        "tasks/AG-DS-N0001-001.yaml:8:18", "tasks/AG-DS-N0200-001.yaml:10:1",
        "tasks/AG-DS-N0381-001.yaml:9:1", "tasks/AG-DS-N0381-001.yaml:10:1",   # merge: the full builder
        "tasks/AG-DS-N0382-001.yaml:2:1", "tasks/AG-DS-N0383-001.yaml:6:14"], on_two


def test_many_manifests_report_a_cycle_alike_on_two_cores_and_on_one(tmp_path, monkeypatch):
    root = many(tmp_path, broken=False)
    path = root / "tasks" / fa("AG-DS-N0005-001")
    path.write_text(path.read_text().replace("depends_on: [", "depends_on: [AG-DS-N0300-001, "))
    on_two, on_one = load_both_ways(root, monkeypatch)
    assert on_two == on_one
    assert len(on_two) == 1 and "tasks/AG-DS-N0005-001.yaml:6:" in on_two[0] and "dependency cycle" in on_two[0]


def load_plain_and_prechecked(root: Path) -> tuple:
    """The load as tests make it, and as a cold `atlas validate` makes it: each manifest
    checked alone as its YAML comes in (loader.Prechecks), then put together."""
    from atlas import manifest_file
    from atlas.loader import Prechecks

    def outcome(prechecked: bool):
        checked_paths: dict = {}
        try:
            if prechecked:
                files = manifest_file.manifest_paths(root)
                pre = Prechecks(root, REGISTRY)
                read = manifest_file.read_all(files, then=lambda i, found: pre.add(files[i], found[1]))
                project = load_project(root, checked_paths=checked_paths,
                                       read_ahead=[(f, located) for f, (_, located) in zip(files, read)],
                                       prechecked=pre)
            else:
                project = load_project(root, REGISTRY, checked_paths=checked_paths)
        except InvalidManifests as exc:
            return [str(p) for p in exc.problems], checked_paths
        return [(s.id, s.info, s.handler, project.graph.preds[s.id]) for s in project.steps.values()], checked_paths

    return outcome(False), outcome(True)


def test_many_manifests_load_alike_checked_one_by_one_as_they_come(tmp_path):
    plain, prechecked = load_plain_and_prechecked(many(tmp_path, broken=False))
    assert plain == prechecked and len(plain[0]) == 3 * 128


def test_many_manifests_report_alike_checked_one_by_one_as_they_come(tmp_path):
    root = many(tmp_path, broken=True)
    tasks = root / "tasks"
    # what only the put-together load can tell: an id in two files, a handler not known
    (tasks / fa("AG-DS-N0100-001")).write_text(manifest("AG-DS-N0101-001"))
    (tasks / fa("AG-DS-N0300-001")).write_text(manifest("AG-DS-N0300-001", handler="trian"))
    plain, prechecked = load_plain_and_prechecked(root)
    assert plain == prechecked
    problems = plain[0]
    assert any("does not match the file name" in p for p in problems), problems
    assert any("unknown handler 'trian'" in p for p in problems), problems
    assert any(p.startswith("tasks/AG-DS-N0001-001.yaml:8:18") for p in problems), problems


def test_loading_checks_for_cycles_without_networkx_which_orders_when_asked(tmp_path):
    """Importing networkx is a fifth of a cold `atlas validate`, which needs no order."""
    import subprocess
    import sys

    root = many(tmp_path, broken=False)
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from atlas.handler import Handler, Params
        from atlas.loader import load_project
        from atlas.registry import Registry

        class TrainParams(Params):
            epochs: int = 1
            lr: float = 0.1

        class Train(Handler):
            name = "train"
            Params = TrainParams
            outputs = ("model.pt", "metrics.json")

        project = load_project(Path(sys.argv[1]), Registry.from_classes(Train))
        before = "networkx" in sys.modules
        print(before, len(project.graph.levels), len(project.graph.preds), "networkx" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", str(3 * 128), str(3 * 128), "True"]
