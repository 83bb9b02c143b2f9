"""The Slurm executor against a real cluster (`.ci/slurm-cluster start` makes a one-node
one on this machine): a pipeline through Slurm, a failing step, a timeout, a job cancelled
from outside, Ctrl-C of the runner, and a runner killed and restarted while its job waits
in the queue. Skipped, with the reason, where there is no cluster to talk to."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from atlas import slurm
from atlas.state import StateStore
from helpers import atlas, runner, task, write_project

A, B, C, D = "AG-T-A-001", "AG-T-B-001", "AG-T-C-001", "AG-T-D-001"


def _cluster() -> str | None:
    why = slurm.missing()
    if why:
        return f"{why} (apt-get install slurm-wlm munge, then .ci/slurm-cluster start)"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo did not answer: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        return f"no Slurm cluster answers ({(done.stderr or done.stdout).strip()[:200]}); .ci/slurm-cluster start"
    return None


WHY = _cluster()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no Slurm cluster: {WHY}")


def slurm_run(root: Path, *args: str):
    return atlas(root, "run", "--executor", "slurm", *args)


def jobs(root: Path) -> dict[str, dict]:
    """task -> its latest batch job, from the store."""
    store = StateStore(root / ".atlas" / "state.db", readonly=True)
    try:
        rows = store.db.execute("SELECT s.task, j.* FROM step_jobs j JOIN step_runs s ON s.id = j.step_run_id "
                                "ORDER BY j.step_run_id").fetchall()
        return {r["task"]: dict(r) for r in rows}
    finally:
        store.close()


def squeue_names() -> list[str]:
    done = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=20)
    return done.stdout.split()


def job_id_of(name: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=20)
        if done.stdout.strip():
            return done.stdout.split()[0]
        time.sleep(0.2)
    raise AssertionError(f"no job {name} in the queue")


def test_a_pipeline_through_slurm(tmp_path):
    root = write_project(tmp_path, task(A, "echo", params={"text": "hi"}), task(B, "copy", (A,), inputs={"src": f"{A}:out.txt"}),
                         task(C, "echo", (A,)), task(D, "echo", (B, C)))
    result = slurm_run(root, D)
    assert result.exit_code == 0, result.output
    found = jobs(root)
    assert set(found) == {A, B, C, D}
    for info in found.values():
        assert info["executor"] == "slurm" and info["state"] == "COMPLETED" and info["node"]
        assert info["submitted"] <= info["started"] <= info["ended"]
    # dependencies respected: a step's job started after its dependencies' jobs ended
    # (Slurm's clock has whole seconds)
    assert found[B]["started"] >= found[A]["ended"] and found[D]["started"] >= max(found[B]["ended"], found[C]["ended"])
    assert (root / ".atlas" / "out" / B / "copy.txt").read_text() == "hi"
    assert not (root / ".atlas" / "slurm").exists() or not any((root / ".atlas" / "slurm").iterdir())
    status = atlas(root, "status")
    assert "JOB" in status.output and f"slurm {found[A]['job_id']} on {found[A]['node']}" in status.output
    show = atlas(root, "show", B, "--json")
    detail = json.loads(show.stdout)
    assert detail["last"]["job"]["job_id"] == found[B]["job_id"]
    assert any("Slurm job" in line for line in detail["log_tail"])
    # the same as the local executor: up to date whichever executor ran it
    again = atlas(root, "run", D)
    assert again.exit_code == 0 and "4 up-to-date" in again.output


def test_failing_steps_keep_their_reason(tmp_path):
    root = write_project(tmp_path, task(A, "fail"), task(B, "crash"))
    result = slurm_run(root, "-k", A, B)
    assert result.exit_code == 1
    assert "boom: the step failed on purpose" in result.output
    found = jobs(root)
    assert found[B]["state"] == "FAILED" and found[B]["exit_code"] == "3:0"
    assert f"Slurm job {found[B]['job_id']} on {found[B]['node']} ended FAILED" in result.output


def test_retries_submit_a_new_job(tmp_path):
    root = write_project(tmp_path, task(A, "flaky", retries=1))
    result = slurm_run(root, A)
    assert result.exit_code == 0, result.output
    store = StateStore(root / ".atlas" / "state.db", readonly=True)
    try:
        ids = [r[0] for r in store.db.execute("SELECT job_id FROM step_jobs ORDER BY step_run_id")]
    finally:
        store.close()
    assert len(ids) == 2 and ids[0] != ids[1]


def test_timeout_is_slurms(tmp_path):
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 300}, timeout="3s"))
    start = time.monotonic()
    result = slurm_run(root, A)
    assert result.exit_code == 1
    assert time.monotonic() - start < 200
    assert jobs(root)[A]["state"] == "TIMEOUT"
    assert "ended TIMEOUT" in result.output and "raise `timeout:`" in result.output


def test_scancel_from_outside(tmp_path):
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 300}))
    proc = runner(root, "--executor", "slurm", A)
    job = job_id_of(f"atlas-{A}")
    subprocess.run(["scancel", job], check=True, timeout=20)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert f"Slurm job {job}" in out and "ended CANCELLED" in out


def test_ctrl_c_cancels_the_jobs(tmp_path):
    root = write_project(tmp_path, task(A, "sleep", params={"seconds": 300}), task(B, "sleep", params={"seconds": 300}))
    proc = runner(root, "--executor", "slurm", "-j", "2", A, B)
    job_id_of(f"atlas-{A}")
    job_id_of(f"atlas-{B}")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    deadline = time.monotonic() + 30
    while any(n.startswith("atlas-AG-T-") for n in squeue_names()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [n for n in squeue_names() if n in (f"atlas-{A}", f"atlas-{B}")]
    store = StateStore(root / ".atlas" / "state.db", readonly=True)
    try:
        statuses = {r[0]: r[1] for r in store.db.execute("SELECT task, status FROM step_runs")}
    finally:
        store.close()
    assert statuses == {A: "interrupted", B: "interrupted"}


def test_a_restarted_runner_takes_its_queued_job_over(tmp_path):
    """SIGKILL the runner while its job waits behind a job holding every CPU; the next run
    finds the job in the queue and follows it instead of submitting it again."""
    blocker = subprocess.run(["sbatch", "--parsable", "--job-name=atlas-test-blocker", f"--cpus-per-task={_cpus()}",
                              "--output=/dev/null", "--wrap", "sleep 300"], capture_output=True, text=True,
                             check=True, timeout=20).stdout.strip()
    try:
        root = write_project(tmp_path, task(A, "echo", params={"text": "queued"}))
        proc = runner(root, "--executor", "slurm", A)
        job = job_id_of(f"atlas-{A}")
        proc.kill()
        proc.communicate(timeout=30)
        assert f"atlas-{A}" in squeue_names()                 # the job outlives its runner
        again = runner(root, "--executor", "slurm", A)
        time.sleep(2)
        subprocess.run(["scancel", blocker], check=True, timeout=20)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, out + err
        found = jobs(root)
        assert found[A]["job_id"] == job                      # followed, not submitted again
        assert (root / ".atlas" / "out" / A / "out.txt").read_text() == "queued"
        show = json.loads(atlas(root, "show", A, "--json").stdout)
        assert any("taken over" in line for line in show["log_tail"])
    finally:
        subprocess.run(["scancel", blocker], timeout=20)


def _cpus() -> int:
    done = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=20)
    return int(done.stdout.split()[0].rstrip("+"))


def test_extra_args_cannot_override_what_atlas_sets(tmp_path):
    root = write_project(tmp_path, task(A, "echo", slurm={"extra_args": ["--output=/etc/passwd"]}))
    result = atlas(root, "validate")
    assert result.exit_code == 3
    assert "--output is set by atlas itself" in result.stderr


def test_no_slurm_commands_is_a_usage_error(tmp_path, monkeypatch):
    root = write_project(tmp_path, task(A, "echo"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = slurm_run(root, A)
    assert result.exit_code == 2
    assert "sbatch" in result.stderr and "--executor local" in result.stderr


def test_sbatch_options_from_the_manifest():
    from atlas.manifest import ExecutorDefaults, SlurmResources

    options = slurm.sbatch_options(A, SlurmResources(cpus=4, memory="16G", gpus=2, qos="high"),
                                   ExecutorDefaults(kind="slurm", partition="gpu", account="lab",
                                                    extra_args=["--constraint=h100"]),
                                   1, 5400.0, Path("/p/.atlas/slurm/x/log.txt"), Path("/p"))
    assert options[:4] == [f"--job-name=atlas-{A}", "--output=/p/.atlas/slurm/x/log.txt", "--open-mode=append",
                           "--chdir=/p"]
    for option in ("--cpus-per-task=4", "--mem=16G", "--gpus-per-node=2", "--partition=gpu", "--account=lab",
                   "--qos=high", "--time=90:00", "--constraint=h100"):
        assert option in options


def test_distributed_runs_as_one_slurm_job(tmp_path):
    """AG-DS-DISTRIBUTED-001 (2 gloo processes, a tiny synthetic set) as a Slurm job: the
    step's torchrun runs on the allocated node; its result and files come back as locally."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    import yaml

    from helpers import write_task

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "project.yaml").write_text(yaml.safe_dump({
        "name": "xray", "executor": {"kind": "slurm", "poll": 0.2},
        "data": {"root": None, "classes": ["NORMAL", "PNEUMONIA"], "image_size": 32,
                 "synthetic": {"train": 16, "val": 8, "test": 8}},
        "model": {"arch": "resnet18", "weights": "none", "freeze_until": None}}))
    ddp = "AG-DS-DISTRIBUTED-001"
    write_task(tmp_path, task(ddp, "distributed", slurm={"cpus": 2}, params={
        "epochs": 1, "batch_size": 16, "workers": 0, "device": "cpu", "measure_scaling": False}))
    import os
    import sys
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "atlas", "-C", str(tmp_path), "run", "--json", ddp], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)   # executor: from project.yaml
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["steps"][ddp]["status"] == "succeeded"
    assert jobs(tmp_path)[ddp]["state"] == "COMPLETED"
    assert (tmp_path / ".atlas" / "out" / ddp / "launch.md").exists()


def test_a_job_sbatch_refuses_is_a_failed_step(tmp_path):
    root = write_project(tmp_path, task(A, "echo", slurm={"partition": "no-such-partition"}), task(B, "echo"))
    result = slurm_run(root, "-k", A, B)
    assert result.exit_code == 1
    assert "sbatch refused the job" in result.output and "partition" in result.output
    assert (root / ".atlas" / "out" / B / "out.txt").exists()          # the other step still ran
