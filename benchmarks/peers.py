"""atlas side by side with Snakemake and DVC on the same generated pipelines.

For each size (default 100, 1,000 and 2,000 steps) the same DAG is written once per tool:
step i (0-based) depends on step i-1 and on step i//2 (when those exist and differ), reads
its inputs' output files and writes a few bytes of its own. Every step is trivial, so the
numbers are the tools' own overhead: parsing, planning, starting steps, bookkeeping.

  atlas      tasks/project.yaml + one manifest per step (tasks/AG-BM-S<i:05d>-001.yaml), all of
             handler `noop`: a do-nothing handler in a module written next to the projects and
             registered as any plugin is, by an `atlas.handlers` entry point in a dist-info
             folder on PYTHONPATH, so the real `atlas` command runs (the benchmark leaves
             pyproject.toml alone). Each step runs in its own process, as every atlas step does.
  snakemake  one Snakefile with a generic `rule step` (input from a function of the wildcard)
             and `rule all`; `shell:` runs each step through its own shell (--cores 2).
  dvc        `dvc init --no-scm` and a dvc.yaml with one stage per step (cmd, deps, outs);
             each cmd runs in its own shell, outputs go to DVC's cache as usual.

The step command of the peers is `cat INPUTS > /dev/null && echo i > OUT` (--step-cmd cat, the
default: no interpreter per step) or a small Python script run by the peer's interpreter
(--step-cmd python: an interpreter per step, as atlas has).

Operations, each the wall time of the whole CLI call (output to /dev/null), interleaved
(every repeat runs atlas, snakemake and dvc in turn for each operation), medians of --repeats:

  validate          atlas validate        | (none: n/a)                 | dvc stage list
    (first call, then again; atlas's first call parses everything and writes its cache)
  plan (never run)  atlas plan --json     | snakemake -n --cores 2      | dvc status
  run (all steps)   atlas run LAST        | snakemake --cores 2         | dvc repro
  plan (up to date) atlas plan --json     | snakemake -n --cores 2      | dvc status
  no-op re-run      atlas run LAST        | snakemake --cores 2         | dvc repro
  validate after an edit: the file that declares step n//2 (its manifest; dvc.yaml) gets a
    comment line appended just before the call (last, so no other operation sees the edit)

Each repeat works on fresh copies of the generated folders, so its real run starts with
nothing run. Real runs (and the two up-to-date operations after them) are skipped above
--max-run-steps; a call past --timeout is killed (its process group) and recorded as
"timeout". After each real run the outputs are counted, and the no-op re-run checks that
no output was rewritten.

Bytecode (PYTHONDONTWRITEBYTECODE is often set in development shells): with --bytecode cached
(the default) every tool runs with PYTHONDONTWRITEBYTECODE unset and PYTHONPYCACHEPREFIX set to
one scratch folder, after an untimed warm-up pass of every operation on a 5-step pipeline, so
each tool reads compiled bytecode and nothing is written into the repository or the venvs.
--bytecode none sets PYTHONDONTWRITEBYTECODE=1 for every tool instead (the peers then use the
bytecode pip compiled at install; atlas's source tree has whatever __pycache__ it has).

Peers live in their own virtual environments under --venvs (default /tmp/atlas-peers):
--install creates the missing ones with pip (snakemake==9.27.1, dvc==3.67.1); a peer that
is missing or fails to install is recorded as "not installed: <reason>" and the rest goes on.
Results: benchmarks/results/peers-<host>-<date>.json and a table on stdout.

    python benchmarks/peers.py --install                       # 100, 1000, 2000 steps, 3 repeats
    python benchmarks/peers.py --sizes 100 --repeats 1 --out /tmp/peers-trial
    python benchmarks/peers.py --max-run-steps 1000 --timeout 900
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (100, 1000, 2000)
DEFAULT_VENVS = Path("/tmp/atlas-peers")
PEERS = {"snakemake": "9.27.1", "dvc": "3.67.1"}
TOOLS = ("atlas", "snakemake", "dvc")
# validate runs twice on a fresh copy: the first atlas call parses every manifest and writes
# its project cache (.atlas/cache/project.json), the second and every later call reads it
OPERATIONS = ("validate", "validate_again", "plan_never_run", "run", "plan_up_to_date", "noop_rerun",
              "noop_rerun_no_report", "validate_after_edit")
OP_LABELS = {"validate": "validate (first call)", "validate_again": "validate (again)",
             "plan_never_run": "plan (never run)", "run": "run (all steps)",
             "plan_up_to_date": "plan (up to date)", "noop_rerun": "no-op re-run",
             "noop_rerun_no_report": "no-op re-run, atlas --no-report",
             "validate_after_edit": "validate (one manifest edited)"}
AFTER_RUN = ("plan_up_to_date", "noop_rerun", "noop_rerun_no_report")
WARMUP_SIZE = 5


# -- the DAG ----------------------------------------------------------------------

def deps(i: int) -> list[int]:
    """Step i depends on i-1 and i//2, when they exist (0 <= j < i) and differ."""
    return sorted({j for j in (i - 1, i // 2) if 0 <= j < i}, reverse=True)


def task_id(i: int) -> str:
    return f"AG-BM-S{i:05d}-001"


# -- atlas ------------------------------------------------------------------------

HANDLER_MODULE = "atlas_peers_handler"
HANDLER_SOURCE = '''\
"""The do-nothing step of benchmarks/peers.py: reads its inputs, writes a few bytes."""
from atlas.handler import Context, Handler, Result


class Noop(Handler):
    name = "noop"
    outputs = ("out.txt",)

    def run(self, ctx: Context) -> Result:
        for path in ctx.inputs.values():
            if path is not None:
                path.read_bytes()
        ctx.write_text("out.txt", ctx.task_id + "\\n")
        return Result.succeeded()
'''
# The handler is registered as any plugin is: an `atlas.handlers` entry point in the
# metadata of a distribution on PYTHONPATH, so the benchmark runs the real `atlas` command
# (the step workers inherit PYTHONPATH and import the handler too).
DIST_INFO = "atlas_peers_handler-0.0.dist-info"
DIST_METADATA = "Metadata-Version: 2.1\nName: atlas-peers-handler\nVersion: 0.0\n"
DIST_ENTRY_POINTS = f"[atlas.handlers]\nnoop = {HANDLER_MODULE}:Noop\n"


def write_handler_dist(folder: Path) -> None:
    (folder / f"{HANDLER_MODULE}.py").write_text(HANDLER_SOURCE, encoding="utf-8")
    meta = folder / DIST_INFO
    meta.mkdir(exist_ok=True)
    (meta / "METADATA").write_text(DIST_METADATA, encoding="utf-8")
    (meta / "entry_points.txt").write_text(DIST_ENTRY_POINTS, encoding="utf-8")


def write_atlas(root: Path, n: int) -> None:
    tasks = root / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "project.yaml").write_text("name: peers\n", encoding="utf-8")
    for i in range(n):
        lines = [f"id: {task_id(i)}", f'title: "Kıyaslama adımı {i}"', f'title_en: "Benchmark step {i}"',
                 'wbs: "1"', "handler: noop"]
        ds = deps(i)
        if ds:
            lines.append(f"depends_on: [{', '.join(task_id(j) for j in ds)}]")
            lines.append("inputs:")
            lines += [f'  p{k}: "{task_id(j)}:out.txt"' for k, j in enumerate(ds)]
        (tasks / f"{task_id(i)}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the peers' step command ------------------------------------------------------

STEP_SCRIPT = '''\
"""step.py OUT [INPUT...]: read the inputs, write a few bytes (benchmarks/peers.py)."""
import sys

for path in sys.argv[2:]:
    with open(path, "rb") as f:
        f.read()
with open(sys.argv[1], "w") as f:
    f.write(sys.argv[1] + "\\n")
'''


def step_cmd(kind: str, python: str, i: int, inputs: list[str], output: str, script: str) -> str:
    if kind == "cat":
        # /dev/null keeps cat off stdin when the step has no inputs
        return f"cat {' '.join(inputs)} /dev/null > /dev/null && echo {i} > {output}"
    return " ".join(shlex.quote(a) for a in (python, script, output, *inputs))


def write_snakemake(root: Path, n: int, kind: str, python: str) -> None:
    root.mkdir(parents=True)
    script = str(root / "step.py")
    (root / "step.py").write_text(STEP_SCRIPT, encoding="utf-8")
    if kind == "cat":
        shell = 'cat {input} /dev/null > /dev/null && echo {wildcards.i} > {output}'
    else:
        shell = f"{shlex.quote(python)} {shlex.quote(script)} {{output}} {{input}}"
    (root / "Snakefile").write_text(f'''\
# Generated by benchmarks/peers.py: {n} steps; step i reads out/(i-1).txt and out/(i//2).txt.
N = {n}

wildcard_constraints:
    i=r"\\d+"


def deps(i):
    return [f"out/{{j}}.txt" for j in sorted({{j for j in (i - 1, i // 2) if 0 <= j < i}}, reverse=True)]


rule all:
    input:
        expand("out/{{i}}.txt", i=range(N)),


rule step:
    input:
        lambda wc: deps(int(wc.i)),
    output:
        "out/{{i}}.txt",
    shell:
        {json.dumps(shell)}
''', encoding="utf-8")


def write_dvc(root: Path, n: int, kind: str, python: str, dvc: Path, env: dict, timeout: float) -> None:
    root.mkdir(parents=True)
    (root / "out").mkdir()
    script = str(root / "step.py")
    (root / "step.py").write_text(STEP_SCRIPT, encoding="utf-8")
    for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"],
                 ["config", "core.check_update", "false"]):
        subprocess.run([str(dvc), *args], cwd=root, env=env, check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = [f"# Generated by benchmarks/peers.py: {n} steps", "stages:"]
    for i in range(n):
        inputs = [f"out/{j}.txt" for j in deps(i)]
        lines += [f"  s{i:05d}:", f"    cmd: {json.dumps(step_cmd(kind, python, i, inputs, f'out/{i}.txt', script))}"]
        if inputs:
            lines.append(f"    deps: [{', '.join(inputs)}]")
        lines.append(f"    outs: [out/{i}.txt]")
    (root / "dvc.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- tools --------------------------------------------------------------------------

def run_quiet(args: list[str], env: dict | None = None, timeout: float = 120, cwd: Path | None = None) -> str:
    """stdout+stderr of a short command, or an error text."""
    try:
        done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error: {type(exc).__name__}: {exc}"
    text = (done.stdout + done.stderr).strip()
    return text if done.returncode == 0 else f"error (exit {done.returncode}): {text[-500:]}"


def install_peer(name: str, venv: Path, python: str, install: bool, log: Any) -> dict:
    """The peer's venv, created with --install when missing or of another version."""
    want = PEERS[name]
    exe = venv / "bin" / name
    info: dict[str, Any] = {"venv": str(venv), "wanted": want}

    def installed_version() -> str | None:
        if not exe.exists():
            return None
        out = run_quiet([str(exe), "--version"])
        return None if out.startswith("error") else out.splitlines()[-1].strip()

    have = installed_version()
    if have != want:
        if not install:
            info["status"] = (f"not installed: {exe} is missing" if have is None else
                              f"not installed: {exe} is version {have}, not {want}") + " (pass --install)"
            return info
        print(f"installing {name}=={want} into {venv}", file=log)
        start = time.perf_counter()
        steps = ([[python, "-m", "venv", str(venv)]] if not (venv / "bin" / "python").exists() else []) + [
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{name}=={want}"]]
        for args in steps:
            try:
                done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as exc:
                info["status"] = f"not installed: {' '.join(args[:3])}: {type(exc).__name__}: {exc}"
                return info
            if done.returncode != 0:
                tail = [ln for ln in (done.stdout + done.stderr).splitlines() if not ln.startswith("WARNING")]
                info["status"] = f"not installed: {' '.join(args[1:])} exited {done.returncode}: " + \
                                 " | ".join(tail[-5:])
                return info
        info["install_s"] = round(time.perf_counter() - start, 1)
        have = installed_version()
        if have != want:
            info["status"] = f"not installed: after pip install, `{name} --version` says {have!r}"
            return info
    info["status"] = "ok"
    info["exe"] = str(exe)
    info["version"] = have
    info["python"] = run_quiet([str(venv / "bin" / "python"), "--version"])
    info["python_executable"] = str(venv / "bin" / "python")
    return info


def tool_env(base: dict, bytecode: str, pycache: Path, venv_bin: Path | None) -> dict:
    env = dict(base)
    env.pop("PYTHONPATH", None)
    if bytecode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    if venv_bin is not None:
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv_bin.parent)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


class Tool:
    def __init__(self, name: str, env: dict, commands: dict[str, list[str] | None]) -> None:
        self.name, self.env, self.commands = name, env, commands

    def outputs(self, root: Path) -> list[Path]:
        if self.name == "atlas":
            return [p for p in (root / ".atlas").rglob("out.txt") if ".tmp" not in p.parts]
        return list((root / "out").glob("*.txt"))


def tool_commands(name: str, exe: list[str], n: int,
                  atlas_run_flags: tuple[str, ...] = ()) -> dict[str, list[str] | None]:
    if name == "atlas":
        plan, run = [*exe, "plan", "--json"], [*exe, "run", *atlas_run_flags, task_id(n - 1)]
        return {"validate": [*exe, "validate"], "validate_again": [*exe, "validate"],
                "validate_after_edit": [*exe, "validate"], "plan_never_run": plan,
                "run": run,
                "plan_up_to_date": plan, "noop_rerun": run,
                # the same re-run without the HTML report atlas writes after every run (the
                # peers write none): what the report costs at each size
                "noop_rerun_no_report": [*exe, "run", "--no-report", *atlas_run_flags, task_id(n - 1)]}
    if name == "snakemake":
        plan, run = [*exe, "-n", "--cores", "2"], [*exe, "--cores", "2"]
        return {"validate": None, "validate_again": None, "validate_after_edit": None, "plan_never_run": plan,
                "run": run,
                "plan_up_to_date": plan, "noop_rerun": run, "noop_rerun_no_report": None}
    plan, run = [*exe, "status"], [*exe, "repro"]
    return {"validate": [*exe, "stage", "list"], "validate_again": [*exe, "stage", "list"],
            "validate_after_edit": [*exe, "stage", "list"], "plan_never_run": plan,
            "run": run,
            "plan_up_to_date": plan, "noop_rerun": run, "noop_rerun_no_report": None}


# -- measuring ------------------------------------------------------------------------

def timed_call(args: list[str], cwd: Path, env: dict, timeout: float) -> dict:
    """Wall time of one CLI call; the whole process group is killed past the timeout.
    The wait blocks in waitpid: Popen.wait(timeout=...) polls with sleeps of up to 50 ms,
    which added 0-50 ms to every call (the first version of this benchmark did that)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            code = proc.wait()
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - start
        if expired.is_set():
            return {"s": "timeout", "after_s": round(elapsed, 3)}
        if code != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-1500:]
            return {"s": "error", "exit_code": code, "after_s": round(elapsed, 3), "stderr_tail": tail}
    return {"s": round(elapsed, 4)}


def median(samples: list[Any]) -> Any:
    """Median with timeouts and errors ranked as infinitely slow: a label when it lands on one."""
    if not samples:
        return None
    ranked = sorted(samples, key=lambda s: s if isinstance(s, (int, float)) else math.inf)
    mid = len(ranked) // 2
    middle = ranked[mid - 1:mid + 1] if len(ranked) % 2 == 0 else [ranked[mid]]
    bad = [s for s in middle if not isinstance(s, (int, float))]
    return bad[-1] if bad else round(statistics.mean(middle), 4)


def mtimes(paths: list[Path]) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in paths}


def edit_one_step(tool: str, root: Path, n: int) -> None:
    """Append a comment line to the file that declares step n//2, as an editor's save would."""
    path = root / "tasks" / f"{task_id(n // 2)}.yaml" if tool == "atlas" else root / "dvc.yaml"
    with open(path, "a", encoding="utf-8") as f:
        f.write("# edited by benchmarks/peers.py\n")


def measure_repeat(tools: dict[str, Tool], templates: dict[str, Path], work: Path, n: int, run_real: dict[str, bool],
                   timeout: float, record: dict, log: Any, ops: tuple[str, ...] = OPERATIONS) -> None:
    """One repeat: fresh copies, then every operation with the tools in turn."""
    roots = {}
    for name, template in templates.items():
        roots[name] = work / name
        shutil.copytree(template, roots[name], symlinks=True)
    failed_run: dict[str, str] = {}
    before: dict[str, dict[str, int]] = {}
    for op in ops:
        for name, tool in tools.items():
            entry = record[name][op]
            args = tool.commands[op]
            if args is None:
                continue
            if op in ("run", *AFTER_RUN) and not run_real[name]:
                continue
            if op in AFTER_RUN and name in failed_run:
                entry["samples"].append(f"skipped: the real run {failed_run[name]}")
                continue
            if op.startswith("noop_rerun"):
                before[name] = mtimes(tool.outputs(roots[name]))
            if op == "validate_after_edit":
                edit_one_step(name, roots[name], n)
            result = timed_call(args, roots[name], tool.env, timeout)
            entry["samples"].append(result["s"])
            if not isinstance(result["s"], float):
                entry.setdefault("failures", []).append(result)
                if op == "run":
                    failed_run[name] = result["s"] if result["s"] == "timeout" else "failed"
            if op == "run":
                entry.setdefault("outputs_written", []).append(len(tool.outputs(roots[name])))
            if op.startswith("noop_rerun"):
                after = mtimes(tool.outputs(roots[name]))
                entry.setdefault("outputs_rewritten", []).append(
                    sum(1 for p, t in after.items() if before[name].get(p) != t))
            shown = result["s"] if isinstance(result["s"], str) else f"{result['s']:.3f} s"
            print(f"  {n:>5} {op:<16} {name:<10} {shown}", file=log, flush=True)
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)


# -- machine ----------------------------------------------------------------------------

def source_digest() -> str:
    """sha256 over atlas/ sources: tells whether the code changed during a run."""
    return machine.source_digest(("atlas",))


def machine_info() -> dict:
    return machine.machine() | {"benchmark_python": platform.python_version()}


git_revision = machine.git_revision


# -- output ------------------------------------------------------------------------------

def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value if len(value) <= 12 else value[:12]
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def ratio(results: dict, n: str, op: str) -> str:
    per_tool = results["sizes"][n]
    peer_op = "noop_rerun" if op == "noop_rerun_no_report" else op      # the peers write no report
    medians = {t: per_tool[t][op if t == "atlas" else peer_op].get("median_s")
               if isinstance(per_tool.get(t), dict) else None for t in TOOLS}
    peers = [v for t, v in medians.items() if t != "atlas" and isinstance(v, (int, float))]
    mine = medians["atlas"]
    if not peers or not isinstance(mine, (int, float)) or min(peers) <= 0:
        return "-"
    return f"{mine / min(peers):.2f}x"


def table(results: dict) -> str:
    head = ("operation", "steps", "atlas", "snakemake", "dvc", "atlas/best peer")
    rows = [head]
    for op in OPERATIONS:
        for n, per_tool in results["sizes"].items():
            cells = [OP_LABELS[op], n]
            for tool in TOOLS:
                t = per_tool.get(tool)
                if t is None:                          # left out with --tools
                    cells.append("-")
                elif isinstance(t, str):               # not installed
                    cells.append("n/i")
                elif t[op].get("na"):
                    cells.append("n/a")
                else:
                    cells.append(fmt(t[op].get("median_s")) if t[op]["samples"] else t[op].get("skipped", "-"))
            cells.append(ratio(results, n, op))
            rows.append(tuple(cells))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("medians of wall time per CLI call; atlas/best peer > 1 means atlas is slower than the faster "
                 "peer; n/a: the tool has no such command; n/i: not installed; skipped: above --max-run-steps")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated step counts (default 100,1000,2000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per size (default 3); medians are reported")
    parser.add_argument("--venvs", type=Path, default=DEFAULT_VENVS,
                        help="folder of the peers' virtual environments (default /tmp/atlas-peers)")
    parser.add_argument("--install", action="store_true",
                        help="create missing peer venvs with pip (snakemake==9.27.1, dvc==3.67.1)")
    parser.add_argument("--python", default=shutil.which("python3") or sys.executable,
                        help="interpreter that creates the peers' venvs (default: python3 on PATH)")
    parser.add_argument("--atlas-python", default=None,
                        help="interpreter with atlas installed (default: the repository's .venv)")
    parser.add_argument("--max-run-steps", type=int, default=2000,
                        help="skip real runs (and the up-to-date operations) above this many steps (default 2000)")
    parser.add_argument("--run-steps-cap", action="append", default=[], metavar="TOOL=N",
                        help="skip TOOL's real runs (and its up-to-date operations) above N steps, e.g. dvc=100 "
                             "(its `dvc repro` of 1,000 steps takes over 5 minutes here); repeatable")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds per CLI call before it is killed and recorded as timeout (default 1800)")
    parser.add_argument("--bytecode", choices=("cached", "none"), default="cached",
                        help="cached: bytecode in one scratch PYTHONPYCACHEPREFIX after a warm-up (default); "
                             "none: PYTHONDONTWRITEBYTECODE=1 for every tool")
    parser.add_argument("--step-cmd", choices=("cat", "python"), default="cat",
                        help="the peers' step command: cat in a shell (default) or a Python script per step")
    parser.add_argument("--atlas-no-report", action="store_true",
                        help="pass --no-report to atlas run (default: atlas run as a user types it, which "
                             "writes .atlas/report.html at the end)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of atlas,snakemake,dvc")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for the JSON result (default benchmarks/results)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="working folder (default: a new temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    args.sizes = machine.parse_sizes(parser, args.sizes)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    caps = {}
    for item in args.run_steps_cap:
        name, _, value = item.partition("=")
        if name not in TOOLS or not value.isdigit():
            parser.error(f"--run-steps-cap takes TOOL=N with TOOL one of {','.join(TOOLS)}, not {item!r}")
        caps[name] = int(value)
    args.run_steps_cap = caps
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tools or set(args.tools) - set(TOOLS):
        parser.error(f"--tools takes a subset of {','.join(TOOLS)}")
    if args.atlas_python is None:
        venv_python = REPO / ".venv" / "bin" / "python"
        args.atlas_python = str(venv_python if venv_python.exists() else Path(sys.executable))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = sys.stderr
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="atlas-peers-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    pycache = scratch / "pycache"
    base = dict(os.environ)
    results: dict[str, Any] = {
        "benchmark": "peers",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv],
        "machine": machine_info(),
        "git": git_revision(),
        "source_digest": source_digest(),
        "settings": {"sizes": args.sizes, "repeats": args.repeats, "max_run_steps": args.max_run_steps,
                     "run_steps_cap": args.run_steps_cap,
                     "timeout_s": args.timeout, "tools": args.tools, "step_cmd": args.step_cmd,
                     "atlas_run_writes_report": not args.atlas_no_report},
        "bytecode": {
            "choice": args.bytecode,
            "shell_had_PYTHONDONTWRITEBYTECODE": base.get("PYTHONDONTWRITEBYTECODE"),
            "what": ("PYTHONDONTWRITEBYTECODE unset and PYTHONPYCACHEPREFIX=<scratch>/pycache for every tool "
                     "(atlas and its step workers, snakemake, dvc); one untimed warm-up pass of every "
                     f"operation on a {WARMUP_SIZE}-step pipeline per tool first, so each reads compiled bytecode"
                     if args.bytecode == "cached" else
                     "PYTHONDONTWRITEBYTECODE=1 for every tool: the peers use the bytecode pip compiled at "
                     "install, atlas whatever __pycache__ its source tree already has"),
            "atlas_source_has_pycache": (REPO / "atlas" / "__pycache__").is_dir(),
        },
        "loadavg_start": os.getloadavg(),
        "tools": {},
        "sizes": {},
    }
    print(f"machine: {results['machine']['cpu_model']}, {results['machine']['cpus_usable']} cpu(s), "
          f"{results['machine']['memory_gib']} GiB; bytecode: {args.bytecode}; scratch: {scratch}", file=log)

    # the tools
    tools: dict[str, Tool] = {}
    unavailable: dict[str, str] = {}
    if "atlas" in args.tools:
        bench_dir = scratch / "atlas-cli"
        bench_dir.mkdir(exist_ok=True)
        write_handler_dist(bench_dir)
        env = tool_env(base, args.bytecode, pycache, Path(args.atlas_python).parent)
        env["PYTHONPATH"] = str(bench_dir)
        exe = [str(Path(args.atlas_python).parent / "atlas")]
        version = run_quiet([*exe, "--version"], env=env)
        info = {"exe": exe, "version": version,
                "installed_cli_version": run_quiet([str(Path(args.atlas_python).parent / "atlas"), "--version"]),
                "python": run_quiet([args.atlas_python, "--version"]), "python_executable": args.atlas_python,
                "registry": f"the `noop` handler as an atlas.handlers entry point of {DIST_INFO} on "
                            "PYTHONPATH; the installed `atlas` command; steps run as forked step processes",
                "project_cache": "on: .atlas/cache/project.json is written by the first command after each "
                                 "copy of the pipeline (validate, timed as 'validate (first call)'), and read "
                                 "by every later one"}
        if version.startswith("error"):
            info["status"] = f"not installed: {version}"
            unavailable["atlas"] = info["status"]
        else:
            info["status"] = "ok"
            tools["atlas"] = Tool("atlas", env, {})
        results["tools"]["atlas"] = info
    for name in (t for t in ("snakemake", "dvc") if t in args.tools):
        info = install_peer(name, args.venvs / name, args.python, args.install, log)
        if name == "snakemake":
            # executor plugins change what every call costs: the Slurm plugin runs `scontrol
            # show config` at start-up (about 10 s where no controller answers)
            info["executor_plugins"] = sorted(p.name.split("-")[0] for p in (args.venvs / name).glob(
                "lib/python*/site-packages/snakemake_executor_plugin_*.dist-info"))
            info["step"] = ("generic `rule step` (input: a function of wildcard i) + `rule all`; "
                            + ("shell: cat {input} /dev/null > /dev/null && echo {wildcards.i} > {output}"
                               if args.step_cmd == "cat" else "shell: <venv python> step.py {output} {input}")
                            + "; --cores 2")
        else:
            info["step"] = ("dvc init --no-scm; dvc.yaml with one stage per step (cmd, deps, outs; outs cached "
                            "in .dvc/cache as by default); cmd: "
                            + ("cat INPUTS /dev/null > /dev/null && echo i > out/i.txt" if args.step_cmd == "cat"
                               else "<venv python> step.py out/i.txt INPUTS"))
        results["tools"][name] = info
        if info["status"] == "ok":
            tools[name] = Tool(name, tool_env(base, args.bytecode, pycache, args.venvs / name / "bin"), {})
        else:
            unavailable[name] = info["status"]
        print(f"{name}: {info.get('version') or info['status']}", file=log)
    for name, why in unavailable.items():
        print(f"{name}: {why}", file=log)
    if not tools:
        print("error: no tool to measure", file=log)
        return 2

    def exe_of(name: str) -> list[str]:
        return results["tools"][name]["exe"] if name == "atlas" else [results["tools"][name]["exe"]]

    def python_of(name: str) -> str:
        return results["tools"][name]["python_executable"]

    def generate(n: int, where: Path) -> dict[str, Path]:
        templates = {}
        for name, tool in tools.items():
            root = where / f"{name}-{n}"
            shutil.rmtree(root, ignore_errors=True)
            if name == "atlas":
                write_atlas(root, n)
            elif name == "snakemake":
                write_snakemake(root, n, args.step_cmd, python_of(name))
            else:
                write_dvc(root, n, args.step_cmd, python_of(name), Path(exe_of(name)[0]), tool.env, args.timeout)
            templates[name] = root
        return templates

    run_flags = ("--no-report",) if args.atlas_no_report else ()

    # warm-up: every operation once per tool on a tiny pipeline, untimed (bytecode, file cache)
    print(f"warm-up: every operation once on a {WARMUP_SIZE}-step pipeline", file=log)
    warm = scratch / "warmup"
    for name, tool in tools.items():
        tool.commands = tool_commands(name, exe_of(name), WARMUP_SIZE, run_flags)
    templates = generate(WARMUP_SIZE, warm / "templates")
    warm_record = {name: {op: {"samples": []} for op in OPERATIONS} for name in tools}
    measure_repeat(tools, templates, warm / "work", WARMUP_SIZE, dict.fromkeys(tools, True), args.timeout,
                   warm_record, log)
    results["warmup"] = {name: {op: e["samples"] for op, e in ops.items() if e["samples"]}
                         for name, ops in warm_record.items()}
    shutil.rmtree(warm, ignore_errors=True)

    for n in args.sizes:
        caps = {name: args.run_steps_cap.get(name, args.max_run_steps) for name in tools}
        run_real = {name: n <= cap for name, cap in caps.items()}
        skipped = [name for name, real in run_real.items() if not real]
        print(f"{n} steps: generating" + (f" (real runs skipped for {', '.join(skipped)})" if skipped else ""),
              file=log)
        for name, tool in tools.items():
            tool.commands = tool_commands(name, exe_of(name), n, run_flags)
        t0 = time.perf_counter()
        templates = generate(n, scratch / "templates")
        generate_s = round(time.perf_counter() - t0, 2)
        record: dict[str, Any] = {}
        for name, tool in tools.items():
            record[name] = {}
            for op in OPERATIONS:
                args_ = tool.commands[op]
                entry: dict[str, Any] = {"command": args_, "samples": []}
                if args_ is None:
                    entry.update(na=True, note=f"{name} has no separate {op} command")
                elif op in ("run", *AFTER_RUN) and not run_real[name]:
                    entry["skipped"] = f"skipped: {n} steps is above the real-run cap {caps[name]} for {name}"
                record[name][op] = entry
        for repeat in range(args.repeats):
            print(f"{n} steps: repeat {repeat + 1}/{args.repeats}", file=log)
            measure_repeat(tools, templates, scratch / "work", n, run_real, args.timeout, record, log)
        for name in tools:
            for entry in record[name].values():
                if entry["samples"]:
                    entry["median_s"] = median(entry["samples"])
        size_entry: dict[str, Any] = {"steps": n, "edges": sum(len(deps(i)) for i in range(n)),
                                      "generate_s": generate_s, **record}
        for name, why in unavailable.items():
            size_entry[name] = why
        results["sizes"][str(n)] = size_entry
        shutil.rmtree(scratch / "templates", ignore_errors=True)

    results["loadavg_end"] = os.getloadavg()
    results["source_changed_during_run"] = source_digest() != results["source_digest"]
    if results["source_changed_during_run"]:
        print("warning: atlas/ changed while the benchmark ran; the numbers mix two versions of the code", file=log)
    args.out.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "cpu"
    path = args.out / f"peers-{host}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    for name, info in results["tools"].items():
        print(f"{name}: {info.get('version') or ''} ({info['status']}); python: {info.get('python', '-')}")
    print(f"bytecode: {args.bytecode}: {results['bytecode']['what']}")
    print(f"peers' step command: {args.step_cmd}; atlas run "
          + ("with --no-report" if args.atlas_no_report else "as typed (writes .atlas/report.html)"))
    print()
    print(table(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
