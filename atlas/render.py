"""Text, JSON, DOT and Mermaid renderings of plans, statuses and step details."""
from __future__ import annotations

import datetime as dt
import json

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atlas.graph import Dag
    from atlas.planner import Plan
    from atlas.project import Project

ACTION_WORD = {"run": "run", "up-to-date": "up to date", "skip": "skip", "wait": "wait"}
STATUS_COLOR = {"run": "#1f77b4", "up-to-date": "#2ca02c", "skip": "#7f7f7f", "wait": "#ff7f0e"}


def plan_json(project: Project, graph: Dag, plan: Plan) -> dict:
    return {
        "levels": plan.levels,
        "steps": [{"id": t, "level": i, "handler": project.steps[t].info.handler,
                   "title_en": project.steps[t].info.title_en, "wbs": project.steps[t].info.wbs,
                   "depends_on": sorted(graph.predecessors(t)), "action": plan.decisions[t].action,
                   "reason": plan.decisions[t].reason, "hint": plan.decisions[t].hint}
                  for i, level in enumerate(plan.levels) for t in level],
        "counts": {a: plan.count(a) for a in ACTION_WORD},
    }


def plan_text(project: Project, graph: Dag, plan: Plan) -> str:
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


def _dot(text: str) -> str:
    """Text inside a double-quoted DOT string: backslashes and quotes escaped, no newlines."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


# Mermaid reads entity codes (#quot; #lt; ...) inside quoted labels; '#' itself must go first
_MERMAID_ENTITIES = (("#", "#35;"), ("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"),
                     ("\n", " "))


def mermaid_text(text: str) -> str:
    """Manifest text safe inside a quoted Mermaid label: no HTML, no breaking quote."""
    for raw, code in _MERMAID_ENTITIES:
        text = text.replace(raw, code)
    return text


def plan_dot(project: Project, graph: Dag, plan: Plan) -> str:
    lines = ["digraph atlas {", "  rankdir=LR;", "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica];"]
    for task in plan.order():
        d = plan.decisions[task]
        label = "\\n".join(_dot(t) for t in (task, project.steps[task].info.title_en,
                                               f"{ACTION_WORD[d.action]}: {d.reason}"))
        lines.append(f'  "{_dot(task)}" [label="{label}", fillcolor="{STATUS_COLOR[d.action]}", fontcolor=white];')
    for dep, task in sorted(graph.edges):
        lines.append(f'  "{_dot(dep)}" -> "{_dot(task)}";')
    return "\n".join(lines + ["}"])


def _mermaid_id(task: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in task)


def plan_mermaid(project: Project, graph: Dag, plan: Plan) -> str:
    lines = ["flowchart LR"]
    for task in plan.order():
        d = plan.decisions[task]
        parts = (task, project.steps[task].info.title_en, f"{ACTION_WORD[d.action]}: {d.reason}")
        lines.append(f'  {_mermaid_id(task)}["{"<br/>".join(mermaid_text(p) for p in parts)}"]'
                     f':::{d.action.replace("-", "")}')
    for dep, task in sorted(graph.edges):
        lines.append(f"  {_mermaid_id(dep)} --> {_mermaid_id(task)}")
    for action, color in STATUS_COLOR.items():
        lines.append(f"  classDef {action.replace('-', '')} fill:{color},color:#fff")
    return "\n".join(lines)


# statuses of recorded step runs (the report's graph); STATUS_COLOR above is for plan actions
RESULT_COLOR = {"succeeded": "#2ca02c", "up-to-date": "#5aa35a", "failed": "#d62728", "skipped": "#7f7f7f",
                "waiting": "#ff7f0e", "interrupted": "#9467bd", "never run": "#bbbbbb"}


def status_mermaid(levels: list[list[str]], edges: list, status: dict[str, str], titles: dict[str, str]) -> str:
    """The dependency graph with each task's last status, for Markdown that renders Mermaid."""
    lines = ["flowchart LR"]
    for level in levels:
        for task in level:
            state = status.get(task, "never run")
            label = "<br/>".join(mermaid_text(p) for p in (task, titles.get(task, ""), state))
            lines.append(f'  {_mermaid_id(task)}["{label}"]:::{_mermaid_id(state)}')
    for dep, task in edges:
        lines.append(f"  {_mermaid_id(dep)} --> {_mermaid_id(task)}")
    for state, color in RESULT_COLOR.items():
        lines.append(f"  classDef {_mermaid_id(state)} fill:{color},color:#fff")
    return "\n".join(lines)


def when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    """Columns padded to their widest cell; the last column is free text."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for r in [header, *rows]:
        cells = [r[i].rjust(w) if i in right else r[i].ljust(w) for i, w in enumerate(widths)]
        out.append("  ".join(cells + [r[-1]]).rstrip())
    return out


def _state(row: dict) -> str:
    """"up-to-date" with the run whose result it repeats."""
    if row["status"] == "up-to-date" and row.get("result_run") not in (None, row.get("run")):
        return f"up-to-date (run {row['result_run']})"
    return row["status"]


def status_text(rows: list[dict]) -> str:
    from atlas.queries import job_text

    if any(r.get("job") for r in rows):       # steps that ran as batch jobs: where and how long queued
        body = [(r["wbs"], r["id"], _state(r), when(r["ended"]), seconds(r["duration"]), job_text(r.get("job")),
                 r["message"] or r["reason"] or "") for r in rows]
        return "\n".join(_table(("WBS", "TASK", "STATUS", "RESULT FROM", "TIME", "JOB", "RESULT"), body,
                                right=(4,)))
    body = [(r["wbs"], r["id"], _state(r), when(r["ended"]), seconds(r["duration"]),
             r["message"] or r["reason"] or "") for r in rows]
    return "\n".join(_table(("WBS", "TASK", "STATUS", "RESULT FROM", "TIME", "RESULT"), body, right=(4,)))


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
    if last["status"] == "up-to-date":
        lines.append(f"  last: up to date at {when(last['checked'])} (run {last['run'] or '-'}): {last['reason']}")
        lines.append(f"  result: {last['result_status']} at {when(last['ended'])} in {seconds(last['duration'])}, "
                     f"run {last['result_run'] or '-'}, step run {last['result_step_run']}")
    else:
        lines.append(f"  last: {last['status']} at {when(last['ended'])} in {seconds(last['duration'])}, "
                     f"run {last['run'] or '-'}, attempt {last['attempts']}")
        lines.append(f"  why it ran: {last['reason'] or '-'}")
    lines.append(f"  fingerprint: {last['fingerprint'] or '-'}")
    if last.get("job"):
        from atlas.queries import job_text

        lines.append(f"  job: {job_text(last['job'])}")
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


def history_text(rows: list[dict], unfold: bool = False) -> str:
    """Step runs newest first; consecutive up-to-date checks fold into one line (--all unfolds)."""
    if not rows:
        return "no step runs yet"
    body: list[tuple[str, ...]] = []
    i = 0
    while i < len(rows):
        r = rows[i]
        j = i
        while not unfold and j + 1 < len(rows) and rows[j + 1]["status"] == "up-to-date" == r["status"]:
            j += 1
        if j > i:
            span = rows[i:j + 1]
            runs = sorted({x["run"] for x in span if x["run"] is not None})
            tasks = sorted({x["task"] for x in span})
            body.append((f"{span[-1]['step_run']}-{r['step_run']}", f"{runs[0]}-{runs[-1]}" if runs else "-",
                         when(span[-1]["checked"]), f"{len(tasks)} task(s)", "up-to-date", "",
                         f"{len(span)} checks, nothing ran ({', '.join(tasks[:3])}{', ...' if len(tasks) > 3 else ''})"))
        else:
            detail = r["reason"]
            if r["status"] == "up-to-date" and r["up_to_date_with"]:
                detail = f"result of step run {r['up_to_date_with']} (run {r['result_run'] or '-'})"
            body.append((str(r["step_run"]), str(r["run"] or "-"), when(r["checked"] or r["started"]), r["task"],
                         r["status"], seconds(r["duration"]), detail))
        i = j + 1
    return "\n".join(_table(("STEP RUN", "RUN", "WHEN", "TASK", "STATUS", "TIME", "WHY / RESULT"), body,
                            right=(0, 1, 5)))


def compare_text(data: dict) -> str:
    lines = [f"run {data['a']} -> run {data['b']}"]
    lines += [f"warning: {d}" for d in data["environment"]]
    if data["environment"]:
        lines.append("warning: the runs ran on different machines or software: their timings are not comparable")
    for e in data["steps"]:
        a, b = e["a"] or {}, e["b"] or {}
        lines.append(f"{e['task']}: {_side(a)} -> {_side(b)}")
        if a.get("message") != b.get("message") and b.get("message"):
            lines.append(f"    result: {b['message']}")
        for m in e["metrics"]:
            delta = "" if m["delta"] is None else f" ({m['delta']:+.4g})"
            lines.append(f"    {m['name']}: {_num(m['a'])} -> {_num(m['b'])} {m['unit'] or ''}{delta}".rstrip())
    if data["unchanged"]:
        lines.append(f"{data['unchanged']} step(s) unchanged (--all shows them)")
    elif not data["steps"]:
        lines.append("nothing changed")
    return "\n".join(lines)


def _side(s: dict) -> str:
    if not s:
        return "-"
    if s["status"] == "up-to-date":
        return f"up-to-date ({s['result_status']}, run {s['result_run'] or '-'})"
    return f"{s['status']} {seconds(s.get('duration'))}"


def _num(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"

