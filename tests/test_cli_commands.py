"""validate, schema, plan, status, show, history, env and done, end to end."""
from __future__ import annotations

import json
import os
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
    show = atlas(root, "show", A).stdout
    assert "last: succeeded (never run)" in show
    assert "chars = 2 chars" in show
    assert f".atlas/out/{A}/out.txt  2 B  sha256:" in show
    assert "wrote 2 chars" in show                 # the step's own log line
    assert "· echo finding" in show
    detail = json.loads(atlas(root, "show", A, "--json").stdout)
    assert detail["last"]["fingerprint"] and detail["metrics"][0]["name"] == "chars"
    history = json.loads(atlas(root, "history", "--json").stdout)
    assert [h["task"] for h in history] == [B, A]
    assert atlas(root, "show", "AG-T-Z-001").exit_code == 2


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


def test_report_formats(tmp_path):
    root = project(tmp_path)
    (root / "tasks" / "project.yaml").write_text(
        "name: demo\ntitle: Demo plan\nhierarchy:\n  - wbs: '1'\n    title: Ana görev\n    title_en: Main task\n")
    atlas(root, "run", B)
    atlas(root, "run", B)          # up to date: the report still shows what the last success found
    md = atlas(root, "report").stdout
    assert md.startswith("# Demo plan")
    assert "- **1** Ana Görev: Ana görev — *Main task*" in md
    assert f"| 1 | `{A}` task {A} | echo | up-to-date |" in md
    assert "- echo finding" in md and "| chars | 2 | chars |" in md
    html_path = root / "status.html"
    assert atlas(root, "report", "--format", "html", "-o", str(html_path)).exit_code == 0
    html = html_path.read_text()
    assert html.startswith("<!doctype html>") and f"<code>{A}</code>" in html and "<li>echo finding</li>" in html
    data = json.loads(atlas(root, "report", "--format", "json").stdout)
    assert data["counts"] == {"up-to-date": 2}
    assert data["steps"][0]["metrics"][0]["value"] == 2.0


def test_compare_two_runs(tmp_path):
    root = project(tmp_path)
    first = json.loads(atlas(root, "run", B, "--json").stdout)["run"]
    write_task(root, task(A, "echo", params={"text": "hello"}))
    second = json.loads(atlas(root, "run", B, "--json").stdout)["run"]
    text = atlas(root, "compare", str(first), str(second)).stdout
    assert text.splitlines()[0] == f"run {first} -> run {second}"
    assert "    chars: 2 -> 5 chars (+3)" in text
    data = json.loads(atlas(root, "compare", str(first), str(second), "--json").stdout)
    step_a = next(s for s in data["steps"] if s["task"] == A)
    assert (step_a["a"]["status"], step_a["b"]["status"]) == ("succeeded", "succeeded")
    assert step_a["metrics"] == [{"name": "chars", "unit": "chars", "a": 2.0, "b": 5.0, "delta": 3.0}]
    third = json.loads(atlas(root, "run", B, "--json").stdout)["run"]      # up to date: same metrics
    same = json.loads(atlas(root, "compare", str(second), str(third), "--json").stdout)
    assert next(s for s in same["steps"] if s["task"] == A)["metrics"][0]["delta"] == 0.0
    missing = atlas(root, "compare", str(first), "99")
    assert missing.exit_code == 2 and "error: no run 99 in this project" in missing.stderr
