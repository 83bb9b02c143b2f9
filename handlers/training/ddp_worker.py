"""What torchrun runs on every rank: `python -m handlers.training.ddp_worker CONFIG.json`.

torchrun (torch.distributed.elastic) sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; this joins the process group (NCCL on GPUs, gloo on CPUs),
wraps the model in DistributedDataParallel and runs either the shared training loop
(mode "train") or a fixed number of timed steps (mode "throughput"). Rank 0 alone writes
events (progress, metrics) and the result JSON that the atlas step reads back.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from atlas.atomic import write_atomically
from atlas.handler import Progress
from handlers.ml.device import place
from handlers.ml.batches import TorchBatches
from handlers.ml.training import Dist, Reporter, TrainConfig, TrainStep, make_optimizer, to_placement
from handlers.training.loaders import choose_loader
from handlers.training.params import TrainParams


class EventReporter(Reporter):
    """Rank 0's reporter: JSON lines the atlas step tails and turns into its own events."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        super().__init__(log)
        self._file = open(path, "a", buffering=1, encoding="utf-8")

    def emit(self, event: dict) -> None:
        self._file.write(json.dumps(event) + "\n")

    def metric(self, name: str, value: float, unit: str = "", step: int | None = None) -> None:
        self.emit({"type": "metric", "name": name, "value": value, "unit": unit, "step": step})

    def progress(self, total, description):
        # atlas's own progress handle: the step replays these events with its task id
        return Progress(self.emit, "", total, description)


def backend_for(device: torch.device, requested: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


CACHED_BATCHES = 8


def _cached_batches(source, n: int) -> list:
    """A few real batches kept on the device, preprocessed: the timing then measures the
    model and the gradient all-reduce, which is what DDP scaling is about, not decoding."""
    batches = []
    source.set_epoch(0)
    while len(batches) < n:
        for x, y in source:
            batches.append((x, y))
            if len(batches) == n:
                break
    return batches


def measure_throughput(cfg: dict, params: TrainParams, run_dist: Dist, placement, model, data, log,
                       processes_per_node: int = 1) -> dict:
    """Images/s over all ranks for `steps` optimisation steps after `warmup` steps, with a
    fixed per-process batch (weak scaling: N processes do N times the work per step). The
    feed is "cached" (batches on the device) or "loader" (the step's loader: the DataLoader
    decoding on CPU workers, or DALI decoding on the GPU, each rank reading its own shard).
    Whole batches only: a short last batch is a new shape, and cuDNN autotuning it inside
    the timed window would be counted as slowness."""
    per_process = cfg["per_process_batch"]
    train = data.datasets["train"]
    feed = cfg.get("feed", "cached")
    loader = choose_loader(params.loader, placement, processes_per_node) if feed == "loader" else None
    if loader is not None and loader.factory is not None:
        source = loader.factory(train, per_process, run_dist, params.seed)
    else:
        source = TorchBatches(train, per_process, placement, train=True, rank=run_dist.rank, world=run_dist.world,
                              seed=params.seed, drop_last=True)
    model = to_placement(model, placement)
    net = DistributedDataParallel(model, device_ids=[placement.device.index] if placement.is_cuda else None)
    optimizer, _ = make_optimizer(model, TrainConfig(lr=params.lr, schedule="constant"), 1)
    step = TrainStep(net, optimizer, torch.nn.CrossEntropyLoss(), placement)
    warmup, steps = cfg["warmup_steps"], cfg["steps"]
    cached = _cached_batches(source, CACHED_BATCHES) if feed == "cached" else None
    done, epoch, started = 0, 0, None
    while done < warmup + steps:
        source.set_epoch(epoch)
        for x, y in cached or source:
            if len(y) != per_process:
                continue                 # whole batches only (see above)
            if done == warmup:
                if placement.is_cuda:
                    torch.cuda.synchronize(placement.device)
                dist.barrier()
                started = time.perf_counter()
            step(x, y)
            done += 1
            if done >= warmup + steps:
                break
        epoch += 1
    if placement.is_cuda:
        torch.cuda.synchronize(placement.device)
    dist.barrier()
    seconds = time.perf_counter() - started
    images = steps * per_process * run_dist.world
    return {"processes": run_dist.world, "per_process_batch": per_process, "steps": steps, "feed": feed,
            "loader": source.name if feed == "loader" else "cached", "seconds": seconds,
            "images_per_s": images / seconds, "device": placement.describe()}


def main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    run_dist = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    logging.basicConfig(level=logging.INFO, format=f"[rank {run_dist.rank}] %(message)s", stream=sys.stdout)
    log = logging.getLogger("atlas.ddp")
    params = TrainParams(**cfg["params"])
    placement = place(params.device, params.amp, params.channels_last, params.workers,
                      run_dist.local_rank, local_world)
    backend = backend_for(placement.device, cfg.get("backend", "auto"))
    dist.init_process_group(backend, timeout=timedelta(seconds=cfg.get("timeout_s", 1800)),
                            device_id=placement.device if placement.is_cuda else None)
    from handlers.ml.errors import MLError
    try:
        return _run(cfg, params, run_dist, placement, backend, log)
    except MLError as exc:
        # the user's to fix: rank 0 hands message and hint to the step, no traceback
        log.error("%s (%s)", exc.message, exc.hint)
        if run_dist.is_main:
            _write_json(cfg["result"], {"error": exc.message, "hint": exc.hint})
        return 1
    finally:
        dist.destroy_process_group()


def _write_json(path: str, data: dict) -> None:
    write_atomically(Path(path), json.dumps(data, default=str))


def _run(cfg, params, run_dist: Dist, placement, backend: str, log) -> int:
    from handlers.training.session import load_data, run_training, seed_everything
    from handlers.ml.models import build_model
    # other nodes may keep the project elsewhere (launch_other_nodes.sh sets this)
    project, root = cfg["project"], Path(os.environ.get("ATLAS_PROJECT_ROOT", cfg["project_root"]))
    reporter = EventReporter(Path(cfg["events"]), log) if run_dist.is_main else Reporter(log)
    # rank 0 first: it may generate the synthetic set and it decodes every image once; the
    # others wait, then drop the same unreadable images, so every rank indexes the same list
    shared = [None]
    if run_dist.is_main:
        data = load_data(params, project, root, reporter, placement)
        shared = [data.skipped]
        log.info("%d processes, backend %s, %s", run_dist.world, backend, placement.describe())
    dist.broadcast_object_list(shared, src=0)
    if not run_dist.is_main:
        data = load_data(params, project, root, reporter, placement, known_bad=shared[0])
    if cfg["mode"] == "throughput":
        choice = params.model_choice(project)
        seed_everything(params.seed)
        built = build_model(choice["arch"], len(data.classes), choice["weights"], choice["freeze_until"], root, log)
        result = measure_throughput(cfg, params, run_dist, placement, built.model, data, log,
                                    int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    else:
        def wrap(model):
            if cfg.get("sync_bn"):
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[placement.device.index] if placement.is_cuda else None)
        run = run_training(params, project, root, Path(cfg["checkpoint"]), reporter, dist=run_dist, wrap=wrap,
                           data=data, placement=placement,
                           processes_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        result = run.summary() if run_dist.is_main else {}
    if run_dist.is_main:
        _write_json(cfg["result"], {**result, "backend": backend, "world": run_dist.world})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
