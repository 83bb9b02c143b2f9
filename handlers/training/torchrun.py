"""Launching the DDP worker through torchrun (torch.distributed.elastic): the command line,
the script the other nodes run, the launch notes, and the launch itself with rank 0's
events replayed as the step's own."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from atlas.handler import Context
from atlas.tail import FileTail
from handlers.training.ddp_params import DistributedParams

# What torchrun sets in every worker's environment (torch.distributed.run docs).
TORCHRUN_ENV = {
    "LOCAL_RANK": "rank of the process on its node (pick the GPU with it)",
    "RANK": "global rank across all nodes",
    "GROUP_RANK": "rank of this node (the worker group)",
    "ROLE_RANK": "rank among workers with the same role",
    "LOCAL_WORLD_SIZE": "processes on this node (--nproc-per-node)",
    "WORLD_SIZE": "processes in the whole job",
    "ROLE_WORLD_SIZE": "processes with the same role",
    "MASTER_ADDR": "host of the rank-0 process (the process group's TCPStore)",
    "MASTER_PORT": "port of that store",
    "TORCHELASTIC_RESTART_COUNT": "restarts so far (--max-restarts)",
    "TORCHELASTIC_MAX_RESTARTS": "the configured maximum",
    "TORCHELASTIC_RUN_ID": "the rendezvous id (--rdzv-id)",
    "OMP_NUM_THREADS": "set to 1 per process by torchrun unless given; atlas sets cores/processes on CPUs",
}
POLL_S = 0.2


def torchrun_command(nproc: int, nnodes: int, node_rank: int | None, rdzv_endpoint: str, rdzv_id: str,
                     join_timeout_s: int, config: str, python: str = sys.executable) -> list[str]:
    """The torchrun invocation: standalone on one node, c10d rendezvous across several
    (node_rank None: the rendezvous numbers the nodes, as under srun)."""
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}"] + ([f"--node-rank={node_rank}"] if node_rank is not None else []) + [
            "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=join_timeout={join_timeout_s}"]
    return cmd + ["--max-restarts=0", "-m", "handlers.training.ddp_worker", config]


def slurm_allocation(env: dict[str, str]) -> tuple[int, str] | None:
    """(nodes, first node's host name) when the step runs as a Slurm job of several
    nodes (`slurm: {nodes: N}` under --executor slurm); None otherwise."""
    if not env.get("SLURM_JOB_ID"):
        return None
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    if nodes < 2:
        return None
    done = subprocess.run(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")],
                          capture_output=True, text=True, timeout=60, check=False)
    hosts = done.stdout.split()
    if done.returncode != 0 or not hosts:
        raise RuntimeError(f"cannot read the job's node list: {(done.stderr or done.stdout).strip()}")
    return nodes, hosts[0]


def srun_command(nodes: int, torchrun: list[str]) -> list[str]:
    """One torchrun per node of the allocation, started by srun; they meet at the first
    node's c10d rendezvous (the standard pattern: no hand-started launch script)."""
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "--export=ALL", *torchrun]


def other_nodes_script(params: DistributedParams, nproc: int, configs: list[tuple[str, dict]],
                       project_root: Path) -> str:
    """A bash script for nodes 1..nnodes-1: the same torchrun launches, in the same order,
    each with its config inlined (the node needs the project and the data, not node 0's files)."""
    lines = ["#!/usr/bin/env bash",
             "# Run on every other node: bash launch_other_nodes.sh NODE_RANK",
             f"# Node 0 runs `atlas run AG-DS-DISTRIBUTED-001`; rendezvous at {params.rdzv_endpoint}.",
             "set -euo pipefail",
             'NODE_RANK="${1:?usage: launch_other_nodes.sh NODE_RANK (1..' + str(params.nnodes - 1) + ')}"',
             f'export ATLAS_PROJECT_ROOT="${{ATLAS_PROJECT_ROOT:-{project_root}}}"',
             'cd "$ATLAS_PROJECT_ROOT"', 'CONFIG_DIR="$(mktemp -d)"', "trap 'rm -rf \"$CONFIG_DIR\"' EXIT"]
    for name, config in configs:
        lines.append(f"cat > \"$CONFIG_DIR/{name}\" <<'JSON'\n{json.dumps(config, indent=1)}\nJSON")
        cmd = torchrun_command(nproc, params.nnodes, 0, params.rdzv_endpoint, config["rdzv_id"],
                               params.join_timeout_s, "CONFIG", python="python3")
        cmd = [c.replace("--node-rank=0", "--node-rank=NODE_RANK") for c in cmd]
        text = " ".join(shlex.quote(c) for c in cmd)
        lines.append(text.replace("--node-rank=NODE_RANK", '--node-rank="$NODE_RANK"')
                     .replace(" CONFIG", f' "$CONFIG_DIR/{name}"'))
    return "\n".join(lines) + "\n"


def env_markdown(params: DistributedParams, nproc: int, commands: list[list[str]]) -> str:
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in TORCHRUN_ENV.items())
    cmds = "\n".join(" ".join(shlex.quote(c) for c in cmd) for cmd in commands)
    via_srun = any(cmd and cmd[0] == "srun" for cmd in commands)
    more = ("" if params.nnodes == 1 else
            f"\nSlurm started one torchrun per node with srun; they met at {params.rdzv_endpoint}.\n" if via_srun else
            f"\nOn each other node (1..{params.nnodes - 1}): `bash launch_other_nodes.sh NODE_RANK` from the "
            f"project folder (set ATLAS_PROJECT_ROOT if it lives elsewhere). All nodes must reach "
            f"{params.rdzv_endpoint} and each other (NCCL: set NCCL_SOCKET_IFNAME to the right interface if "
            f"there are several).\n")
    return (f"# DDP launch\n\n{params.nnodes} node(s) x {nproc} process(es), rendezvous "
            f"{'standalone' if params.nnodes == 1 else params.rdzv_backend + ' at ' + params.rdzv_endpoint}.\n\n"
            f"Commands node 0 ran:\n\n```bash\n{cmds}\n```\n{more}\n"
            f"## Environment torchrun sets in every process\n\n| variable | meaning |\n|---|---|\n{rows}\n")


def _forward_event(ctx: Context, line: str) -> None:
    """Replay one of rank 0's JSON-line events as this step's own."""
    event = json.loads(line)
    if event["type"] == "metric":
        ctx.metric(event["name"], event["value"] if event["value"] is not None else float("nan"),
                   event.get("unit", ""), event.get("step"))
    else:
        ctx.emit({**event, "task": ctx.task_id})


def launch(ctx: Context, cmd: list[str], events: Path, env: dict) -> int:
    ctx.log.info("launching: %s", " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, cwd=ctx.project_root, env=env)
    tail = FileTail(events, lambda line: _forward_event(ctx, line))      # whole lines only
    while proc.poll() is None:
        tail.read()
        time.sleep(POLL_S)
    tail.read()
    return proc.returncode


def process_count(params: DistributedParams) -> tuple[int, bool]:
    """(processes per node, on GPUs?)."""
    import torch
    gpus = torch.cuda.device_count() if params.device != "cpu" else 0
    if params.device == "cuda" and not gpus:
        raise RuntimeError("device: cuda, but torch sees no CUDA device")
    if params.nproc_per_node != "auto":
        return int(params.nproc_per_node), gpus > 0
    return (gpus, True) if gpus else (2, False)
