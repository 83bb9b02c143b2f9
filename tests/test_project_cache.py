"""atlas.project_cache: a valid project is read back from .atlas/cache/project.json while
everything its load read is unchanged, and loaded in full again the moment anything is not.
The projects here use the installed handlers (entry points), as the CLI does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from atlas.errors import InvalidManifests
from atlas.loader import load_project
from atlas import project_cache
from atlas.project_cache import CACHE_FILE, open_project
from helpers import task, write_project, write_task

M, S = "AG-T-M-001", "AG-T-S-001"


def settled(root) -> None:
    """Every file of the project as if written a minute ago (a file changed within the last
    2 s is not cached: see RACY_NS)."""
    then = time.time_ns() - 60_000_000_000
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(then, then), follow_symlinks=False)


def project(tmp_path):
    root = write_project(tmp_path / "p", task(M, "manual", title_en="check the notes", params={"evidence": []}),
                         task(S, "script_gpu", (M,), params={"scripts": "scripts"}))
    (root / "scripts").mkdir()
    settled(root)
    return root


def from_cache(root) -> bool:
    """Was the project served by the cache (no full load behind it, no manifest read)?"""
    project = open_project(root)
    return project._defaults is None and project.parsed == 0


def test_a_file_changed_just_now_is_not_cached_until_it_settles(tmp_path):
    root = project(tmp_path)
    write_task(root, task(M, "manual", title_en="just now", params={"evidence": []}))
    assert not from_cache(root) and not (root / CACHE_FILE).exists()
    assert not from_cache(root)                        # still too recent to trust its signature
    settled(root)
    assert not from_cache(root) and from_cache(root)


def test_the_second_open_is_served_from_the_cache_and_matches_a_full_load(tmp_path):
    root = project(tmp_path)
    first = open_project(root)
    assert first._defaults is not None and (root / CACHE_FILE).is_file()
    cached = open_project(root)
    assert cached._defaults is None                       # nothing parsed, nothing validated
    full = load_project(root)
    assert cached.settings == full.settings
    assert cached.graph.levels == full.graph.levels and cached.graph.preds == full.graph.preds
    assert {t: s.info for t, s in cached.steps.items()} == {t: s.info for t, s in full.steps.items()}
    assert cached.steps[S].info.inputs == full.steps[S].info.inputs


def test_a_cached_step_loads_its_manifest_handler_and_params_when_asked(tmp_path):
    root = project(tmp_path)
    open_project(root)
    cached = open_project(root)
    step = cached.steps[S]
    assert step.handler.name == "script_gpu" and step.params.scripts == "scripts"
    assert step.manifest.depends_on == [M]
    assert cached.defaults.name == "test-project" and cached.steps[M]._loaded is not None


@pytest.mark.parametrize("change", ["edit", "add", "remove", "defaults"])
def test_any_change_in_tasks_is_seen(tmp_path, change):
    """A changed manifest is read again (only it); changed defaults are a full load."""
    root = project(tmp_path)
    open_project(root)
    if change == "edit":
        write_task(root, task(M, "manual", title_en="edited title", params={"evidence": []}))
    elif change == "add":
        write_task(root, task("AG-T-N-001", "manual"))
    elif change == "remove":
        (root / "tasks" / f"{S}.yaml").unlink()
    else:
        (root / "tasks" / "project.yaml").write_text("name: renamed\n")
    seen = open_project(root)
    assert seen.parsed == {"edit": 1, "add": 1, "remove": 0, "defaults": 2}[change]
    assert (seen._defaults is None) == (change != "defaults")
    if change == "edit":
        assert seen.steps[M].info.title_en == "edited title"
    elif change == "add":
        assert "AG-T-N-001" in seen.steps
    elif change == "remove":
        assert S not in seen.steps
    else:
        assert seen.settings["name"] == "renamed"
    full = load_project(root)
    assert {t: s.info for t, s in seen.steps.items()} == {t: s.info for t, s in full.steps.items()}
    assert list(seen.steps) == list(full.steps)
    assert (seen.graph.levels, seen.graph.preds) == (full.graph.levels, full.graph.preds)


@pytest.mark.parametrize("steps", [2, 160])          # 160: read on two cores (two_cores.MIN_ITEMS)
def test_a_load_without_a_cache_keeps_each_file_as_a_listing_signs_it(tmp_path, steps):
    """With no cache to compare, the listing is not stat()ed up front: each manifest's
    signature is the stat its read was checked by. The cache must hold what a listing
    would, for every YAML file in tasks/ (the defaults too)."""
    tasks = [task(f"AG-T-N{i:03d}-001", "manual") for i in range(steps)]
    root = write_project(tmp_path / "p", *tasks)
    settled(root)
    open_project(root)
    kept = json.loads((root / CACHE_FILE).read_text())["tasks"]
    assert kept == project_cache._tasks_listing(root) and len(kept) == steps + 1
    assert all(isinstance(sig, list) and len(sig) == 4 for sig in kept.values())
    assert from_cache(root)


def many_manual(tmp_path, steps: int = 160, defaults: str = "name: many\nhierarchy: [{wbs: '1', title: Bir}]\n"):
    """`steps` manual steps (160: read on two cores, two_cores.MIN_ITEMS) under wbs 1."""
    root = write_project(tmp_path / "p", *[task(f"AG-T-N{i:03d}-001", "manual") for i in range(steps)])
    (root / "tasks" / "project.yaml").write_text(defaults)
    settled(root)
    return root


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="the two-core read needs two CPUs")
def test_a_cold_load_on_two_cores_checks_without_importing_a_yaml_parser(tmp_path):
    """The other core reads the manifests and tasks/project.yaml: the process that checks
    them imports no PyYAML for a valid project, and gets the defaults as a full load does."""
    root = many_manual(tmp_path)
    code = ("import sys; from pathlib import Path; from atlas.project_cache import open_project; "
            "p = open_project(Path(sys.argv[1])); "
            "print(p.parsed, p.settings['name'], p.settings['hierarchy'][0]['title'], 'yaml' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["160", "many", "Bir", "False"], done.stderr
    assert open_project(root).settings == load_project(root).settings      # the cache, then a full load


@pytest.mark.parametrize("steps", [2, 160])
def test_a_bad_project_yaml_read_with_the_manifests_is_reported_as_a_full_load_does(tmp_path, steps):
    root = many_manual(tmp_path, steps, defaults="name: many\nhierarchy: [{wbs: '1', title: Bir, colour: red}]\n")
    with pytest.raises(InvalidManifests) as cold:
        open_project(root)
    with pytest.raises(InvalidManifests) as full:
        load_project(root)
    assert [str(p) for p in cold.value.problems] == [str(p) for p in full.value.problems]
    assert any(str(p).startswith("tasks/project.yaml:2:") and "colour" in str(p) for p in cold.value.problems)
    assert not (root / CACHE_FILE).exists()
    (root / "tasks" / "project.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InvalidManifests) as broken:
        open_project(root)
    assert [str(p).split(": ", 1)[0] for p in broken.value.problems] == ["tasks/project.yaml:2:1"]


def test_a_manifest_edited_after_its_read_is_a_miss_next_time(tmp_path, monkeypatch):
    """The signature is taken before the file is read: an edit made while the load goes on
    (here, right after the read) leaves a signature that no longer matches."""
    from atlas import manifest_file

    root = project(tmp_path)
    read = manifest_file._read

    def read_then_edit(path, rel, out):
        found = read(path, rel, out)
        if os.path.basename(path) == f"{M}.yaml":
            write_task(root, task(M, "manual", title_en="edited while loading", params={"evidence": []}))
            old = time.time_ns() - 30_000_000_000       # settled, and not the time it had
            os.utime(path, ns=(old, old))
        return found

    monkeypatch.setattr(manifest_file, "_read", read_then_edit)
    assert open_project(root).steps[M].info.title_en == "check the notes"
    monkeypatch.setattr(manifest_file, "_read", read)
    again = open_project(root)
    assert again.parsed == 1 and again.steps[M].info.title_en == "edited while loading"


def test_a_manifest_made_invalid_is_reported_not_served(tmp_path):
    root = project(tmp_path)
    open_project(root)
    path = root / "tasks" / f"{S}.yaml"
    path.write_text(path.read_text().replace("handler: script_gpu", "handler: script_gpuu"))
    with pytest.raises(InvalidManifests) as caught:
        open_project(root)
    assert "unknown handler 'script_gpuu'" in str(caught.value.problems[0])


def test_a_path_param_whose_link_now_leaves_the_project_is_a_miss_and_an_error(tmp_path):
    root = project(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    open_project(root)
    assert from_cache(root)
    (root / "scripts").rmdir()
    os.symlink(outside, root / "scripts")              # no manifest changed
    with pytest.raises(InvalidManifests) as caught:
        open_project(root)
    assert "outside the project" in str(caught.value.problems[0])


def test_the_cache_keys_on_the_handlers_code_and_the_import_path(tmp_path, monkeypatch):
    root = project(tmp_path)
    open_project(root)
    data = json.loads((root / CACHE_FILE).read_text())
    assert any(path.endswith("handlers/training/gpu_training.py") for path in data["files"])
    assert any(path.endswith("atlas/loader.py") for path in data["files"])
    code = next(p for p in data["files"] if p.endswith("handlers/research/manual.py"))
    data["files"][code] = [0, 0, 0, 0]                 # as if the handler's file had changed
    (root / CACHE_FILE).write_text(json.dumps(data))
    assert not from_cache(root)
    assert from_cache(root)
    extra = tmp_path / "site"
    extra.mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(extra)])   # a new folder of packages
    assert not from_cache(root)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong format", "other root"])
def test_a_damaged_or_foreign_cache_is_ignored_and_rewritten(tmp_path, damage):
    root = project(tmp_path)
    open_project(root)
    cache = root / CACHE_FILE
    text = cache.read_text()
    data = json.loads(text)
    cache.write_text({"garbage": "\0\1 not json", "truncated": text[: len(text) // 2],
                      "wrong format": json.dumps({**data, "format": -1}),
                      "other root": json.dumps({**data, "root": "/elsewhere"})}[damage])
    assert not from_cache(root)
    assert from_cache(root)


def test_a_project_whose_cache_cannot_be_written_still_loads(tmp_path):
    root = project(tmp_path)
    (root / ".atlas").mkdir()
    (root / ".atlas" / "cache").write_text("a file where the folder would go")
    assert open_project(root).steps.keys() == {M, S}
    assert not from_cache(root)


def test_a_hit_imports_no_yaml_pydantic_networkx_or_handler(tmp_path):
    # in fresh interpreters (pytest's own import path differs, and is part of the key)
    root = project(tmp_path)
    code = ("import sys; from pathlib import Path; from atlas.project_cache import open_project; "
            f"p = open_project(Path({str(root)!r})); "
            "print(p._defaults is None, sorted(m for m in ('yaml', 'pydantic', 'networkx', 'handlers', "
            "'atlas.loader') if m in sys.modules))")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert first.startswith("False") and "pydantic" in first        # the full load that writes it
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert second.strip() == "True []"


def test_the_cli_plans_from_the_cache_as_from_a_full_load(tmp_path):
    root = project(tmp_path)
    cmd = [sys.executable, "-m", "atlas", "-C", str(root), "plan", "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    written = os.stat(root / CACHE_FILE)
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert json.loads(second.stdout) == json.loads(first.stdout)
    again = os.stat(root / CACHE_FILE)                        # read, not replaced
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    kept = json.loads((root / CACHE_FILE).read_text())
    assert kept["steps"].keys() == {M, S} and kept["graph"]["levels"] == json.loads(first.stdout)["levels"]


def test_a_step_of_a_cached_project_runs_after_its_full_load(tmp_path):
    """`atlas validate` writes the cache; `atlas run` reads it, and the step that must run
    gets its manifest, handler and params by the full load behind it."""
    root = tmp_path / "p"
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "project.yaml").write_text("name: c\n")
    write_task(root, task("AG-T-C-001", "cuda_setup"))
    settled(root)
    atlas = [sys.executable, "-m", "atlas", "-C", str(root)]
    assert subprocess.run([*atlas, "validate"], capture_output=True, text=True).returncode == 0
    written = os.stat(root / CACHE_FILE)
    done = subprocess.run([*atlas, "run", "--json", "--no-report", "AG-T-C-001"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"]["AG-T-C-001"]["status"] == "succeeded"
    assert json.loads((root / CACHE_FILE).read_text())["graph"]["levels"] == [["AG-T-C-001"]]  # ordered by run
    ordered = os.stat(root / CACHE_FILE)
    assert ordered.st_ino != written.st_ino
    again = subprocess.run([*atlas, "run", "--json", "AG-T-C-001"], capture_output=True, text=True)
    assert json.loads(again.stdout)["steps"]["AG-T-C-001"]["status"] == "up-to-date"
    assert os.stat(root / CACHE_FILE).st_ino == ordered.st_ino       # served from the cache


def test_validate_keeps_no_order_and_the_first_plan_orders_with_networkx_once(tmp_path):
    """Checking needs no order (networkx is a fifth of a cold validate): the cache that
    validate writes has none; the first plan orders the graph and the cache keeps it, so
    the next plan imports no networkx."""
    root = chain(tmp_path)
    settled(root)
    code = ("import sys; from pathlib import Path; from atlas.cli import run_cli; "
            "sys.argv = ['atlas', '-C', sys.argv[1], *sys.argv[2:]]\n"
            "try:\n    run_cli()\nexcept SystemExit:\n    pass\n"
            "print('networkx' in sys.modules, file=sys.stderr)")

    def atlas(*args: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "-c", code, str(root), *args], capture_output=True, text=True)
        return done.stdout, done.stderr.split()[-1]

    assert atlas("validate")[1] == "False"
    assert json.loads((root / CACHE_FILE).read_text())["graph"]["levels"] is None
    first, imported = atlas("plan", "--json")
    assert imported == "True"
    levels = json.loads(first)["levels"]
    assert json.loads((root / CACHE_FILE).read_text())["graph"]["levels"] == levels
    second, imported = atlas("plan", "--json")
    assert imported == "False" and json.loads(second) == json.loads(first)


def test_a_fifo_where_the_cache_goes_is_a_miss_not_a_hang(tmp_path):
    root = project(tmp_path)
    (root / CACHE_FILE).parent.mkdir(parents=True)
    os.mkfifo(root / CACHE_FILE)
    assert not from_cache(root)                        # returns at once: it is never read
    assert (root / CACHE_FILE).is_file()               # the rename put a real cache in its place
    assert from_cache(root)


# --- only the changed manifests read again ------------------------------------------------

C = "AG-T-C-001"


def chain(tmp_path):
    """M (manual) <- S (script_gpu) <- C (onnx_conv, its checkpoint from S): C's input links
    it to what S's handler produces."""
    root = project(tmp_path)
    write_task(root, task(C, "onnx_conv", (S,), inputs={"checkpoint": f"{S}:model.pt"}))
    settled(root)
    open_project(root)
    assert from_cache(root)
    return root


def same_as_full_load(project, root) -> None:
    full = load_project(root)
    assert {t: s.info for t, s in project.steps.items()} == {t: s.info for t, s in full.steps.items()}
    assert list(project.steps) == list(full.steps)
    assert (project.graph.levels, project.graph.preds) == (full.graph.levels, full.graph.preds)


def full_load_problems(root) -> list[str]:
    with pytest.raises(InvalidManifests) as caught:
        load_project(root)
    return [str(p) for p in caught.value.problems]


def test_a_new_dependency_is_ordered_again_as_a_full_load_orders_it(tmp_path):
    root = chain(tmp_path)
    write_task(root, task(C, "onnx_conv", (S, M), inputs={"checkpoint": f"{S}:model.pt"}))
    write_task(root, task("AG-T-N-001", "manual", (C,)))
    seen = open_project(root)
    assert seen.parsed == 2 and seen.graph.preds[C] == sorted([S, M])
    same_as_full_load(seen, root)


@pytest.mark.parametrize("edit", ["invalid field", "unknown dependency", "cycle", "input no longer made",
                                  "dependency removed", "duplicate id", "id not the file name"])
def test_a_changed_manifest_with_a_problem_is_reported_as_a_full_load_reports_it(tmp_path, edit):
    """Whatever the changed file breaks, in itself or in the unchanged ones that link to
    it, is reported at its place, exactly as a full load reports it."""
    root = chain(tmp_path)
    tasks = root / "tasks"
    if edit == "invalid field":
        write_task(root, task(M, "manual", params={"evidence": []}, colour="blue"))
    elif edit == "unknown dependency":
        write_task(root, task(M, "manual", ("AG-T-X-001",), params={"evidence": []}))
    elif edit == "cycle":
        write_task(root, task(M, "manual", (C,), params={"evidence": []}))
    elif edit == "input no longer made":          # C is unchanged; S no longer produces model.pt
        write_task(root, task(S, "manual", (M,), params={"evidence": []}))
    elif edit == "dependency removed":            # C is unchanged; what it depends on is gone
        (tasks / f"{S}.yaml").unlink()
    elif edit == "duplicate id":
        (tasks / f"{M}.yml").write_text((tasks / f"{M}.yaml").read_text())
    else:
        (tasks / "AG-T-Z-001.yaml").write_text((tasks / f"{M}.yaml").read_text())
    expected = full_load_problems(root)
    with pytest.raises(InvalidManifests) as caught:
        open_project(root)
    assert [str(p) for p in caught.value.problems] == expected and expected
    if edit in ("input no longer made", "dependency removed"):
        assert all(p.startswith(f"tasks/{C}.yaml:") for p in expected)


def test_an_unchanged_step_whose_path_now_leaves_the_project_fails_a_partial_load_too(tmp_path):
    root = chain(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "scripts").rmdir()
    os.symlink(outside, root / "scripts")              # S's path param, S unchanged
    write_task(root, task(M, "manual", title_en="edited", params={"evidence": []}))
    with pytest.raises(InvalidManifests) as caught:
        open_project(root)
    assert "outside the project" in str(caught.value.problems[0])


def test_a_partial_load_is_cached_once_the_files_settle_and_imports_no_networkx(tmp_path):
    # in fresh interpreters, as in the test of a hit (the import path is part of the key)
    root = chain(tmp_path)
    code = ("import sys; from pathlib import Path; from atlas.project_cache import open_project; "
            f"p = open_project(Path({str(root)!r})); "
            "print(p.parsed, p._defaults is None, 'networkx' in sys.modules, p.steps['AG-T-M-001'].info.title_en)")

    def fresh() -> list[str]:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()

    assert fresh()[:2] == ["3", "False"]                # the full load that writes the cache
    write_task(root, task(M, "manual", title_en="edited", params={"evidence": []}))
    assert fresh() == ["1", "True", "False", "edited"]
    assert fresh() == ["1", "True", "False", "edited"]  # just written: not trusted to the cache yet


def test_a_partial_load_writes_the_cache_when_the_files_have_settled(tmp_path, monkeypatch):
    root = chain(tmp_path)
    write_task(root, task(M, "manual", title_en="edited", params={"evidence": []}))
    written = os.stat(root / CACHE_FILE).st_ino
    monkeypatch.setattr(project_cache, "RACY_NS", 0)   # as if the edit were seconds old
    assert open_project(root).parsed == 1
    assert os.stat(root / CACHE_FILE).st_ino != written
    assert from_cache(root) and open_project(root).steps[M].info.title_en == "edited"


def test_a_partially_loaded_project_loads_fully_for_a_step_that_runs(tmp_path):
    root = chain(tmp_path)
    write_task(root, task(M, "manual", title_en="edited", params={"evidence": []}))
    seen = open_project(root)
    assert seen.steps[M]._loaded is not None and seen.steps[C]._loaded is None
    assert seen.steps[C].handler.name == "onnx_conv" and seen.steps[C].manifest.depends_on == [S]
    assert seen.defaults.name == "test-project" and seen.steps[M].manifest.title_en == "edited"


def test_step_info_rows_keep_every_field_in_order():
    import dataclasses

    from atlas.project import StepInfo

    info = StepInfo("h", "h@1:abc", ("cuda",), False, True, {"a": [1]}, {"x": ("T:o", True)}, ("w.py",),
                    ("data",), "başlık", "title", "1.2")
    assert info.as_row() == [getattr(info, f.name) for f in dataclasses.fields(StepInfo)]
    assert StepInfo.from_row(json.loads(json.dumps(info.as_row()))) == info
    fast = StepInfo.of(*info.as_row())              # what the loader and the cache make: no __init__
    assert fast == info and vars(fast) == vars(info) and list(vars(fast)) == [f.name for f in dataclasses.fields(StepInfo)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.title = "changed"


def test_a_handler_that_fails_to_load_when_the_cache_is_written_leaves_the_old_cache(tmp_path, monkeypatch):
    from atlas.registry import HandlerLoadError, Registry

    root = chain(tmp_path)
    write_task(root, task(S, "script_gpu", (M,), title_en="edited", params={"scripts": "scripts"}))
    written = os.stat(root / CACHE_FILE).st_ino
    load = Registry.load

    def failing(self, name):
        if name == "manual":               # only the unchanged step's handler, which the write loads
            raise HandlerLoadError("handler 'manual' failed to import: boom")
        return load(self, name)

    monkeypatch.setattr(Registry, "load", failing)
    monkeypatch.setattr(project_cache, "RACY_NS", 0)
    seen = open_project(root)
    assert seen.parsed == 1 and seen.steps[S].info.title_en == "edited"
    assert os.stat(root / CACHE_FILE).st_ino == written      # not rewritten, no error
