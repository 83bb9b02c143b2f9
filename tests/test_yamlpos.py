"""atlas.yamlpos: plain data plus 1-based (line, col) of every key, value and list item."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from atlas import yamlpos
from atlas.yamlpos import YamlSyntaxError


def load(text: str) -> yamlpos.Located:
    return yamlpos.load(textwrap.dedent(text))


DOC = """\
id: AG-DS-X-001
params:
  precisions: [fp32, fp16]
  workspace_gb: 4
depends_on:
  - AG-DS-A-001
  - AG-DS-B-001
"""


# --- positions ---------------------------------------------------------------------------

def test_data_is_plain_python():
    located = yamlpos.load(DOC)
    assert located.data == {
        "id": "AG-DS-X-001",
        "params": {"precisions": ["fp32", "fp16"], "workspace_gb": 4},
        "depends_on": ["AG-DS-A-001", "AG-DS-B-001"],
    }
    assert located.duplicates == []


def test_root_position_is_first_line_first_column():
    assert yamlpos.load(DOC).positions[()] == (1, 1)


def test_key_positions_are_one_based():
    kp = yamlpos.load(DOC).key_positions
    assert kp[("id",)] == (1, 1)
    assert kp[("params",)] == (2, 1)
    assert kp[("params", "precisions")] == (3, 3)
    assert kp[("params", "workspace_gb")] == (4, 3)
    assert kp[("depends_on",)] == (5, 1)


def test_value_positions_point_at_the_value_not_the_key():
    pos = yamlpos.load(DOC).positions
    assert pos[("id",)] == (1, 5)
    assert pos[("params", "workspace_gb")] == (4, 17)
    # a block mapping value starts at its first key
    assert pos[("params",)] == (3, 3)


def test_flow_list_items_have_their_own_columns():
    pos = yamlpos.load(DOC).positions
    assert pos[("params", "precisions")] == (3, 15)       # the '['
    assert pos[("params", "precisions", 0)] == (3, 16)
    assert pos[("params", "precisions", 1)] == (3, 22)


def test_block_list_items_point_after_the_dash():
    pos = yamlpos.load(DOC).positions
    assert pos[("depends_on", 0)] == (6, 5)
    assert pos[("depends_on", 1)] == (7, 5)


def test_list_items_are_not_keys():
    kp = yamlpos.load(DOC).key_positions
    assert ("depends_on", 0) not in kp
    assert ("params", "precisions", 0) not in kp


def test_nested_lists_of_mappings():
    located = load("""\
        hierarchy:
          - wbs: "1"
            children:
              - wbs: "1.1"
                task: AG-DS-A-001
        """)
    assert located.data["hierarchy"][0]["children"][0]["task"] == "AG-DS-A-001"
    assert located.positions[("hierarchy", 0)] == (2, 5)
    assert located.key_positions[("hierarchy", 0, "children")] == (3, 5)
    assert located.key_positions[("hierarchy", 0, "children", 0, "task")] == (5, 9)
    assert located.positions[("hierarchy", 0, "children", 0, "task")] == (5, 15)


def test_position_after_a_multibyte_character_counts_characters():
    # Turkish titles: columns are characters, not bytes
    located = yamlpos.load("title: Görev\nwbs: '1'\n")
    assert located.positions[("wbs",)] == (2, 6)
    located = yamlpos.load("a: {ğ: 1, b: 2}\n")
    assert located.key_positions[("a", "b")] == (1, 11)


def test_comments_and_blank_lines_do_not_shift_lines():
    located = yamlpos.load("# head\n\nid: X  # trailing\n\n\nwbs: '1'\n")
    assert located.key_positions[("id",)] == (3, 1)
    assert located.key_positions[("wbs",)] == (6, 1)


def test_list_keys_become_tuples():
    located = yamlpos.load("? [1, 2]\n: x\n")
    assert located.data == {(1, 2): "x"}
    assert located.key_positions[((1, 2),)] == (1, 3)


# --- where(): closest known position ------------------------------------------------------

def test_where_returns_exact_position():
    located = yamlpos.load(DOC)
    assert located.where(("params", "workspace_gb")) == (4, 17)
    assert located.where(("params", "workspace_gb"), key=True) == (4, 3)


def test_where_falls_back_to_the_nearest_parent():
    located = yamlpos.load(DOC)
    # a missing key: point at the mapping that should hold it
    assert located.where(("params", "missing")) == (3, 3)
    assert located.where(("params", "missing"), key=True) == (2, 1)
    assert located.where(("nothing", "here")) == (1, 1)


def test_where_accepts_a_list_path():
    assert yamlpos.load(DOC).where(["depends_on", 1]) == (7, 5)


# --- duplicate keys ----------------------------------------------------------------------

def test_duplicate_key_is_reported_with_its_position():
    located = load("""\
        id: AG-DS-A-001
        retries: 1
        title: t
        retries: 2
        """)
    assert located.duplicates == [(("retries",), (4, 1))]
    assert located.data["retries"] == 2            # the last one wins, as in yaml.safe_load


def test_nested_duplicate_key_has_its_full_path():
    located = load("""\
        params:
          epochs: 1
          lr: 0.1
          epochs: 3
        """)
    assert located.duplicates == [(("params", "epochs"), (4, 3))]


def test_every_repeat_is_reported():
    located = yamlpos.load("a: 1\na: 2\nb: 0\na: 3\n")
    assert located.duplicates == [(("a",), (2, 1)), (("a",), (4, 1))]


def test_same_key_in_different_mappings_is_not_a_duplicate():
    located = yamlpos.load("x: {a: 1}\ny: {a: 2}\nz:\n  - a: 1\n  - a: 2\n")
    assert located.duplicates == []


def test_flow_mapping_duplicate():
    assert yamlpos.load("p: {a: 1, a: 2}\n").duplicates == [(("p", "a"), (1, 11))]


# --- merge keys and anchors (what yaml.safe_load accepts must load the same) --------------

SAME_AS_SAFE_LOAD = [
    "a: &x [1, 2]\nb: *x\n",
    "base: &b {epochs: 3, lr: 0.1}\nparams:\n  <<: *b\n  lr: 0.5\n",
    "x: &x {a: 1, b: 1}\ny: &y {b: 2, c: 2}\nz:\n  <<: [*x, *y]\n  d: 4\n",
    "when: 2024-01-01\nflag: yes\nnull_: ~\nf: 1.5e3\nhex: 0x10\n",
    "s: |\n  line one\n  line two\nt: >-\n  folded\n  text\n",
    "a: !!map {x: 1}\nb: !!seq [1]\nc: !!str 5\n",
]


@pytest.mark.parametrize("text", SAME_AS_SAFE_LOAD)
def test_data_equals_yaml_safe_load(text):
    located = yamlpos.load(text)
    assert located.data == yaml.safe_load(text)
    assert list(located.data) == list(yaml.safe_load(text))      # key order too
    assert located.duplicates == []


def test_merged_keys_are_not_duplicates_but_own_repeats_are():
    text = "b: &b {a: 1}\nc:\n  <<: *b\n  a: 2\n  a: 3\n"
    located = yamlpos.load(text)
    assert located.data == yaml.safe_load(text) == {"b": {"a": 1}, "c": {"a": 3}}
    assert located.duplicates == [(("c", "a"), (5, 3))]


def test_a_merged_key_overridden_in_place_points_at_the_override():
    located = yamlpos.load("base: &b {lr: 0.1}\nparams:\n  <<: *b\n  lr: 0.5\n")
    assert located.key_positions[("params", "lr")] == (4, 3)
    assert located.positions[("params", "lr")] == (4, 7)


def test_merge_of_a_scalar_is_a_located_error():
    with pytest.raises(YamlSyntaxError) as info:
        yamlpos.load("a:\n  <<: 5\n")
    assert (info.value.line, info.value.col) == (2, 7)
    assert "merge key (<<)" in info.value.message


def test_recursive_alias_is_an_error_not_a_crash():
    with pytest.raises(YamlSyntaxError) as info:
        yamlpos.load("a: &x [*x]\n")
    assert "recursive" in info.value.message


# --- syntax errors -----------------------------------------------------------------------

@pytest.mark.parametrize("text, line, col, words", [
    ("a: [1, 2\n", 2, 1, "did not find expected ',' or ']'"),
    ("a: b: c\n", 1, 5, "mapping values are not allowed"),
    ("a:\n  - x\n - y\n", 3, 2, "did not find expected key"),
    ("key: 'unterminated\n", 2, 1, "found unexpected end of stream"),
    ("a: 1\n\tb: 2\n", 2, 1, "tab"),
    ("a: *nowhere\n", 1, 4, "found undefined alias"),
    ("---\na: 1\n---\nb: 2\n", 3, 1, "expected a single document"),
])
def test_syntax_error_has_line_and_col(text, line, col, words):
    with pytest.raises(YamlSyntaxError) as info:
        yamlpos.load(text)
    err = info.value
    assert (err.line, err.col) == (line, col)
    assert err.message.startswith("YAML syntax error: ")
    assert words in err.message
    assert str(err) == err.message


def test_syntax_error_message_includes_the_context():
    with pytest.raises(YamlSyntaxError) as info:
        yamlpos.load("a: [1, 2\n")
    assert info.value.message == ("YAML syntax error: while parsing a flow sequence: "
                                  "did not find expected ',' or ']'")


@pytest.mark.parametrize("text, line, col, words", [
    ("a: !custom x\n", 1, 4, "could not determine a constructor for the tag '!custom'"),
    ("a: !!python/object:os.system x\n", 1, 4, "could not determine a constructor"),
    ("a: !!int foo\n", 1, 4, "'foo' is not a valid int"),
    ("a: !!float xx\n", 1, 4, "'xx' is not a valid float"),
    ("? {a: 1}\n: x\n", 1, 3, "a mapping key must be a plain value"),
    ("? [[1]]\n: x\n", 1, 3, "a mapping key must be a plain value"),
    ("a: !!set {x, y}\n", 1, 4, "the tag 'tag:yaml.org,2002:set' is not supported here"),
    ("a:\n  - !secret [1]\n", 2, 5, "the tag '!secret' is not supported here"),
])
def test_unconstructible_values_are_located_errors(text, line, col, words):
    # these used to escape as ConstructorError / TypeError / ValueError and crash validation
    with pytest.raises(YamlSyntaxError) as info:
        yamlpos.load(text)
    assert (info.value.line, info.value.col) == (line, col)
    assert words in info.value.message


# --- empty documents ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_document_has_no_data(text):
    located = yamlpos.load(text)
    assert located.data is None
    assert located.positions == {}
    assert located.key_positions == {}
    assert located.duplicates == []
    assert located.where(("id",)) == (1, 1)


@pytest.mark.parametrize("text, pos", [("\n\nnull\n", (3, 1)), ("---\n", (2, 1)), ("---\n...\n", (2, 1))])
def test_explicit_null_document_is_positioned(text, pos):
    located = yamlpos.load(text)
    assert located.data is None
    assert located.positions == {(): pos}
    assert located.duplicates == []


@pytest.mark.parametrize("text, data", [("- a\n- b\n", ["a", "b"]), ("just text\n", "just text"), ("42\n", 42)])
def test_non_mapping_documents_load(text, data):
    # deciding that a manifest must be a mapping is the loader's job
    assert yamlpos.load(text).data == data


# --- the fast build (no positions until asked) agrees with the positional one ---------------

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
AGREE = [DOC, *SAME_AS_SAFE_LOAD, "a: 1\na: 2\nb: 0\na: 3\n", "p: {a: 1, a: 2}\n", "1: x\ntrue: y\n",
         "? [1, 2]\n: x\n", "x: {a: 1}\ny: [{a: 2}, [3, [4]]]\n", "- a\n- b\n", "42\n", "---\n", "",
         "k: ''\nn: null\nb: false\nf: .inf\nd: 2024-01-01 10:00:00\nbin: !!binary aGVsbG8=\n",
         "a: 0777\nb: 1_000\nc: 0b101\nd: -5\ne: '12'\n",
         *(path.read_text(encoding="utf-8") for path in sorted((REPO / "tasks").glob("*.yaml")))]


@pytest.mark.parametrize("text", AGREE, ids=range(len(AGREE)))
def test_the_fast_build_agrees_with_the_positional_one(text):
    fast, full = yamlpos.load(text), yamlpos._load_located(text)
    assert fast.data == full.data and type(fast.data) is type(full.data)
    assert repr(fast.data) == repr(full.data)               # key order and value types too
    assert fast.duplicates == full.duplicates
    assert fast.positions == full.positions and fast.key_positions == full.key_positions


def test_a_plain_document_works_out_its_positions_only_when_asked():
    located = yamlpos.load(DOC)
    assert located._text is not None                        # built without positions
    assert located.where(("params", "workspace_gb")) == (4, 17)
    assert located._text is None and located.positions[()] == (1, 1)


@pytest.mark.parametrize("text", [
    "a: !custom x\n", "a: !!int foo\n", "? {a: 1}\n: x\n", "a: !!set {x, y}\n", "a: &x [*x]\n", "a:\n  <<: 5\n",
    "x: " + "1" * (yamlpos.MAX_INT_CHARS + 1) + "\n",
    "a: &a [" + ",".join(["x"] * 10) + "]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(5)),
])
def test_the_fast_build_raises_what_the_positional_one_raises(text):
    with pytest.raises(YamlSyntaxError) as fast:
        yamlpos.load(text)
    with pytest.raises(YamlSyntaxError) as full:
        yamlpos._load_located(text)
    assert (fast.value.message, fast.value.line, fast.value.col) == \
           (full.value.message, full.value.line, full.value.col)
