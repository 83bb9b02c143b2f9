"""The DISTRIBUTED step's params: the training params plus how torchrun launches the
processes and how scaling is measured. Free of torch, so `atlas validate` checks them."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from handlers.training.params import TrainParams


class DistributedParams(TrainParams):
    nproc_per_node: Literal["auto"] | int = Field("auto", description="processes per node; auto = the node's "
                                                                      "GPUs, or 2 gloo processes without GPUs")
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0, description="this node's rank; the step runs on node 0, the others run "
                                                "launch_other_nodes.sh")
    rdzv_endpoint: str = Field("localhost:29400", description="host:port of the c10d rendezvous (node 0)")
    rdzv_backend: Literal["c10d"] = "c10d"
    rdzv_id: str = Field("atlas-ddp", pattern=r"^[A-Za-z0-9_.-]+$")
    join_timeout_s: int = Field(900, ge=10, description="how long node 0 waits for the others")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto = nccl on GPUs, gloo on CPUs")
    sync_bn: bool = Field(False, description="SyncBatchNorm: batch statistics over all processes")
    measure_scaling: bool = True
    throughput_steps: int = Field(20, ge=1)
    warmup_steps: int = Field(5, ge=0)
    per_process_batch: int | None = Field(None, ge=1, description="batch per process for the scaling "
                                                                 "measurement; default batch_size")
    scaling_feed: Literal["cached", "loader"] = Field("cached", description="cached: real batches kept on the "
                                                      "device (model + all-reduce); loader: decoding files too")

    @model_validator(mode="after")
    def _node_rank_in_range(self) -> "DistributedParams":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        return self
