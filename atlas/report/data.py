"""Everything a report shows, read from the state store as plain data (the JSON format is
this dict): the work-breakdown tree, each task's result, figures, environment, licenses,
history. Up-to-date steps show the result they are up to date with."""
from __future__ import annotations

import datetime as dt

from pydantic import ValidationError

from atlas import __version__, charts
from atlas.errors import UsageError
from atlas.graph import levels
from atlas.licenses import project_inventory
from atlas.project import Project
from atlas.manifest import WbsNode
from atlas.probe import Probe
from atlas.queries import job_text, last_values, presented, wbs_key
from atlas.state import StateStore
from atlas.facts import open_store

LEVELS = ("Ana Görev", "Alt Görev", "Makro Görev", "Mikro Görev")
DONE = ("succeeded",)          # an up-to-date step counts through the result it repeats


def build(project: Project, probe: Probe, run_id: int | None = None, log_lines: int = 20,
          history_limit: int = 60) -> dict:
    store = open_store(project, readonly=True) if (project.state_dir / "state.db").exists() else None
    try:
        as_of = _as_of(store, run_id)
        steps = {task: _step(project, store, task, as_of, log_lines) for task in project.steps}
        runs = store.runs(history_limit, up_to=run_id) if store else []
        shown_run = run_id or (runs[0]["id"] if runs else None)
        recorded = store.run_environment(shown_run) if store and shown_run else None
    finally:
        if store:
            store.close()
    environment = recorded or probe.as_dict()
    listed = {n.task for n in project.defaults.wbs_index().values() if n.task}
    planned = sorted(listed - set(steps))
    tree = _tree(project.defaults.hierarchy, steps)
    done = sum(1 for s in steps.values() if s["result_status"] in DONE)
    counts: dict[str, int] = {}
    for s in steps.values():
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    return {
        "project": project.defaults.model_dump(mode="json", exclude={"hierarchy"}),
        "generated": dt.datetime.now().isoformat(timespec="seconds"), "atlas_version": __version__,
        "run": shown_run, "as_of_run": run_id, "counts": counts,
        "progress": {"done": done, "total": len(steps) + len(planned), "planned_only": planned},
        "tree": tree, "unplaced": [s for t, s in sorted(steps.items()) if t not in _placed(tree)],
        "steps": sorted(steps.values(), key=lambda s: wbs_key(s["wbs"])),
        "graph": {"levels": [sorted(level) for level in levels(project.graph)],
                  "edges": sorted(project.graph.edges)},
        "runs": fold_noop_runs(runs),
        "environment": {"recorded": recorded is not None, "of_run": shown_run if recorded else None,
                        **_environment(environment)},
        "licenses": project_inventory(project, environment=environment),
    }


def _as_of(store: StateStore | None, run_id: int | None) -> int | None:
    if run_id is None:
        return None
    if store is None or store.run(run_id) is None:
        raise UsageError(f"no run {run_id} in this project", "`atlas history` lists the runs and their numbers")
    return store.last_step_run_of(run_id)


def _step(project: Project, store: StateStore | None, task: str, as_of: int | None, log_lines: int) -> dict:
    step = project.steps[task]
    m = step.manifest
    entry = {"id": task, "title": m.title, "title_en": m.title_en, "wbs": m.wbs, "handler": step.handler.name,
             "module": m.module, "libraries": m.libraries, "license": m.license, "depends_on": m.depends_on,
             "description": m.description, "status": "never run", "reason": "", "result_status": None,
             "message": "", "hint": "", "findings": [], "duration": None, "ended": None, "checked": None,
             "run": None, "result_run": None, "up_to_date_with": None, "attempts": 0, "note": None,
             "params": step.params.model_dump(mode="json"), "metrics": [], "per_step": None,
             "artifacts": [], "log_tail": [], "figures": [], "figure_problems": [], "job": ""}
    last = store.last_step(task, as_of) if store else None
    if last is None:
        return entry
    shown = presented(store, last)
    entry.update({k: shown[k] for k in ("status", "reason", "result_status", "message", "hint", "findings",
                                        "duration", "ended", "checked", "run", "result_run", "up_to_date_with",
                                        "attempts", "note")})
    entry["params"] = shown["params"] or entry["params"]
    entry["job"] = job_text(shown["job"])
    source = shown["result_step_run"]
    entry["metrics"] = list(last_values(store, source).values())
    entry["per_step"] = per_step_table(store.metrics(source))
    entry["artifacts"] = store.artifacts(source)
    entry["log_tail"] = store.log_tail(source, log_lines)
    for spec in store.figures(source):
        try:
            entry["figures"].append(charts.parse(spec).model_dump(mode="json"))
        except (ValidationError, AttributeError, TypeError) as exc:
            entry["figure_problems"].append(f"figure {str((spec or {}).get('name', '?'))!r} unreadable: "
                                            f"{str(exc).splitlines()[0]}")
    return entry


def per_step_table(metrics: list[dict]) -> dict | None:
    """Metrics recorded per step (epoch) as one table, a row per step."""
    stepped = [m for m in metrics if m["step"] is not None]
    if not stepped:
        return None
    names = list(dict.fromkeys(m["name"] for m in stepped))
    rows: dict[int, dict] = {}
    for m in stepped:
        rows.setdefault(m["step"], {})[m["name"]] = m["value"]
    table = charts.Table(name="per-step", title="per step", columns=["step", *names],
                         rows=[[k, *(v.get(n) for n in names)] for k, v in sorted(rows.items())])
    return table.model_dump(mode="json")


def _tree(nodes: list[WbsNode], steps: dict[str, dict], depth: int = 0) -> list[dict]:
    out = []
    for node in nodes:
        # a Mikro Görev names its task; otherwise every task filed under this number
        tasks = [node.task] if node.task else sorted(t for t, s in steps.items() if s["wbs"] == node.wbs)
        here = [steps[t] for t in tasks if t in steps]
        children = _tree(node.children, steps, depth + 1)
        out.append({"wbs": node.wbs, "title": node.title, "title_en": node.title_en,
                    "level": LEVELS[min(depth, len(LEVELS) - 1)], "depth": depth, "steps": here,
                    "planned_task": node.task if node.task and node.task not in steps else None,
                    "children": children, "done": _done(here, bool(node.task), children)})
    return out


def _placed(tree: list[dict]) -> set[str]:
    found = set()
    for node in tree:
        found |= {s["id"] for s in node["steps"]}
        found |= _placed(node["children"])
    return found


def _done(here: list[dict], names_a_task: bool, children: list[dict]) -> dict:
    """How many of the Atlas tasks at or below a node have a current success (a planned
    task without a manifest counts as not done)."""
    total = max(len(here), int(names_a_task)) if here or names_a_task or not children else 0
    done = sum(1 for s in here if s["result_status"] in DONE)
    for child in children:
        done, total = done + child["done"]["done"], total + child["done"]["total"]
    return {"done": done, "total": total}


def fold_noop_runs(runs: list[dict]) -> list[dict]:
    """Runs newest first; consecutive runs in which nothing ran (every step up to date)
    become one entry that says how many there were."""
    out: list[dict] = []
    for run in runs:
        noop = bool(run["counts"]) and set(run["counts"]) == {"up-to-date"}
        if noop and out and out[-1].get("folded"):
            out[-1]["first"], out[-1]["n"] = run["id"], out[-1]["n"] + 1
            out[-1]["started"] = run["started"]
        elif noop:
            out.append({"folded": True, "first": run["id"], "last": run["id"], "n": 1, "started": run["started"],
                        "steps": sum(run["counts"].values())})
        else:
            out.append(run | {"folded": False})
    return out


def _environment(env: dict) -> dict:
    return {"gpus": env.get("gpus", []), "driver": env.get("driver"), "cuda_driver": env.get("cuda_driver"),
            "torch_cuda": env.get("torch_cuda"), "cudnn": env.get("cudnn"), "nvcc": env.get("nvcc"),
            "trtexec": env.get("trtexec"), "packages": env.get("packages", {})}
