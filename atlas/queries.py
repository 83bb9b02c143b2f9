"""Read-only views of the state store and the machine: status, show, history, env."""
from __future__ import annotations

from atlas.errors import UsageError
from atlas.project import Project
from atlas.probe import CAPABILITIES, Probe
from atlas.state import StateStore, StepRun, hostname
from atlas.facts import check_targets, open_store


def _with_store(project: Project):
    if not (project.state_dir / "state.db").exists():
        return None
    return open_store(project, readonly=True)


def job_text(job: dict | None) -> str:
    """`slurm 12 on node3, queued 0.4 s, ran 61.0 s` for a step run that was a batch job."""
    if not job:
        return ""
    parts = [f"{job['executor']} {job['job_id']}" + (f" on {job['node']}" if job.get("node") else "")]
    if job.get("queue_wait_s") is not None:
        parts.append(f"queued {job['queue_wait_s']:.1f} s")
    if job.get("run_s") is not None:
        parts.append(f"ran {job['run_s']:.1f} s")
    if job.get("state") and job["state"] != "COMPLETED":
        parts.append(job["state"] + (f" ({job['reason']})" if job.get("reason") else ""))
    return ", ".join(parts)


def presented(store: StateStore, sr: StepRun, jobs: dict[int, dict] | None = None) -> dict:
    """A step run as the user should see it. An up-to-date record shows the result it is
    up to date with (message, findings, duration, when it was produced, its metrics), and
    says when it was last checked; any other record shows itself."""
    source = store.result_of(sr)
    repeats = sr.status == "up-to-date" and source.id != sr.id
    status, reason = sr.status, sr.reason or ""
    if status == "running" and runner_gone(store, sr.run_id):
        status, reason = "interrupted", "its runner is gone (killed?); the next `atlas run` records it and cleans up"
    return {"step_run": sr.id, "run": sr.run_id, "task": sr.task, "handler": sr.handler, "status": status,
            "reason": reason, "checked": sr.ended if sr.status == "up-to-date" else None,
            "result_step_run": source.id, "result_run": source.run_id, "result_status": source.status,
            "up_to_date_with": source.id if repeats else None,
            "message": source.message or "", "hint": source.hint or "", "findings": source.findings,
            "started": source.started, "ended": source.ended, "duration": source.duration,
            "attempts": source.attempts, "fingerprint": sr.fingerprint, "note": source.note,
            "params": source.params, "devices": source.devices,
            "job": jobs.get(source.id) if jobs is not None else store.job_of(source.id)}


def runner_gone(store: StateStore, run_id: int | None) -> bool:
    """A run recorded as running whose runner process no longer exists on this host."""
    from atlas.process import pid_alive

    run = store.run(run_id) if run_id is not None else None
    if run is None or run["status"] != "running" or run.get("host") != hostname():
        return False
    return not pid_alive(run["pid"])


def last_values(store: StateStore, step_run_id: int) -> dict[str, dict]:
    """The last value of each metric a step run recorded (a per-epoch metric: its last epoch)."""
    return {m["name"]: m for m in store.metrics(step_run_id)}


def status(project: Project) -> list[dict]:
    store = _with_store(project)
    try:
        last = store.last_steps() if store else {}
        jobs = store.jobs_of([store.result_of(sr).id for sr in last.values()]) if store else {}
        return [_status_row(project, task, presented(store, last[task], jobs) if task in last else None)
                for task in sorted(project.steps, key=lambda t: wbs_key(project.steps[t].info.wbs))]
    finally:
        if store:
            store.close()


def wbs_key(wbs: str) -> list[int]:
    return [int(p) if p.isdigit() else 0 for p in wbs.split(".")]


def _status_row(project: Project, task: str, shown: dict | None) -> dict:
    info = project.steps[task].info
    row = {"id": task, "wbs": info.wbs, "handler": info.handler, "title": info.title, "title_en": info.title_en, "status": "never run", "reason": "", "message": "",
           "ended": None, "duration": None, "run": None, "checked": None, "result_run": None, "job": None}
    if shown:
        row.update({k: shown[k] for k in ("status", "reason", "message", "ended", "duration", "run", "checked",
                                           "result_run", "job")})
    return row


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
            shown = presented(store, last)
            source = shown["result_step_run"]     # an up-to-date record has no metrics of its own
            detail["last"] = shown
            detail["metrics"] = store.metrics(source)
            detail["artifacts"] = store.artifacts(source)
            detail["log_tail"] = store.log_tail(source, log_lines)
        return detail
    finally:
        store.close()


def history(project: Project, task: str | None, limit: int) -> list[dict]:
    if task:
        check_targets(project, [task])
    store = _with_store(project)
    if store is None:
        return []
    try:
        return [presented(store, sr) for sr in store.history(task, limit)]
    finally:
        store.close()


def compare(project: Project, run_a: int, run_b: int, everything: bool = False) -> dict:
    """Two runs side by side: what changed in each step (status, result, metrics), and
    whether the runs' machines differ enough to make their timings incomparable."""
    store = _with_store(project)
    if store is None:
        raise UsageError("no runs recorded yet", "atlas run TARGET first")
    try:
        sides: dict[str, dict[str, dict]] = {}
        for side, run_id in (("a", run_a), ("b", run_b)):
            if store.run(run_id) is None:
                raise UsageError(f"no run {run_id} in this project", "`atlas history` shows the run of each step")
            sides[side] = {}
            for sr in store.steps_of_run(run_id):        # the last attempt of a step wins
                shown = presented(store, sr)
                shown["metrics"] = last_values(store, shown["result_step_run"])
                sides[side][sr.task] = shown
        steps = [_compare_step(task, sides["a"].get(task), sides["b"].get(task), everything)
                 for task in sorted(set(sides["a"]) | set(sides["b"]))]
        changed = [s for s in steps if s["changed"]]
        return {"a": run_a, "b": run_b, "environment": environment_differences(
                    store.run_environment(run_a), store.run_environment(run_b)),
                "steps": steps if everything else changed, "unchanged": len(steps) - len(changed)}
    finally:
        store.close()


def _compare_step(task: str, a: dict | None, b: dict | None, everything: bool) -> dict:
    ma, mb = (a or {}).get("metrics", {}), (b or {}).get("metrics", {})
    metrics = []
    for name in sorted(set(ma) & set(mb)):
        va, vb = ma[name]["value"], mb[name]["value"]
        if everything or va != vb:
            metrics.append({"name": name, "unit": mb[name]["unit"], "a": va, "b": vb,
                            "delta": None if None in (va, vb) else vb - va})
    same_result = bool(a and b and a["result_step_run"] == b["result_step_run"])
    changed = not same_result and (a is None or b is None or a["result_status"] != b["result_status"]
                                   or a["message"] != b["message"] or any(m["a"] != m["b"] for m in metrics)
                                   or set(ma) != set(mb))
    brief = {k: None for k in ("a", "b")}
    for side, shown in (("a", a), ("b", b)):
        if shown:
            brief[side] = {k: shown[k] for k in ("status", "result_status", "duration", "reason", "message",
                                                  "result_run", "up_to_date_with")}
    return {"task": task, **brief, "changed": changed, "same_result": same_result,
            "metrics": [] if same_result and not everything else metrics}


# what makes timings from two runs incomparable
COMPARED_ENVIRONMENT = ("driver", "cuda_driver", "torch_cuda", "cudnn", "trtexec")


def environment_differences(a: dict | None, b: dict | None) -> list[str]:
    if a is None or b is None:
        missing = " and ".join(side for side, env in (("the first run", a), ("the second run", b)) if env is None)
        return [f"the machine of {missing} was not recorded (atlas before 0.2): timings may not be comparable"]
    out = []
    gpus = [", ".join(f"{g['name']}" for g in env.get("gpus", [])) or "no GPU" for env in (a, b)]
    if gpus[0] != gpus[1]:
        out.append(f"GPU: {gpus[0]} -> {gpus[1]}")
    for key in COMPARED_ENVIRONMENT:
        if a.get(key) != b.get(key):
            out.append(f"{key.replace('_', ' ')}: {a.get(key) or '-'} -> {b.get(key) or '-'}")
    pa, pb = a.get("packages", {}), b.get("packages", {})
    for name in sorted(set(pa) | set(pb)):
        if pa.get(name) != pb.get(name):
            out.append(f"{name}: {pa.get(name) or 'not installed'} -> {pb.get(name) or 'not installed'}")
    return out


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
