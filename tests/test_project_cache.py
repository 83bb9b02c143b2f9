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
    """Was the project served by the cache (no full load behind it)?"""
    return open_project(root)._defaults is None


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
def test_any_change_in_tasks_is_a_miss(tmp_path, change):
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
    assert not from_cache(root)
    seen = open_project(root)
    if change == "edit":
        assert seen.steps[M].info.title_en == "edited title"
    elif change == "add":
        assert "AG-T-N-001" in seen.steps
    elif change == "remove":
        assert S not in seen.steps
    else:
        assert seen.settings["name"] == "renamed"


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
    assert json.loads((root / CACHE_FILE).read_text())["steps"].keys() == {M, S}


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
    assert os.stat(root / CACHE_FILE).st_ino == written.st_ino       # served from the cache
    again = subprocess.run([*atlas, "run", "--json", "AG-T-C-001"], capture_output=True, text=True)
    assert json.loads(again.stdout)["steps"]["AG-T-C-001"]["status"] == "up-to-date"


def test_a_fifo_where_the_cache_goes_is_a_miss_not_a_hang(tmp_path):
    root = project(tmp_path)
    (root / CACHE_FILE).parent.mkdir(parents=True)
    os.mkfifo(root / CACHE_FILE)
    assert not from_cache(root)                        # returns at once: it is never read
    assert (root / CACHE_FILE).is_file()               # the rename put a real cache in its place
    assert from_cache(root)
