"""`atlas run` end to end on temporary projects, with real step processes."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas.lock import ProjectLock
from helpers import atlas, ctrl_c_as_at_a_terminal, run_json, task, write_project, write_task

A, B, C, D = "AG-T-A-001", "AG-T-B-001", "AG-T-C-001", "AG-T-D-001"


def chain(tmp_path: Path, **b_fields) -> Path:
    """A (echo) -> B (copy of A's out.txt)."""
    return write_project(tmp_path,
                         task(A, "echo", params={"text": "hi"}),
                         task(B, "copy", (A,), inputs={"src": f"{A}:out.txt"}, **b_fields))


def test_run_then_nothing_to_do(tmp_path):
    root = chain(tmp_path)
    code, report = run_json(root, B)
    assert code == 0
    assert {t: s["status"] for t, s in report["steps"].items()} == {A: "succeeded", B: "succeeded"}
    assert report["steps"][A]["reason"] == "never run"
    assert (root / ".atlas/out" / B / "copy.txt").read_text() == "hi"

    second = atlas(root, "run", B)
    assert second.exit_code == 0
    assert f"= {A}: up-to-date — nothing changed" in second.stdout
    assert f"= {B}: up-to-date — nothing changed" in second.stdout
    assert second.stdout.strip().splitlines()[-1].startswith("run 2: 2 up-to-date — report: ")


def test_param_change_reruns_step_and_downstream(tmp_path):
    root = chain(tmp_path)
    assert run_json(root, B)[0] == 0
    write_task(root, task(A, "echo", params={"text": "changed"}))
    code, report = run_json(root, B)
    assert code == 0
    assert report["steps"][A]["reason"] == 'params changed (text "hi" -> "changed")'
    assert report["steps"][B]["reason"] == "input src changed"
    assert (root / ".atlas/out" / B / "copy.txt").read_text() == "changed"


def test_forced_upstream_with_same_output_leaves_downstream_up_to_date(tmp_path):
    root = chain(tmp_path)
    assert run_json(root, B)[0] == 0
    code, report = run_json(root, A, "-f")
    assert report["steps"][A] == {"status": "succeeded", "reason": "forced", "message": "wrote 2 chars"}
    code, report = run_json(root, B)
    assert report["steps"][B]["status"] == "up-to-date"


def test_force_all_reruns_everything(tmp_path):
    root = chain(tmp_path)
    run_json(root, B)
    code, report = run_json(root, B, "--force-all")
    assert [s["reason"] for s in report["steps"].values()] == ["forced", "forced"]


def test_failure_skips_dependents_and_keep_going_runs_independent_steps(tmp_path):
    root = write_project(tmp_path, task(A, "fail"), task(B, "echo", (A,)), task(C, "echo"),
                         task(D, "copy", (B, C)))
    result = atlas(root, "run", D)
    assert result.exit_code == 1
    assert f"✗ {A}: failed" in result.stdout and "boom: the step failed on purpose" in result.stdout
    assert "hint: fix the fake handler" in result.stdout
    # without --keep-going nothing new starts after the failure
    assert f"- {B}: skipped — upstream {A} failed" in result.stdout
    assert f"- {C}: skipped — not started: {A} failed (use --keep-going to go on)" in result.stdout

    code, report = run_json(root, D, "-k")
    assert code == 1
    assert report["steps"][C]["status"] == "succeeded"
    assert report["steps"][B] == {"status": "skipped", "reason": f"upstream {A} failed", "message": ""}
    assert report["steps"][D]["reason"] == f"upstream {B} skipped"


def test_failed_rerun_keeps_previous_outputs(tmp_path):
    root = write_project(tmp_path, task(A, "echo", params={"text": "hi"}))
    run_json(root, A)
    write_task(root, task(A, "no_output"))
    result = atlas(root, "run", A)
    assert result.exit_code == 1
    assert "declared outputs not written: promised.txt" in result.stdout
    assert (root / ".atlas/out" / A / "out.txt").read_text() == "hi"   # last good outputs untouched


def test_timeout_kills_the_step(tmp_path):
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 60}, timeout="1s"))
    started = time.monotonic()
    result = atlas(root, "run", A)
    assert result.exit_code == 1
    assert "timed out after 1s and was killed" in result.stdout
    assert f"raise `timeout:` in tasks/{A}.yaml" in result.stdout
    assert time.monotonic() - started < 30
    pid = int((root / f"started-{A}").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_retries_rerun_a_failed_attempt(tmp_path):
    root = write_project(tmp_path, task(A, "flaky", retries=1))
    result = atlas(root, "run", A)
    assert result.exit_code == 0
    assert f"{A}: running — never run (attempt 2/2)" in result.stdout
    history = json.loads(atlas(root, "history", A, "--json").stdout)
    assert [h["status"] for h in history] == ["succeeded", "failed"]


@pytest.mark.parametrize("handler,message", [
    ("crash", "the step's process died without a result (exit code 3)"),
    ("raise", "RuntimeError: handler blew up"),
])
def test_a_crashing_step_does_not_take_the_runner_down(tmp_path, handler, message):
    root = write_project(tmp_path, task(A, handler), task(B, "echo"))
    code, report = run_json(root, A, B, "-k")
    assert code == 1
    assert report["steps"][A]["message"] == message
    assert report["steps"][B]["status"] == "succeeded"
    if handler == "raise":
        show = atlas(root, "show", A)
        assert "Traceback (most recent call last)" in show.stdout      # in the log, not on the terminal
        assert "hint: the traceback is in the step's log" in show.stdout


def test_missing_capability_skips_and_strict_fails(tmp_path):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here")
    root = write_project(tmp_path, task(A, "needs_trt"), task(B, "copy", (A,)))
    code, report = run_json(root, B)
    assert code == 0
    assert report["steps"][A] == {"status": "skipped", "reason": "TensorFlow not installed", "message": ""}
    assert report["steps"][B]["reason"] == f"upstream {A} skipped"
    assert atlas(root, "run", B, "--strict").exit_code == 4


def test_optional_input_lets_a_step_run_without_its_skipped_upstream(tmp_path):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here")
    root = write_project(tmp_path, task(A, "needs_trt"),
                         task(B, "copy", (A,), inputs={"src": {"from": f"{A}:engine.bin", "optional": True}}))
    code, report = run_json(root, B)
    assert code == 0
    assert report["steps"][A]["status"] == "skipped"
    assert report["steps"][B] == {"status": "succeeded", "reason": "never run", "message": "copied 10 chars"}
    assert (root / ".atlas/out" / B / "copy.txt").read_text() == "<no input>"


def test_input_naming_an_undeclared_output_is_a_manifest_error(tmp_path):
    root = write_project(tmp_path, task(A, "echo"), task(B, "copy", (A,), inputs={"src": f"{A}:nope.txt"}))
    result = atlas(root, "validate")
    assert result.exit_code == 3
    assert (f"tasks/{B}.yaml:9:8: input 'src': {A} (echo) produces no 'nope.txt' (it produces: out.txt) "
            "[inputs.src]") in result.stderr


def test_unknown_target_is_a_usage_error(tmp_path):
    root = chain(tmp_path)
    result = atlas(root, "run", "AG-T-A-002")
    assert result.exit_code == 2
    assert "error: unknown task 'AG-T-A-002'" in result.stderr
    assert "hint: did you mean AG-T-A-001?" in result.stderr


def test_second_runner_stops_with_a_clear_message(tmp_path):
    root = chain(tmp_path)
    lock = ProjectLock(root / ".atlas").acquire()
    try:
        result = atlas(root, "run", A)
    finally:
        lock.release()
    assert result.exit_code == 5            # EXIT_BUSY: not "a step failed"
    assert f"error: another atlas run (pid {os.getpid()}) is working in this project" in result.stderr
    assert "--wait" in result.stderr
    assert atlas(root, "run", A).exit_code == 0


def test_parallel_jobs(tmp_path):
    root = write_project(tmp_path, task(A, "echo"), task(B, "echo", params={"text": "b"}),
                         task(C, "copy", (A, B), inputs={"src": f"{B}:out.txt"}))
    code, report = run_json(root, C, "-j", "2")
    assert code == 0 and report["counts"] == {"succeeded": 3}
    assert (root / ".atlas/out" / C / "copy.txt").read_text() == "b"


def test_dry_run_changes_nothing(tmp_path):
    root = chain(tmp_path)
    result = atlas(root, "run", B, "-n")
    assert result.exit_code == 0
    assert f"{A}  run        never run" in result.stdout
    assert not (root / ".atlas" / "out").exists()


def test_ctrl_c_stops_cleanly_and_records_interrupted(tmp_path):
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 60}), task(B, "echo", (A,)))
    tests_dir = Path(__file__).parent
    script = ("import sys; from atlas.cli import main; from helpers import REGISTRY; "
              f"main(['-C', {str(root)!r}, 'run', {B!r}], obj={{'registry': REGISTRY}})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests_dir), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_at_a_terminal)
    marker = root / f"started-{A}"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate(timeout=30)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert f"! {A}: interrupted" in out
    with pytest.raises(ProcessLookupError):
        os.kill(int(marker.read_text()), 0)      # the step's process went with it
    status = json.loads(atlas(root, "status", "--json").stdout)
    assert {r["id"]: r["status"] for r in status} == {A: "interrupted", B: "never run"}
    history = json.loads(atlas(root, "history", "--json").stdout)
    assert history[0]["task"] == A and history[0]["status"] == "interrupted"
