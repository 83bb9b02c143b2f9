"""Text, JSON, DOT and Mermaid renderings of plans, statuses and step details."""
from __future__ import annotations

import datetime as dt
import json

import networkx as nx

from atlas.loader import Project
from atlas.planner import Plan
from atlas.state import StepRun

ACTION_WORD = {"run": "run", "up-to-date": "up to date", "skip": "skip", "wait": "wait"}
STATUS_COLOR = {"run": "#1f77b4", "up-to-date": "#2ca02c", "skip": "#7f7f7f", "wait": "#ff7f0e"}


def plan_json(project: Project, graph: nx.DiGraph, plan: Plan) -> dict:
    return {
        "levels": plan.levels,
        "steps": [{"id": t, "level": i, "handler": project.steps[t].handler.name,
                   "title_en": project.steps[t].manifest.title_en, "wbs": project.steps[t].manifest.wbs,
                   "depends_on": sorted(graph.predecessors(t)), "action": plan.decisions[t].action,
                   "reason": plan.decisions[t].reason, "hint": plan.decisions[t].hint}
                  for i, level in enumerate(plan.levels) for t in level],
        "counts": {a: plan.count(a) for a in ACTION_WORD},
    }


def plan_text(project: Project, graph: nx.DiGraph, plan: Plan) -> str:
    n = sum(len(level) for level in plan.levels)
    counts = ", ".join(f"{plan.count(a)} {ACTION_WORD[a]}" for a in ACTION_WORD if plan.count(a))
    lines = [f"{n} step{'s' if n != 1 else ''} in {len(plan.levels)} level(s): {counts}"]
    width = max((len(t) for level in plan.levels for t in level), default=0)
    for i, level in enumerate(plan.levels):
        lines.append(f"level {i}" + (" (parallel)" if len(level) > 1 else ""))
        for j, task in enumerate(level):
            branch = "└─" if j == len(level) - 1 else "├─"
            d = plan.decisions[task]
            deps = sorted(graph.predecessors(task))
            after = f"  after {', '.join(deps)}" if deps else ""
            lines.append(f"  {branch} {task:<{width}}  {ACTION_WORD[d.action]:<10} {d.reason}{after}")
    return "\n".join(lines)


def _q(text: str) -> str:
    """Text safe inside a double-quoted DOT or Mermaid label (reasons quote param values)."""
    return text.replace('"', "'")


def _label(project: Project, task: str) -> str:
    return _q(project.steps[task].manifest.title_en)


def plan_dot(project: Project, graph: nx.DiGraph, plan: Plan) -> str:
    lines = ["digraph atlas {", "  rankdir=LR;", "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica];"]
    for task in plan.order():
        d = plan.decisions[task]
        lines.append(f'  "{task}" [label="{task}\\n{_label(project, task)}\\n{ACTION_WORD[d.action]}: '
                     f'{_q(d.reason)}", fillcolor="{STATUS_COLOR[d.action]}", fontcolor=white];')
    for dep, task in sorted(graph.edges):
        lines.append(f'  "{dep}" -> "{task}";')
    return "\n".join(lines + ["}"])


def _mermaid_id(task: str) -> str:
    return task.replace("-", "_")


def plan_mermaid(project: Project, graph: nx.DiGraph, plan: Plan) -> str:
    lines = ["flowchart LR"]
    for task in plan.order():
        d = plan.decisions[task]
        lines.append(f'  {_mermaid_id(task)}["{task}<br/>{_label(project, task)}<br/>'
                     f'{ACTION_WORD[d.action]}: {_q(d.reason)}"]:::{d.action.replace("-", "")}')
    for dep, task in sorted(graph.edges):
        lines.append(f"  {_mermaid_id(dep)} --> {_mermaid_id(task)}")
    for action, color in STATUS_COLOR.items():
        lines.append(f"  classDef {action.replace('-', '')} fill:{color},color:#fff")
    return "\n".join(lines)


def when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def status_rows(project: Project, last: dict[str, StepRun]) -> list[dict]:
    rows = []
    for task in sorted(project.steps, key=lambda t: project.steps[t].manifest.wbs.split(".")):
        step, sr = project.steps[task], last.get(task)
        rows.append({"id": task, "wbs": step.manifest.wbs, "handler": step.handler.name,
                     "title_en": step.manifest.title_en, "status": sr.status if sr else "never run",
                     "reason": sr.reason if sr else "", "message": sr.message if sr else "",
                     "ended": sr.ended if sr else None, "duration": sr.duration if sr else None,
                     "run": sr.run_id if sr else None})
    return rows


def status_text(rows: list[dict]) -> str:
    width = max((len(r["id"]) for r in rows), default=0)
    lines = []
    for r in rows:
        detail = r["message"] or r["reason"] or ""
        lines.append(f"{r['wbs']:<9} {r['id']:<{width}}  {r['status']:<11} {when(r['ended']):<19}  "
                     f"{seconds(r['duration']):>7}  {detail}")
    return "\n".join(lines)


def show_text(detail: dict) -> str:
    m = detail["manifest"]
    lines = [f"{m['id']}  {m['title_en']}", f"  {m['title']}",
             f"  wbs {m['wbs']} · handler {m['handler']} · module {m.get('module') or '-'} · "
             f"license {m.get('license') or '-'}",
             f"  depends on: {', '.join(m['depends_on']) or '-'}",
             f"  params: {json.dumps(detail['params'], sort_keys=True)}"]
    last = detail.get("last")
    if not last:
        return "\n".join(lines + ["  never run"])
    lines += [f"  last: {last['status']} ({last['reason'] or '-'}) at {when(last['ended'])}, "
              f"{seconds(last['duration'])}, run {last['run_id'] or '-'}, attempt {last['attempts']}",
              f"  fingerprint: {last['fingerprint'] or '-'}"]
    if last.get("message"):
        lines.append(f"  message: {last['message']}")
    if last.get("hint"):
        lines.append(f"  hint: {last['hint']}")
    if last.get("note"):
        lines.append(f"  note: {last['note']}")
    lines += [f"  · {f}" for f in last.get("findings", [])]
    if detail["metrics"]:
        lines.append("  metrics:")
        lines += [f"    {_metric_line(x)}" for x in detail["metrics"]]
    if detail["artifacts"]:
        lines.append("  artifacts:")
        lines += [f"    {a['path']}  {a['size']} B  sha256:{a['sha256'][:16]}" for a in detail["artifacts"]]
    if detail["log_tail"]:
        lines.append("  log (last lines):")
        lines += [f"    {line}" for line in detail["log_tail"]]
    return "\n".join(lines)


def _metric_line(metric: dict) -> str:
    name = metric["name"] if metric["step"] is None else f"{metric['name']}[{metric['step']}]"
    if metric["value"] is None:
        return f"{name} = null"
    return f"{name} = {metric['value']:.6g} {metric['unit'] or ''}".rstrip()


def history_text(rows: list[StepRun]) -> str:
    return "\n".join(f"{r.id:>5}  run {r.run_id or '-':>4}  {when(r.started)}  {r.task:<22} {r.status:<11} "
                     f"{seconds(r.duration):>7}  {r.reason or ''}" for r in rows) or "no step runs yet"


def compare_text(data: dict) -> str:
    lines = [f"run {data['a']} -> run {data['b']}"]
    for e in data["steps"]:
        a, b = e["a"] or {}, e["b"] or {}
        lines.append(f"{e['task']}: {a.get('status', '-')} {seconds(a.get('duration'))} -> "
                     f"{b.get('status', '-')} {seconds(b.get('duration'))}")
        for m in e["metrics"]:
            delta = "" if m["delta"] is None else f" ({m['delta']:+.4g})"
            lines.append(f"    {m['name']}: {_num(m['a'])} -> {_num(m['b'])} {m['unit'] or ''}{delta}".rstrip())
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"

