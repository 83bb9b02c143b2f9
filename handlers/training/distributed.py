"""AG-DS-DISTRIBUTED-001: the same training under DistributedDataParallel, launched through
torchrun (torch.distributed.elastic) — no home-made launcher.

One node by default (`--standalone`, one process per GPU, or 2 gloo processes on a CPU
machine); several with `nnodes`, `node_rank` and a c10d rendezvous endpoint, in which case
the step writes the command the other nodes run (launch_other_nodes.sh). Before training it
measures throughput at 1 process and at N with the same per-process batch, and reports the
scaling efficiency: N-process images/s / (N x 1-process images/s).
"""
from __future__ import annotations

from atlas.handler import Context, Handler, Result
from handlers.training.ddp_params import DistributedParams


class Distributed(Handler):
    name = "distributed"
    version = "1"
    Params = DistributedParams
    outputs = ("model.pt", "training.json", "scaling.json", "launch.md")
    requires = ("torch",)
    gpu_env = True
    # torchrun runs the worker as `python -m`, which no import line shows
    code_modules = ("handlers.training.ddp_worker",)
    project_keys = ("data", "model")

    def run(self, ctx: Context) -> Result:
        from handlers.training.ddp_run import run_distributed
        return run_distributed(self, ctx)
