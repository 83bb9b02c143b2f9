"""Read-only views of the state store and the machine: status, show, history, env."""
from __future__ import annotations

from dataclasses import asdict

from atlas.loader import Project
from atlas.probe import CAPABILITIES, Probe
from atlas.render import status_rows
from atlas.errors import UsageError
from atlas.workflow import check_targets, open_store


def _with_store(project: Project):
    if not (project.state_dir / "state.db").exists():
        return None
    return open_store(project)


def status(project: Project) -> list[dict]:
    store = _with_store(project)
    try:
        return status_rows(project, store.last_steps() if store else {})
    finally:
        if store:
            store.close()


def show(project: Project, task: str, log_lines: int = 20) -> dict:
    check_targets(project, [task])
    step = project.steps[task]
    detail = {"manifest": step.manifest.model_dump(mode="json", by_alias=True), "file": step.file,
              "params": step.params.model_dump(mode="json"), "last": None, "metrics": [], "artifacts": [],
              "log_tail": []}
    store = _with_store(project)
    if store is None:
        return detail
    try:
        last = store.last_step(task)
        if last is not None:
            source = store.result_of(last)      # an up-to-date record has no metrics of its own
            detail["last"] = asdict(last)
            detail["metrics"] = store.metrics(source.id)
            detail["artifacts"] = store.artifacts(source.id)
            detail["log_tail"] = store.log_tail(source.id, log_lines)
        return detail
    finally:
        store.close()


def history(project: Project, task: str | None, limit: int) -> list:
    if task:
        check_targets(project, [task])
    store = _with_store(project)
    if store is None:
        return []
    try:
        return store.history(task, limit)
    finally:
        store.close()


def _metrics_of(store, sr) -> dict[str, dict]:
    """Last value of each metric a step run stands for."""
    return {m["name"]: m for m in store.metrics(store.result_of(sr).id)}


def compare(project: Project, run_a: int, run_b: int) -> dict:
    """Two runs side by side: each step's status and duration, and every metric both have."""
    store = _with_store(project)
    if store is None:
        raise UsageError("no runs recorded yet", "atlas run TARGET first")
    try:
        steps: dict[str, dict] = {}
        for side, run_id in (("a", run_a), ("b", run_b)):
            if store.run(run_id) is None:
                raise UsageError(f"no run {run_id} in this project", "`atlas history` shows the run of each step")
            for sr in store.steps_of_run(run_id):        # the last attempt of a step wins
                steps.setdefault(sr.task, {"task": sr.task, "a": None, "b": None})[side] = {
                    "status": sr.status, "duration": sr.duration, "reason": sr.reason,
                    "metrics": _metrics_of(store, sr)}
        for entry in steps.values():
            a, b = entry["a"] or {"metrics": {}}, entry["b"] or {"metrics": {}}
            entry["metrics"] = [
                {"name": name, "unit": b["metrics"][name]["unit"], "a": a["metrics"][name]["value"],
                 "b": b["metrics"][name]["value"],
                 "delta": None if None in (a["metrics"][name]["value"], b["metrics"][name]["value"])
                 else b["metrics"][name]["value"] - a["metrics"][name]["value"]}
                for name in sorted(set(a["metrics"]) & set(b["metrics"]))]
            for side in ("a", "b"):
                if entry[side]:
                    entry[side].pop("metrics")
        return {"a": run_a, "b": run_b, "steps": sorted(steps.values(), key=lambda e: e["task"])}
    finally:
        store.close()


def env_report(probe: Probe) -> dict:
    data = probe.as_dict()
    data["missing"] = {cap: {"reason": reason, "hint": hint} for cap, (reason, hint) in CAPABILITIES.items()
                       if cap not in data["capabilities"]}
    return data


def env_text(report: dict) -> str:
    lines = []
    if report["gpus"]:
        for g in report["gpus"]:
            lines.append(f"GPU {g['index']}: {g['name']}, {g['memory_mib'] / 1024:.1f} GiB, "
                         f"compute capability {g['compute_capability']}")
    else:
        lines.append(f"GPU: none ({report.get('nvidia_smi_error') or 'nvidia-smi found no device'})")
    lines += [f"NVIDIA driver: {report['driver'] or '-'}",
              f"CUDA (driver supports up to): {report['cuda_driver'] or '-'}",
              f"CUDA runtime (torch build): {report['torch_cuda'] or '-'}",
              f"CUDA toolkit (nvcc): {report['nvcc'] or '-'}",
              f"cuDNN: {report['cudnn'] or '-'}",
              f"trtexec: {report['trtexec'] or '-'}", "packages:"]
    for name, version in report["packages"].items():
        lines.append(f"  {name:<12} {version or 'not installed'}")
    lines.append("capabilities: " + (", ".join(report["capabilities"]) or "none"))
    for cap, why in report["missing"].items():
        lines.append(f"  no {cap}: {why['reason']} — {why['hint']}")
    return "\n".join(lines)
