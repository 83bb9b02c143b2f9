"""What one manifest may cost: hostile YAML and hostile files end as located problems.

Each case goes through the real CLI (`atlas validate`): exit 3, one
`tasks/FILE.yaml:LINE:COL: message` line per problem, no traceback, within a second and
200 MB. The time is taken on a plain run, the memory on a second run under tracemalloc
(which makes allocation several times slower).
"""
from __future__ import annotations

import os
import re
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from atlas import loader, yamlpos
from atlas.yamlpos import MAX_DEPTH, MAX_VALUES, YamlSyntaxError
from helpers import atlas, task, write_project

A, B = "AG-T-A-001", "AG-T-B-001"
PROBLEM = re.compile(r"^tasks/[^:]+\.yaml:\d+:\d+: ")
SECONDS = 1.0                       # a bound, not a benchmark: the cases take 1-150 ms
PEAK_BYTES = 200 * 1024 * 1024
HEADER = f"id: {B}\ntitle: b\ntitle_en: b\nwbs: '1'\nhandler: echo\n"     # lines 1-5


def laughs(levels: int = 9, fan: int = 10) -> str:
    """`billion laughs`: `levels` anchors, each a list of `fan` aliases of the one before."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * fan)}]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * fan)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory):
    """Import everything validate needs once, so no case pays for it."""
    root = write_project(tmp_path_factory.mktemp("warm"), task(A, "echo"))
    assert atlas(root, "validate").exit_code == 0


def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, task(A, "echo", params={"text": "hi"}))


def validate(root: Path):
    """(result, seconds, peak traced bytes) of `atlas validate`; stderr checked for shape."""
    start = time.perf_counter()
    result = atlas(root, "validate")
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        again = atlas(root, "validate")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (again.exit_code, again.stderr) == (result.exit_code, result.stderr)
    assert "Traceback" not in result.output
    assert elapsed < SECONDS, f"validate took {elapsed:.2f} s"
    assert peak < PEAK_BYTES, f"validate peaked at {peak / 2**20:.0f} MB"
    return result, elapsed, peak


def only_problem(root: Path) -> str:
    result, _, _ = validate(root)
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    assert lines[-2:] == ["error: 1 problem in the manifests",
                          "hint: fix the lines above, then run `atlas validate` again"], lines
    assert len(lines) == 3 and PROBLEM.match(lines[0]), lines
    return lines[0]


def hostile(tmp_path: Path, text: str, name: str = B) -> Path:
    root = project(tmp_path)
    (root / "tasks" / f"{name}.yaml").write_text(text, encoding="utf-8")
    return root


# --- YAML that expands: aliases -------------------------------------------------------------

EXPANDS = f"YAML error: the document expands to more than {MAX_VALUES:,} values (aliases repeat a large anchor)"


def test_billion_laughs(tmp_path):
    text = HEADER + laughs()
    assert len(text) < 1500                              # the 1.3 KB
    line = only_problem(hostile(tmp_path, text))
    # crossed while repeating the first anchor's items (line 6: `b: &b [*a, *a, ...]`)
    assert re.match(rf"tasks/{B}\.yaml:6:\d+: {re.escape(EXPANDS)}$", line), line


def test_wide_alias_fan_out(tmp_path):
    text = HEADER + f"x: &x [{', '.join(['v'] * 1000)}]\ny: [{', '.join(['*x'] * 1000)}]\n"
    line = only_problem(hostile(tmp_path, text))
    assert re.match(rf"tasks/{B}\.yaml:6:\d+: {re.escape(EXPANDS)}$", line), line


def test_aliased_merge_keys_expand_too(tmp_path):
    text = "a0: &a0 {k: 1}\n" + "".join(
        f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 10)}]}}\n" for i in range(1, 10))
    line = only_problem(hostile(tmp_path, text))
    assert line.endswith(EXPANDS) and line.startswith(f"tasks/{B}.yaml:")


def test_aliased_list_keys_expand_too(tmp_path):
    text = f"x: &x [{', '.join(['k'] * 1000)}]\ny: {{{', '.join(f'? *x : {i}' for i in range(200))}}}\n"
    assert only_problem(hostile(tmp_path, text)).endswith(EXPANDS)


def test_a_small_alias_still_works(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / f"{B}.yaml").write_text(HEADER + "params: &p {text: hi}\nretries: 2\n", encoding="utf-8")
    result, _, _ = validate(root)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("text, where, message", [
    ("a: &x [*x]\n", "1:4", "an anchor is used inside itself (recursive alias)"),
    ("a: &x {b: {c: *x}}\n", "1:4", "an anchor is used inside itself (recursive alias)"),
    ("a: &x {<<: *x}\n", "1:4", "a mapping merges itself (<< with a recursive alias)"),
])
def test_recursive_aliases(tmp_path, text, where, message):
    assert only_problem(hostile(tmp_path, text)) == f"tasks/{B}.yaml:{where}: YAML error: {message}"


# --- YAML that nests ------------------------------------------------------------------------

DEEP = f"YAML error: nested deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize("n", [MAX_DEPTH, MAX_DEPTH + 1, 1_000, 100_000])
def test_deep_flow_nesting(tmp_path, n):
    """n levels below the top mapping: the top one counts, so MAX_DEPTH - 1 `[` fit."""
    text = HEADER + "p: " + "[" * n + "]" * n + "\n"
    line = only_problem(hostile(tmp_path, text))
    if n < 1_000:       # our bound: at the first `[` too deep (column 4 is the first `[`)
        assert line == f"tasks/{B}.yaml:6:{3 + MAX_DEPTH}: {DEEP}"
    else:               # libyaml's own bound (1,000 levels), reported the same way
        assert re.match(rf"tasks/{B}\.yaml:6:\d+: {DEEP}$", line), line


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML without libyaml: always the bounded loader")
def test_with_a_libyaml_that_does_not_bound_nesting_deep_text_goes_to_the_bounded_loader(tmp_path, monkeypatch):
    """libyaml before 0.2.6 lets PyYAML's C composer recurse until the C stack runs out
    (100,000 `[` ended Python 3.12 with SIGSEGV): text that may nest that deep is read by
    the pure-Python loader, which stops at MAX_DEPTH."""
    monkeypatch.setattr(yamlpos, "_BOUNDED_BY_LIBYAML", False)
    deep = HEADER + "p: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert yamlpos._loader_for(deep) is yamlpos._BoundedSafeLoader
    assert yamlpos._loader_for(HEADER + "params: {text: hi}\n") is yaml.CSafeLoader
    long_line = HEADER + "title_en: " + "x" * 600 + "\n"           # 2 levels a column: may nest 1,200 deep
    assert yamlpos._loader_for(long_line) is yamlpos._BoundedSafeLoader
    assert only_problem(hostile(tmp_path, deep)) == f"tasks/{B}.yaml:6:{3 + MAX_DEPTH}: {DEEP}"


def test_nesting_just_inside_the_bound_is_fine(tmp_path):
    n = MAX_DEPTH - 1                                   # the top mapping is level 1
    root = project(tmp_path)
    (root / "tasks" / f"{B}.yaml").write_text(
        HEADER + "params: {text: hi}\ntags: " + "[" * n + "]" * n + "\n", encoding="utf-8")
    result, _, _ = validate(root)
    # past YAML: the schema judges the value, located like any other problem
    assert result.exit_code == 3 and f"tasks/{B}.yaml:7:" in result.stderr
    assert "nested deeper" not in result.stderr


@pytest.mark.parametrize("n", [200, 700])         # 700 levels: 245 KB, just under the size bound
def test_deep_block_nesting(tmp_path, n):
    text = "".join(" " * i + "k:\n" for i in range(n)) + " " * n + "v\n"
    line = only_problem(hostile(tmp_path, text))
    if n == 200:
        assert line == f"tasks/{B}.yaml:{MAX_DEPTH + 1}:{MAX_DEPTH + 1}: {DEEP}"
    else:
        assert line.endswith(DEEP)


def test_deep_block_lists(tmp_path):
    assert only_problem(hostile(tmp_path, "- " * 3000 + "x\n")).endswith(DEEP)


# --- numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize("number", ["1" + ":59" * 80_000, "0x" + "f" * 5_000, "9" * 20_000])
def test_huge_integers(tmp_path, number):
    line = only_problem(hostile(tmp_path, HEADER + f"retries: {number}\n"))
    assert line == (f"tasks/{B}.yaml:6:10: YAML error: a number of {len(number):,} characters is too "
                    f"long (the limit is {yamlpos.MAX_INT_CHARS:,})")


# --- files that are too big or not files ----------------------------------------------------

def test_oversized_manifest(tmp_path):
    text = HEADER + "".join(f"# {'x' * 96}\n" for _ in range(3 * 1024))      # 297.1 KB of comments
    assert len(text) == 304_187
    assert only_problem(hostile(tmp_path, text)) == (
        f"tasks/{B}.yaml:1:1: manifest is 298 KB; the limit is 256 KB")


def test_manifest_at_the_limit_is_read(tmp_path):
    body = HEADER + "params: {text: hi}\n"
    text = body + "#" * (loader.MAX_MANIFEST_BYTES - len(body) - 1) + "\n"
    assert len(text.encode()) == loader.MAX_MANIFEST_BYTES
    result, _, _ = validate(hostile(tmp_path, text))
    assert result.exit_code == 0, result.output


def test_a_file_that_grows_while_read_is_cut_at_the_limit(tmp_path, monkeypatch):
    root = hostile(tmp_path, HEADER + "#" * (2 * loader.MAX_MANIFEST_BYTES) + "\n")
    target = str(root / "tasks" / f"{B}.yaml")
    real_stat = os.stat

    def small_stat(path, *args, **kwargs):              # stat() saw it small, then it grew
        info = real_stat(path, *args, **kwargs)
        if os.fspath(path) != target:
            return info
        return os.stat_result((*info[:6], 100, *info[7:10]))

    monkeypatch.setattr(loader.os, "stat", small_stat)
    assert only_problem(root) == (
        f"tasks/{B}.yaml:1:1: manifest is over 256 KB (it grew while being read); the limit is 256 KB")


def test_a_file_longer_than_stat_said_is_read_to_its_end(tmp_path, monkeypatch):
    # the first read asks for stat()'s size plus one byte; the rest must still be read
    text = HEADER + "#" * 40_000 + "\nparams: {text: 1}\n"
    root = hostile(tmp_path, text)
    target = str(root / "tasks" / f"{B}.yaml")
    real_stat = os.stat

    def small_stat(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        if os.fspath(path) != target:
            return info
        return os.stat_result((*info[:6], 10, *info[7:10]))

    monkeypatch.setattr(loader.os, "stat", small_stat)
    problem = only_problem(root)          # text: 1 is not a string: seen only if read whole
    assert problem.startswith(f"tasks/{B}.yaml:{text.count(chr(10))}:"), problem


@pytest.fixture
def unblock():
    """Should a FIFO ever be opened, a writer comes after 5 s: the test fails, never hangs."""
    fifos: list[Path] = []

    def open_for_writing():
        for fifo in fifos:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)   # fails at once if no reader
            except OSError:
                continue
            os.close(fd)

    timer = threading.Timer(5.0, open_for_writing)
    timer.daemon = True
    timer.start()
    yield fifos
    timer.cancel()


def test_fifo_is_not_opened(tmp_path, unblock):
    root = project(tmp_path)
    fifo = root / "tasks" / f"{B}.yaml"
    os.mkfifo(fifo)
    unblock.append(fifo)
    assert only_problem(root) == f"tasks/{B}.yaml:1:1: not a regular file (a FIFO)"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_symlink_to_dev_zero(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / f"{B}.yaml").symlink_to("/dev/zero")
    assert only_problem(root) == f"tasks/{B}.yaml:1:1: not a regular file (a character device)"


def test_symlink_to_a_folder(tmp_path):
    root = project(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (root / "tasks" / f"{B}.yaml").symlink_to(tmp_path / "elsewhere")
    assert only_problem(root) == f"tasks/{B}.yaml:1:1: not a regular file (a folder)"


def test_folder_named_like_a_manifest(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / f"{B}.yaml").mkdir()
    assert only_problem(root) == f"tasks/{B}.yaml:1:1: not a regular file (a folder)"


def test_broken_symlink(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / f"{B}.yaml").symlink_to(tmp_path / "missing.yaml")
    assert only_problem(root) == f"tasks/{B}.yaml:1:1: cannot read the file: No such file or directory"


def test_symlink_to_a_regular_manifest_is_followed(tmp_path):
    root = project(tmp_path)
    (tmp_path / "real.yaml").write_text(HEADER, encoding="utf-8")
    (root / "tasks" / f"{B}.yaml").symlink_to(tmp_path / "real.yaml")
    result, _, _ = validate(root)
    assert result.exit_code == 0 and result.stdout.startswith("2 manifests valid"), result.output


def test_normal_manifests_still_pass(tmp_path):
    root = write_project(tmp_path, task(A, "echo", params={"text": "hi"}),
                         task(B, "copy", (A,), inputs={"src": f"{A}:out.txt"}))
    result, elapsed, _ = validate(root)
    assert result.exit_code == 0 and result.stdout.startswith("2 manifests valid")
    assert elapsed < 0.5


def test_crlf_and_bom_read_as_before(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / f"{B}.yaml").write_bytes(b"\xef\xbb\xbf" + HEADER.replace("\n", "\r\n").encode()
                                               + b"retries: x\r\n")
    assert only_problem(root).startswith(f"tasks/{B}.yaml:6:10: Input should be a valid integer")


def test_not_utf8_still_reported(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / f"{B}.yaml").write_bytes(HEADER.encode() + b"title: G\xf6rev\n")
    assert only_problem(root) == f"tasks/{B}.yaml:1:1: not UTF-8 text: invalid start byte"


# --- tasks/project.yaml has the same bounds -------------------------------------------------

PROJECT = "tasks/project.yaml"


def with_defaults(tmp_path: Path, make) -> Path:
    root = project(tmp_path)
    path = root / "tasks" / "project.yaml"
    path.unlink()
    make(path)
    return root


@pytest.mark.parametrize("text, message", [
    ("name: p\n" + laughs(), EXPANDS),
    ("name: p\nx: " + "[" * 100_000 + "\n", DEEP),
    ("name: p\nx: " + "{a: " * 200 + "1" + "}" * 200 + "\n", DEEP),
    ("name: p\n" + "#" * (300 * 1024) + "\n", "manifest is 301 KB; the limit is 256 KB"),
])
def test_project_yaml_hostile_text(tmp_path, text, message):
    root = with_defaults(tmp_path, lambda p: p.write_text(text, encoding="utf-8"))
    line = only_problem(root)
    assert line.startswith(f"{PROJECT}:") and line.endswith(": " + message), line


def test_project_yaml_fifo(tmp_path, unblock):
    def make(path):
        os.mkfifo(path)
        unblock.append(path)
    assert only_problem(with_defaults(tmp_path, make)) == f"{PROJECT}:1:1: not a regular file (a FIFO)"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_project_yaml_symlink_to_dev_zero(tmp_path):
    root = with_defaults(tmp_path, lambda p: p.symlink_to("/dev/zero"))
    assert only_problem(root) == f"{PROJECT}:1:1: not a regular file (a character device)"


def test_project_yaml_symlink_to_a_folder(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    root = with_defaults(tmp_path, lambda p: p.symlink_to(tmp_path / "elsewhere"))
    assert only_problem(root) == f"{PROJECT}:1:1: not a regular file (a folder)"


# --- the pure-Python composer (no libyaml) ends the same way --------------------------------

@pytest.mark.parametrize("text, words", [
    (laughs(), "expands to more than"),
    ("a: " + "[" * 2_000 + "\n", "nested deeper than"),
    ("a: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than"),
    ("- " * 3_000 + "x\n", "nested deeper than"),
    ("a: &x [*x]\n", "recursive alias"),
])
def test_without_libyaml(monkeypatch, text, words):
    monkeypatch.setattr(yamlpos, "_LOADER", yamlpos._BoundedSafeLoader)
    start = time.perf_counter()
    with pytest.raises(YamlSyntaxError) as info:
        yamlpos.load(text)
    assert time.perf_counter() - start < 2 * SECONDS
    assert words in info.value.message and info.value.line >= 1 and info.value.col >= 1


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="needs libyaml to compare with")
@pytest.mark.parametrize("make", [
    lambda depth: "a: " + "[" * depth + "1" + "]" * depth + "\n",
    lambda depth: "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "v\n",
    lambda depth: "- " * depth + "x\n",
])
def test_the_pure_python_loader_stops_where_libyaml_does(monkeypatch, make):
    """Its scanner's own bound on nesting ends no document that libyaml's path accepts,
    and accepts none that libyaml's path ends."""
    def outcome(text, loader):
        monkeypatch.setattr(yamlpos, "_LOADER", loader)
        try:
            return yamlpos.load(text).data
        except YamlSyntaxError as exc:
            return exc.message
    for depth in range(yamlpos.MAX_DEPTH - 3, yamlpos.MAX_DEPTH + 4):
        text = make(depth)
        assert outcome(text, yamlpos._BoundedSafeLoader) == outcome(text, yaml.CSafeLoader), depth
