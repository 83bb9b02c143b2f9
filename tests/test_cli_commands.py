"""validate, schema, plan, status, show, history, env and done, end to end."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from helpers import atlas, task, write_project, write_task

A, B, M = "AG-T-A-001", "AG-T-B-001", "AG-T-M-001"
REPO = Path(__file__).resolve().parents[1]


def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, task(A, "echo", params={"text": "hi"}),
                         task(B, "copy", (A,), inputs={"src": f"{A}:out.txt"}))


def test_validate_ok_and_json(tmp_path):
    root = project(tmp_path)
    result = atlas(root, "validate")
    assert result.exit_code == 0 and result.stdout.startswith("2 manifests valid")
    assert json.loads(atlas(root, "validate", "--json").stdout)["valid"] is True


def test_validate_reports_every_problem_with_location(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / f"{A}.yaml").write_text(f"id: {A}\ntitle: x\ntitle_en: x\nwbs: '1'\nhandler: echo\n"
                                             "retries: two\nparms: {}\n")
    (root / "tasks" / f"{B}.yaml").write_text("id: [unclosed\n")
    result = atlas(root, "validate")
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert lines[0] == (f"tasks/{A}.yaml:6:10: Input should be a valid integer, unable to parse string as an "
                        "integer (got 'two') [retries]")
    assert lines[1] == f"tasks/{A}.yaml:7:1: unknown field 'parms' (did you mean 'params'?) [parms]"
    assert lines[2].startswith(f"tasks/{B}.yaml:2:1: YAML syntax error:")
    assert lines[-2:] == ["error: 3 problems in the manifests",
                          "hint: fix the lines above, then run `atlas validate` again"]
    problems = json.loads(atlas(root, "validate", "--json").stdout)["problems"]
    assert [(p["file"], p["line"], p["field"]) for p in problems] == [
        (f"tasks/{A}.yaml", 6, "retries"), (f"tasks/{A}.yaml", 7, "parms"), (f"tasks/{B}.yaml", 2, "")]
    assert "Traceback" not in result.stderr + result.stdout


def test_no_project_is_a_usage_error(tmp_path):
    result = atlas(tmp_path, "validate")
    assert result.exit_code == 2
    assert "error: no tasks/ folder in" in result.stderr
    assert "hint: run atlas inside a project, or pass -C PROJECT_DIR" in result.stderr


def test_schema_is_json_schema_of_a_manifest(tmp_path):
    data = json.loads(atlas(tmp_path, "schema").stdout)
    assert data["title"] == "atlas task manifest"
    assert {"id", "title", "title_en", "wbs", "handler"} <= set(data["required"])
    assert data["additionalProperties"] is False
    assert "cuda" in json.dumps(data["properties"]["requires"])


def test_plan_formats(tmp_path):
    root = project(tmp_path)
    text = atlas(root, "plan", B).stdout
    assert text.splitlines()[0] == "2 steps in 2 level(s): 2 run"
    assert f"└─ {B}  run        never run  after {A}" in text
    data = json.loads(atlas(root, "plan", B, "--json").stdout)
    assert data["levels"] == [[A], [B]]
    assert [s["action"] for s in data["steps"]] == ["run", "run"]
    dot = atlas(root, "plan", "--dot").stdout
    assert dot.startswith("digraph atlas {") and f'"{A}" -> "{B}";' in dot
    mermaid = atlas(root, "plan", "--mermaid").stdout
    assert mermaid.startswith("flowchart LR") and "AG_T_A_001 --> AG_T_B_001" in mermaid
    both = atlas(root, "plan", "--dot", "--mermaid")
    assert both.exit_code == 2 and both.stdout == ""
    assert "error: --dot and --mermaid are different output formats: choose one" in both.stderr


def test_plan_graphs_escape_manifest_text(tmp_path):
    hostile = 'x" <script>alert(1)</script> & #1 \\ y'
    root = write_project(tmp_path, task(A, "echo", title_en=hostile))
    mermaid = atlas(root, "plan", "--mermaid").stdout
    label = mermaid.splitlines()[1]
    assert "<script>" not in mermaid and '"x"' not in mermaid and " & " not in mermaid
    assert "x#quot; #lt;script#gt;alert(1)#lt;/script#gt; #amp; #35;1" in label
    assert label.count('"') == 2                      # only the label's own quotes
    dot = atlas(root, "plan", "--dot").stdout
    assert 'x\\" <script>alert(1)</script> & #1 \\\\ y' in dot    # DOT: quote and backslash escaped


def test_plan_after_run_says_up_to_date_and_why_things_rerun(tmp_path):
    root = project(tmp_path)
    assert atlas(root, "run", B).exit_code == 0
    data = json.loads(atlas(root, "plan", B, "--json").stdout)
    assert [(s["action"], s["reason"]) for s in data["steps"]] == [("up-to-date", "nothing changed")] * 2
    write_task(root, task(A, "echo", params={"text": "new"}))
    data = json.loads(atlas(root, "plan", B, "--json").stdout)
    assert [(s["action"], s["reason"]) for s in data["steps"]] == [
        ("run", 'params changed (text "hi" -> "new")'), ("run", f"upstream {A} will run")]
    forced = json.loads(atlas(root, "plan", A, "-f", "--json").stdout)
    assert forced["steps"][0]["reason"] == "forced"


def test_status_show_history(tmp_path):
    root = project(tmp_path)
    assert atlas(root, "status").stdout.count("never run") == 2
    atlas(root, "run", B)
    status = json.loads(atlas(root, "status", "--json").stdout)
    assert [(r["id"], r["status"]) for r in status] == [(A, "succeeded"), (B, "succeeded")]
    text = atlas(root, "status").stdout.splitlines()
    assert text[0].split() == ["WBS", "TASK", "STATUS", "RESULT", "FROM", "TIME", "RESULT"]
    show = atlas(root, "show", A).stdout
    assert "  last: succeeded at " in show and "  why it ran: never run" in show
    assert "chars = 2 chars" in show
    assert f".atlas/out/{A}/out.txt  2 B  sha256:" in show
    assert "wrote 2 chars" in show                 # the step's own log line
    assert "· echo finding" in show
    detail = json.loads(atlas(root, "show", A, "--json").stdout)
    assert detail["last"]["fingerprint"] and detail["metrics"][0]["name"] == "chars"
    history = json.loads(atlas(root, "history", "--json").stdout)
    assert [h["task"] for h in history] == [B, A]
    assert atlas(root, "history").stdout.splitlines()[0].split() == [
        "STEP", "RUN", "RUN", "WHEN", "TASK", "STATUS", "TIME", "WHY", "/", "RESULT"]
    assert atlas(root, "show", "AG-T-Z-001").exit_code == 2


def test_up_to_date_steps_show_the_result_they_repeat(tmp_path):
    root = project(tmp_path)
    first = json.loads(atlas(root, "run", B, "--json").stdout)
    for _ in range(3):
        atlas(root, "run", B)                                      # no-op runs 2-4
    rows = {r["id"]: r for r in json.loads(atlas(root, "status", "--json").stdout)}
    assert rows[A]["status"] == "up-to-date" and rows[A]["message"] == "wrote 2 chars"
    assert rows[A]["result_run"] == first["run"] and rows[A]["run"] == 4 and rows[A]["duration"] > 0
    line = next(x for x in atlas(root, "status").stdout.splitlines() if A in x)
    assert "up-to-date (run 1)" in line and "wrote 2 chars" in line and "nothing changed" not in line
    show = atlas(root, "show", A).stdout
    assert "  last: up to date at " in show and "(run 4): nothing changed" in show
    assert "  result: succeeded at " in show and ", run 1, step run 1" in show
    assert "never run)" not in show
    assert "chars = 2 chars" in show and "wrote 2 chars" in show      # the result's metrics and log
    history = atlas(root, "history").stdout.splitlines()
    assert len(history) == 1 + 1 + 2                       # header, the folded checks, the two real runs
    assert "6 checks, nothing ran" in history[1] and "2-4" in history[1]
    assert len(atlas(root, "history", "--all").stdout.splitlines()) == 1 + 8
    one = json.loads(atlas(root, "history", A, "--json").stdout)
    assert one[0]["status"] == "up-to-date" and one[0]["up_to_date_with"] == one[-1]["step_run"]
    assert one[0]["message"] == "wrote 2 chars"
    assert one[0]["params"] == one[-1]["params"] == {"text": "hi"}          # from the result it repeats
    # the checks keep only the fingerprint: the components and params are the success's
    with sqlite3.connect(root / ".atlas" / "state.db") as db:
        stored = db.execute("SELECT status, components, params, fingerprint FROM step_runs WHERE task = ? ORDER BY id",
                            (A,)).fetchall()
    assert {(c, p) for status, c, p, _ in stored if status == "up-to-date"} == {("{}", "{}")}
    assert len({f for *_, f in stored}) == 1 and json.loads(stored[0][1])["params"] == {"text": "hi"}


def test_manual_step_waits_until_done_with_evidence(tmp_path):
    root = write_project(tmp_path, task(M, "manual", params={"checklist": ["read papers"],
                                                             "evidence": ["docs/review.md"]}),
                         task(B, "copy", (M,)))
    result = atlas(root, "run", B)
    assert result.exit_code == 0
    assert f"… {M}: waiting — manual step" in result.stdout
    assert f"hint: atlas done {M} --note '...'" in result.stdout
    assert f"- {B}: skipped — waiting for manual step {M}" in result.stdout
    assert atlas(root, "run", B, "--strict").exit_code == 4

    missing = atlas(root, "done", M, "--note", "read 12 papers")
    assert missing.exit_code == 1
    assert "error: evidence file(s) missing: docs/review.md" in missing.stderr
    (root / "docs").mkdir()
    (root / "docs" / "review.md").write_text("| paper | AUC |\n")
    done = atlas(root, "done", M, "--note", "read 12 papers")
    assert done.exit_code == 0, done.stderr
    out = root / ".atlas" / "out" / M
    assert (out / "evidence" / "review.md").read_text() == "| paper | AUC |\n"
    assert "- [x] read papers" in (out / "checklist.md").read_text()
    assert (out / "note.txt").read_text() == "read 12 papers\n"
    result = atlas(root, "run", B)
    assert f"= {M}: up-to-date — marked done" in result.stdout
    assert f"✓ {B}: succeeded" in result.stdout
    (root / "docs" / "review.md").write_text("| paper | AUC |\n| CheXNet | 0.84 |\n")
    assert f"… {M}: waiting — manual step changed since marked done" in atlas(root, "run", B).stdout
    assert atlas(root, "done", B, "--note", "x").exit_code == 2   # not a manual step


def test_env_runs_without_a_project_and_without_torch(tmp_path):
    code = ("import sys, json; from click.testing import CliRunner; from atlas.cli import main; "
            "r = CliRunner().invoke(main, ['env', '--json']); d = json.loads(r.stdout); "
            "assert 'torch' not in sys.modules, 'env imported torch'; print(d['capabilities'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_validate_and_plan_never_import_torch(tmp_path):
    """DESIGN: `atlas validate` and `atlas plan` stay fast: no torch, TensorRT, DALI or CuPy."""
    code = ("import sys; from click.testing import CliRunner; from atlas.cli import main; "
            f"[CliRunner().invoke(main, ['-C', {str(REPO)!r}, c]) for c in ('validate', 'plan')]; "
            "heavy = sorted(m for m in ('torch', 'tensorrt', 'nvidia.dali', 'cupy', 'onnxruntime') "
            "if m in sys.modules); print(heavy); assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path])))
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_atlas_process_keeps_its_project_frozen_to_its_end(tmp_path):
    """The real `atlas` process (run_cli) leaves the project it loaded to be taken back
    with the process, never freed object by object: it is still held when the process
    ends, out of the cyclic collector's sight. A caller of `main` in its own process
    (tests, embedding) keeps nothing."""
    root = write_project(tmp_path / "p", task(M, "manual", params={"evidence": []}))
    code = ("import atexit, gc, sys; import atlas.cli as cli\n"
            "def held():\n"
            "    kept = [o for o in cli._KEPT_TO_EXIT if o is not cli._KEPT_TO_EXIT]\n"
            "    print('held', [type(o).__name__ for o in kept], gc.get_freeze_count() > 0, file=sys.stderr)\n"
            "atexit.register(held)\n"
            f"sys.argv = ['atlas', '-C', {str(root)!r}, 'validate']\n"
            "cli.run_cli()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("1 manifest valid"), out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1] == "held ['Project'] True"
    from atlas import cli

    before = list(cli._KEPT_TO_EXIT)
    assert atlas(root, "validate").exit_code == 0
    assert cli._KEPT_TO_EXIT == before and cli._KEPT_TO_EXIT[0] is cli._KEPT_TO_EXIT


def test_compare_two_runs(tmp_path):
    root = project(tmp_path)
    first = json.loads(atlas(root, "run", B, "--json").stdout)["run"]
    write_task(root, task(A, "echo", params={"text": "hello"}))
    second = json.loads(atlas(root, "run", B, "--json").stdout)["run"]
    text = atlas(root, "compare", str(first), str(second)).stdout
    assert text.splitlines()[0] == f"run {first} -> run {second}"
    assert "    chars: 2 -> 5 chars (+3)" in text and "    result: wrote 5 chars" in text
    assert "warning" not in text                                   # same machine, same software
    data = json.loads(atlas(root, "compare", str(first), str(second), "--json").stdout)
    step_a = next(s for s in data["steps"] if s["task"] == A)
    assert (step_a["a"]["status"], step_a["b"]["status"]) == ("succeeded", "succeeded")
    assert step_a["metrics"] == [{"name": "chars", "unit": "chars", "a": 2.0, "b": 5.0, "delta": 3.0}]
    third = json.loads(atlas(root, "run", B, "--json").stdout)["run"]      # up to date: nothing changed
    same = atlas(root, "compare", str(second), str(third)).stdout.splitlines()
    assert same == [f"run {second} -> run {third}", "2 step(s) unchanged (--all shows them)"]
    every = atlas(root, "compare", str(second), str(third), "--all").stdout
    assert f"{A}: succeeded" in every and "-> up-to-date (succeeded, run 2)" in every
    assert "    chars: 5 -> 5 chars (+0)" in every
    missing = atlas(root, "compare", str(first), "99")
    assert missing.exit_code == 2 and "error: no run 99 in this project" in missing.stderr


def test_compare_warns_when_the_machines_differ(tmp_path):
    from atlas.state import StateStore

    root = project(tmp_path)
    first = json.loads(atlas(root, "run", B, "--json").stdout)["run"]
    write_task(root, task(A, "echo", params={"text": "hello"}))
    second = json.loads(atlas(root, "run", B, "--json").stdout)["run"]
    store = StateStore(root / ".atlas" / "state.db")
    env = store.run_environment(first)
    env["gpus"] = [{"name": "NVIDIA H200"}]
    env["driver"], env["packages"] = "580.1", dict(env["packages"], torch="2.99.0")
    store.db.execute("UPDATE run_environment SET data = ? WHERE run_id = ?", (json.dumps(env), first))
    store.close()
    text = atlas(root, "compare", str(first), str(second)).stdout
    assert "warning: GPU: NVIDIA H200 -> no GPU" in text
    assert "warning: driver: 580.1 -> " in text and "warning: torch: 2.99.0 -> " in text
    assert "their timings are not comparable" in text
