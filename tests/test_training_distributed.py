"""DISTRIBUTED (DDP through torchrun) on CPUs with gloo: 2 processes equal 1 process with the
same global batch; two launchers on localhost meet at one c10d rendezvous; the launch
command and the torchrun environment are written down."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from handlers.training.ddp_params import DistributedParams  # noqa: E402
from handlers.training.torchrun import env_markdown, torchrun_command  # noqa: E402
from helpers import task, write_task  # noqa: E402

DDP = "AG-DS-DISTRIBUTED-001"
REPO = Path(__file__).resolve().parents[1]
# BatchNorm statistics of a half batch differ from a full batch's, and class weights
# normalise per process: both off, so one process and two do exactly the same arithmetic.
EXACT = {"epochs": 2, "batch_size": 16, "workers": 0, "device": "cpu", "freeze_bn": True,
         "class_weighted": False, "lr": 5e-4, "measure_scaling": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(where: Path) -> Path:
    (where / "tasks").mkdir(parents=True, exist_ok=True)
    (where / "tasks" / "project.yaml").write_text(yaml.safe_dump({
        "name": "xray",
        "data": {"root": None, "classes": ["NORMAL", "PNEUMONIA"], "image_size": 32,
                 "synthetic": {"train": 16, "val": 8, "test": 8}},
        "model": {"arch": "resnet18", "weights": "none", "freeze_until": None}}))
    return where


def atlas_cli(root: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "atlas", "-C", str(root), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_step(root: Path, **params) -> dict:
    write_task(root, task(DDP, "distributed", params=params))
    proc = atlas_cli(root, "run", "--json", DDP)
    out, err = proc.communicate(timeout=600)
    report = json.loads(out)
    assert proc.returncode == 0, (report, err[-3000:])
    return report["steps"][DDP]


def test_torchrun_command_single_and_multi_node():
    single = torchrun_command(4, 1, 0, "node0:29400", "job", 300, "c.json", python="py")
    assert single == ["py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                      "--max-restarts=0", "-m", "handlers.training.ddp_worker", "c.json"]
    multi = torchrun_command(8, 2, 1, "node0:29400", "job", 300, "c.json", python="py")
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400",
            "--rdzv-id=job", "--rdzv-conf=join_timeout=300"} <= set(multi)
    assert "--standalone" not in multi


def test_params_refuse_a_node_rank_outside_the_job():
    with pytest.raises(ValueError, match="node_rank 2 must be below nnodes 2"):
        DistributedParams(nnodes=2, node_rank=2)


def test_environment_document_names_every_torchrun_variable():
    text = env_markdown(DistributedParams(nnodes=2, rdzv_endpoint="10.0.0.1:29400"), 4, [["torchrun", "x"]])
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RESTART_COUNT", "GROUP_RANK"):
        assert f"`{var}`" in text
    assert "launch_other_nodes.sh NODE_RANK" in text and "10.0.0.1:29400" in text


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    results = {}
    for n in (1, 2):
        root = project(tmp_path / f"n{n}")
        step = run_step(root, nproc_per_node=n, **EXACT)
        assert f"DDP {n} processes (gloo)" in step["message"]
        out = root / ".atlas" / "out" / DDP
        results[n] = (json.loads((out / "training.json").read_text()),
                      torch.load(out / "model.pt", weights_only=True)["state_dict"])
    (one, w1), (two, w2) = results[1], results[2]
    assert two["world"] == 2 and one["world"] == 1
    for a, b in zip(one["history"], two["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)
    worst = max(float((w1[k].double() - w2[k].double()).abs().max()) for k in w1 if w1[k].is_floating_point())
    assert worst < 1e-3
    # and training changed the weights at all, so the comparison means something
    assert one["history"][0]["train_loss"] != one["history"][-1]["train_loss"]


@pytest.mark.slow
def test_two_node_run_on_localhost_meets_at_one_rendezvous(tmp_path):
    root = project(tmp_path / "p")
    port = free_port()
    write_task(root, task(DDP, "distributed", params={
        **EXACT, "epochs": 1, "nproc_per_node": 1, "nnodes": 2, "node_rank": 0,
        "rdzv_endpoint": f"127.0.0.1:{port}", "join_timeout_s": 120}))
    node0 = atlas_cli(root, "run", "--json", DDP)
    deadline = time.time() + 120
    scripts = []
    while not scripts and time.time() < deadline and node0.poll() is None:
        scripts = list((root / ".atlas" / "out" / ".tmp").glob("*/launch_other_nodes.sh"))
        time.sleep(0.2)
    assert scripts, "node 0 never wrote the other nodes' launch script"
    node1 = subprocess.run(["bash", str(scripts[0]), "1"], cwd=root, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    out, err = node0.communicate(timeout=600)
    assert node1.returncode == 0, node1.stderr[-3000:]
    assert node0.returncode == 0, err[-3000:]
    step = json.loads(out)["steps"][DDP]
    assert "DDP 2 processes (gloo)" in step["message"]
    published = root / ".atlas" / "out" / DDP
    assert (published / "model.pt").is_file()
    assert "--node-rank=\"$NODE_RANK\"" in (published / "launch_other_nodes.sh").read_text()


@pytest.mark.slow
def test_scaling_is_measured_on_two_gloo_processes(tmp_path):
    """measure_throughput runs for real (1 process, then 2) with both feeds, tiny batches."""
    root = project(tmp_path)
    params = {**EXACT, "epochs": 1, "measure_scaling": True, "throughput_steps": 3, "warmup_steps": 1,
              "per_process_batch": 4}
    for feed in ("cached", "loader"):
        step = run_step(root, nproc_per_node=2, scaling_feed=feed, **params)
        scaling = json.loads((root / ".atlas" / "out" / DDP / "scaling.json").read_text())
        one, many = scaling["one_process"], scaling["n_processes"]
        assert (one["processes"], many["processes"]) == (1, 2)
        assert one["steps"] == many["steps"] == 3 and one["per_process_batch"] == many["per_process_batch"] == 4
        assert one["feed"] == many["feed"] == feed
        assert one["loader"] == ("cached" if feed == "cached" else "dataloader")
        assert one["images_per_s"] > 0 and many["images_per_s"] > 0
        assert scaling["efficiency"] == pytest.approx(many["images_per_s"] / (2 * one["images_per_s"]), rel=1e-12)
        assert f"scaling efficiency {100 * scaling['efficiency']:.0f}%" in step["message"]


def test_the_efficiency_arithmetic_of_the_step(tmp_path):
    """N-process images/s over N times the 1-process figure, and the metrics that carry it."""
    import logging

    from atlas.handler import Context
    from handlers.training import ddp_run
    events = []
    ctx = Context(DDP, DistributedParams(measure_scaling=True), {}, tmp_path / "out", tmp_path, {},
                  emit=events.append, log=logging.getLogger("test"))
    runs = []
    for name, figures in (("throughput-1", {"images_per_s": 100.0, "processes": 1}),
                          ("throughput-4", {"images_per_s": 360.0, "processes": 4}),
                          ("train", {"backend": "nccl", "best_epoch": 2, "test": {"accuracy": 0.9, "auc": 0.95},
                                     "synthetic": False, "findings": []})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(figures))
        runs.append((name, {"result": str(path)}, 4, 1))
    result = ddp_run._finish(ctx, ctx.params, runs, 4, on_gpu=True)
    metrics = {e["name"]: e["value"] for e in events if e["type"] == "metric"}
    assert metrics["scaling_efficiency"] == pytest.approx(90.0)      # 360 / (4 x 100)
    assert metrics["ddp_images_per_s_1"] == 100.0 and metrics["ddp_images_per_s_4"] == 360.0
    assert "100 img/s at 1 process, 360 at 4 (cached batches), scaling efficiency 90%" in result.message
    assert json.loads((tmp_path / "out" / "scaling.json").read_text())["efficiency"] == pytest.approx(0.9)


def test_a_slurm_job_of_several_nodes_launches_torchrun_through_srun(tmp_path, monkeypatch):
    """Inside a 3-node allocation: one torchrun per node via srun, rendezvous at the first
    node (scontrol is faked: this machine's cluster has one node; untested on a real
    multi-node cluster)."""
    from handlers.training.torchrun import slurm_allocation, srun_command

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\n[ \"$1 $2 $3\" = 'show hostnames gpu[07-09]' ] && "
                                   "printf 'gpu07\\ngpu08\\ngpu09\\n'\n")
    (fake / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    env = {"SLURM_JOB_ID": "41", "SLURM_JOB_NUM_NODES": "3", "SLURM_JOB_NODELIST": "gpu[07-09]"}
    assert slurm_allocation(env) == (3, "gpu07")
    assert slurm_allocation({"SLURM_JOB_ID": "41", "SLURM_JOB_NUM_NODES": "1"}) is None
    assert slurm_allocation({}) is None
    cmd = srun_command(3, torchrun_command(8, 3, None, "gpu07:29400", "job", 300, "c.json", python="py"))
    assert cmd[:6] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                       "--export=ALL"]
    assert "--nnodes=3" in cmd and "--rdzv-endpoint=gpu07:29400" in cmd
    assert not any(c.startswith("--node-rank") for c in cmd)      # the rendezvous numbers the nodes
