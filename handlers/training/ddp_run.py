"""The DISTRIBUTED step's run: configs, the torchrun launches (1-process and N-process
throughput, then training), and the result read back from rank 0."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from atlas.charts import Chart, Series
from atlas.handler import Context, Handler, Result
from handlers.ml.curves import training_charts
from handlers.ml.synthetic import synthetic_tag
from handlers.training.ddp_params import DistributedParams
from handlers.training.params import TrainParams
from handlers.training.torchrun import (env_markdown, launch, other_nodes_script, process_count, slurm_allocation,
                                        srun_command, torchrun_command)

CPU_SCALING_NOTE = ("CPU processes share one machine's cores and memory bandwidth, so this efficiency "
                    "says little about GPUs; each process got the same number of threads in both runs")


def _config(ctx: Context, params: DistributedParams, mode: str, name: str, rdzv_id: str) -> dict:
    work = ctx.output("ddp/events.jsonl").parent
    return {"mode": mode, "rdzv_id": rdzv_id,
            "params": {k: v for k, v in params.model_dump(mode="json").items() if k in TrainParams.model_fields},
            "project": ctx.project, "project_root": str(ctx.project_root), "backend": params.backend,
            "sync_bn": params.sync_bn, "events": str(work / f"{name}.events.jsonl"),
            "result": str(work / f"{name}.result.json"), "checkpoint": str(ctx.output("model.pt")),
            "per_process_batch": params.per_process_batch or params.batch_size,
            "steps": params.throughput_steps, "warmup_steps": params.warmup_steps, "feed": params.scaling_feed}


def _read_result(config: dict) -> dict:
    path = Path(config["result"])
    return json.loads(path.read_text()) if path.exists() else {}


def run_distributed(handler: Handler, ctx: Context) -> Result:
    params: DistributedParams = ctx.params
    from handlers.ml.device import cpu_count
    try:
        nproc, on_gpu = process_count(params)
    except RuntimeError as exc:
        return Result.failed(str(exc), "run `atlas env` to see why, or set device: auto")
    try:
        allocation = slurm_allocation(dict(os.environ))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return Result.failed(f"Slurm job of several nodes, but {exc}", "run the step again; see the Slurm log")
    if allocation is not None:             # the nodes Slurm gave this job, rendezvous at the first
        nodes, first = allocation
        port = params.rdzv_endpoint.rpartition(":")[2] or "29400"
        params = params.model_copy(update={"nnodes": nodes, "rdzv_endpoint": f"{first}:{port}", "node_rank": 0})
        ctx.log.info("Slurm allocation of %d nodes: one torchrun per node through srun, rendezvous at %s",
                     nodes, params.rdzv_endpoint)
    world = nproc * params.nnodes
    env = dict(os.environ)
    if not on_gpu:
        env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // nproc))
    runs = []          # (name, config, nproc, nnodes): in launch order
    if params.measure_scaling:
        runs.append(("throughput-1", _config(ctx, params, "throughput", "throughput-1", f"{params.rdzv_id}-t1"), 1, 1))
        runs.append((f"throughput-{world}", _config(ctx, params, "throughput", f"throughput-{world}",
                                                    f"{params.rdzv_id}-tn"), nproc, params.nnodes))
    runs.append(("train", _config(ctx, params, "train", "train", f"{params.rdzv_id}-train"), nproc, params.nnodes))
    commands = []
    for name, config, n, nodes in runs:
        path = ctx.write_json(f"ddp/{name}.config.json", config)
        if allocation is not None and nodes > 1:
            commands.append(srun_command(nodes, torchrun_command(n, nodes, None, params.rdzv_endpoint,
                                                                 config["rdzv_id"], params.join_timeout_s, str(path))))
        else:
            commands.append(torchrun_command(n, nodes, params.node_rank, params.rdzv_endpoint, config["rdzv_id"],
                                             params.join_timeout_s, str(path)))
    ctx.write_text("launch.md", env_markdown(params, nproc, commands))
    if params.nnodes > 1 and allocation is None:
        shared = [(f"{name}.json", config) for name, config, _, nodes in runs if nodes > 1]
        script = ctx.write_text("launch_other_nodes.sh", other_nodes_script(params, nproc, shared, ctx.project_root),
                                executable=True)
        ctx.log.info("waiting for %d other node(s): run `bash %s NODE_RANK` on each", params.nnodes - 1, script)
    for (name, config, n, nodes), cmd in zip(runs, commands):
        rc = launch(ctx, cmd, Path(config["events"]), env)
        outcome = _read_result(config)
        if rc != 0 or "error" in outcome:
            return Result.failed(outcome.get("error") or f"torchrun ({name}, {n * nodes} processes) exited with {rc}",
                                 outcome.get("hint") or "the step log has every rank's output")
    return _finish(ctx, params, runs, world, on_gpu)


def scaling_chart(one: float, many: float, world: int, feed: str) -> Chart:
    return Chart(name="ddp-scaling", title=f"DDP scaling ({feed} batches)", x_label="processes (one per GPU)",
                 y_label="images/s", series=[
                     Series(label="measured", x=[1, world], y=[one, many]),
                     Series(label="ideal (linear)", x=[1, world], y=[one, one * world], style="dashed")],
                 note=f"scaling efficiency {100 * many / (world * one):.0f}% at {world} processes")


def _finish(ctx: Context, params: DistributedParams, runs, world: int, on_gpu: bool) -> Result:
    results = {name: _read_result(config) for name, config, _, _ in runs}
    train = results["train"]
    ctx.write_json("training.json", train)
    findings = list(train.get("findings", []))
    scaling = {"world": world, "nnodes": params.nnodes, "backend": train.get("backend")}
    message = f"DDP {world} processes ({train.get('backend')})"
    if params.measure_scaling:
        one, many = results["throughput-1"], results[f"throughput-{world}"]
        efficiency = many["images_per_s"] / (world * one["images_per_s"])
        scaling.update(one_process=one, n_processes=many, efficiency=efficiency)
        ctx.metric("ddp_images_per_s_1", one["images_per_s"], "img/s")
        ctx.metric(f"ddp_images_per_s_{world}", many["images_per_s"], "img/s")
        ctx.metric("scaling_efficiency", 100 * efficiency, "%")
        message += (f": {one['images_per_s']:.0f} img/s at 1 process, {many['images_per_s']:.0f} at {world} "
                    f"({params.scaling_feed} batches), scaling efficiency {100 * efficiency:.0f}%")
        if not on_gpu:
            findings.append(CPU_SCALING_NOTE)
    ctx.write_json("scaling.json", scaling)
    for chart in training_charts(train.get("history", []), int(train.get("best_epoch") or 0)):
        ctx.figure(chart)
    if params.measure_scaling:
        ctx.figure(scaling_chart(results["throughput-1"]["images_per_s"], results[f"throughput-{world}"]["images_per_s"],
                                 world, params.scaling_feed))
    test = train.get("test", {})
    message += (f"; best epoch {train.get('best_epoch')}, test accuracy {test.get('accuracy', float('nan')):.3f}, "
                f"AUC {test.get('auc', float('nan')):.3f}{synthetic_tag(bool(train.get('synthetic')))}")
    return Result.succeeded(message, findings)
