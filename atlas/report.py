"""Status reports: the work-breakdown tree with each Atlas task's last result, rendered
with the Jinja templates in reports/ (HTML, Markdown) or as JSON."""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from atlas import __version__
from atlas.loader import Project
from atlas.manifest import WbsNode
from atlas.probe import Probe
from atlas.state import StateStore
from atlas.workflow import open_store

FORMATS = {"html": "status.html.j2", "md": "status.md.j2"}
LEVELS = ("Ana Görev", "Alt Görev", "Makro Görev", "Mikro Görev")


def _step_entry(project: Project, store: StateStore | None, task: str) -> dict:
    step = project.steps[task]
    last = store.last_step(task) if store else None
    success = store.last_success(task) if store else None
    metrics: dict[str, dict] = {}
    if success is not None:
        for m in store.metrics(success.id):          # the last value of each metric
            metrics[m["name"]] = m
    shown = store.result_of(last) if last else None   # up to date: what the repeated success found
    return {"id": task, "title": step.manifest.title, "title_en": step.manifest.title_en,
            "wbs": step.manifest.wbs, "handler": step.handler.name, "libraries": step.manifest.libraries,
            "license": step.manifest.license, "depends_on": step.manifest.depends_on,
            "status": last.status if last else "never run", "reason": last.reason if last else "",
            "message": shown.message if shown else "", "hint": shown.hint if shown else "",
            "findings": shown.findings if shown else [], "duration": last.duration if last else None,
            "ended": last.ended if last else None, "metrics": list(metrics.values()),
            "artifacts": store.artifacts(success.id) if success else []}


def _tree(nodes: list[WbsNode], steps: dict[str, dict], depth: int = 0) -> list[dict]:
    out = []
    for node in nodes:
        task = node.task or next((t for t, s in steps.items() if s["wbs"] == node.wbs), None)
        out.append({"wbs": node.wbs, "title": node.title, "title_en": node.title_en,
                    "level": LEVELS[min(depth, len(LEVELS) - 1)], "depth": depth,
                    "step": steps.get(task) if task else None, "planned_task": task,
                    "children": _tree(node.children, steps, depth + 1)})
    return out


def build(project: Project, probe: Probe) -> dict:
    path = project.state_dir / "state.db"
    store = open_store(project) if path.exists() else None
    try:
        steps = {task: _step_entry(project, store, task) for task in project.steps}
        runs = store.runs(10) if store else []
    finally:
        if store:
            store.close()
    counts: dict[str, int] = {}
    for s in steps.values():
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    listed = {n.task for n in project.defaults.wbs_index().values() if n.task}
    return {"project": project.defaults.model_dump(mode="json", exclude={"hierarchy"}),
            "generated": dt.datetime.now().isoformat(timespec="seconds"), "atlas_version": __version__,
            "counts": counts, "tree": _tree(project.defaults.hierarchy, steps),
            "unplaced": [s for t, s in sorted(steps.items()) if t not in listed],
            "steps": sorted(steps.values(), key=lambda s: [int(p) for p in s["wbs"].split(".")]),
            "runs": runs, "environment": {"gpus": [asdict(g) for g in probe.gpus], "driver": probe.driver,
                                          "cuda_driver": probe.cuda_driver, "torch": probe.packages.get("torch"),
                                          "torch_cuda": probe.torch_cuda, "cudnn": probe.cudnn,
                                          "tensorrt": probe.packages.get("tensorrt")}}


def render(data: dict, fmt: str) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "."), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html.j2"]), trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["when"] = lambda ts: dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"
    env.filters["secs"] = lambda s: "-" if s is None else f"{s:.1f}s"
    return env.get_template(FORMATS[fmt]).render(**data)
