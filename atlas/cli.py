"""The command line. Each command parses its options and calls one engine function;
AtlasError becomes `error:`/`hint:` lines on stderr and its exit code, in one place.
"""
from __future__ import annotations

import gc
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from atlas import __version__
from atlas.errors import EXIT_INTERRUPTED, EXIT_OK, AtlasError, InvalidManifests, storage_error


class AtlasGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidManifests as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            _fail(exc)
        except AtlasError as exc:
            _fail(exc)
        except Exception as exc:         # an OSError or SQLite's (sqlite3 loads only when needed)
            found = storage_error(exc)
            if found is None:
                raise
            _fail(found)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def _fail(exc: AtlasError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


def _json_text(data: Any) -> str:
    # indented for a person at a terminal; one line for a pipe (json's indenting encoder is
    # pure Python: ten times slower on a plan of 2,000 steps)
    indent = 2 if sys.stdout.isatty() else None
    return json.dumps(data, indent=indent, sort_keys=False, default=str)


def _emit_json(data: Any) -> None:
    click.echo(_json_text(data))


# What the `atlas` process keeps to its end is left for the OS to take back at exit: held
# here, in a list that refers to itself and is frozen with it, the project is never freed
# object by object (2,000 loaded steps took 10-20 ms to free, once the command returned).
# Nothing in it holds a file or needs a finalizer: manifests, params, step info, the graph.
_KEPT_TO_EXIT: list = []
_KEPT_TO_EXIT.append(_KEPT_TO_EXIT)


def _project(ctx: click.Context, order: bool = True):
    from atlas.project import find_root
    from atlas.project_cache import open_project

    obj = ctx.find_root().obj or {}
    root = find_root(Path(obj.get("dir") or "."))
    project = open_project(root, obj.get("registry"), order=order)
    if obj.get("freeze_gc"):
        # the command keeps its project to the end: out of the cyclic collector's sight, it
        # is not rescanned on every collection (a tenth of `atlas plan` at 2,000 steps);
        # what is made later is collected as usual
        _KEPT_TO_EXIT.append(project)
        gc.freeze()
        gc.enable()
    return project


def _probe():
    from atlas.probe import probe

    return probe()


@click.group(cls=AtlasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atlas")
@click.option("-C", "--dir", "dir_", type=click.Path(file_okay=False), default=None,
              help="Project folder (default: the nearest folder at or above here holding tasks/).")
@click.pass_context
def main(ctx: click.Context, dir_: str | None) -> None:
    """atlas runs a GPU machine-learning workplan declared as YAML manifests in tasks/.

    \b
    Typical session:
      atlas validate                 check every manifest (exit 3 on problems)
      atlas plan AG-DS-LIBTEST-001   what would run, and why
      atlas run AG-DS-LIBTEST-001    run it and everything it depends on
      atlas status                   last result of every step
      atlas show AG-DS-LIBTEST-001   params, metrics, artifacts and log of one step

    Exit codes: 0 ok or up to date, 1 a step failed, 2 usage, 3 invalid manifests,
    4 steps skipped under --strict, 5 another atlas run holds the project, 6 the
    project's state cannot be written (permissions, read-only disk, full disk),
    130 interrupted.
    """
    ctx.ensure_object(dict)
    if dir_:
        ctx.obj["dir"] = dir_


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def validate(ctx: click.Context, as_json: bool) -> None:
    """Check every manifest in tasks/ and report every problem at once.

    Problems print as tasks/FILE.yaml:LINE:COL: message [field.path]; exit code 3 when any.
    """
    try:
        project = _project(ctx, order=False)         # no order needed: networkx is not imported
    except InvalidManifests as exc:
        if not as_json:
            raise
        _emit_json({"valid": False, "problems": [p.as_dict() for p in exc.problems]})
        sys.exit(exc.exit_code)
    n = len(project.steps)
    result = {"valid": True, "steps": n, "root": str(project.root)}
    _emit_json(result) if as_json else click.echo(f"{n} manifest{'' if n == 1 else 's'} valid in {project.root}/tasks")


@main.command()
def schema() -> None:
    """Print the JSON Schema of a task manifest (for editors and pre-commit hooks)."""
    from atlas.manifest import Manifest

    data = Manifest.model_json_schema(by_alias=True)
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "atlas task manifest"
    _emit_json(data)


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.option("--dot", is_flag=True, help="Graphviz DOT (pipe into `dot -Tsvg`).")
@click.option("--mermaid", is_flag=True, help="Mermaid flowchart (for Markdown).")
@click.option("-f", "--force", is_flag=True, help="Plan the targets as forced.")
@click.option("--force-all", is_flag=True, help="Plan every step as forced.")
@click.pass_context
def plan(ctx: click.Context, targets: tuple[str, ...], as_json: bool, dot: bool, mermaid: bool, force: bool,
         force_all: bool) -> None:
    """Show what `atlas run TARGET...` would do: levels that may run in parallel, and for
    each step run / up to date / skip / wait with the reason. No TARGET: every step.
    --json, --dot and --mermaid choose one output format (one at a time)."""
    from atlas import render
    from atlas.errors import UsageError
    from atlas.facts import check_targets, make_plan, open_store

    chosen_formats = [name for name, on in (("--json", as_json), ("--dot", dot), ("--mermaid", mermaid)) if on]
    if len(chosen_formats) > 1:
        raise UsageError(f"{' and '.join(chosen_formats)} are different output formats: choose one",
                         "run `atlas plan` once per format, e.g. `atlas plan --dot > plan.dot`")
    project = _project(ctx)
    chosen = check_targets(project, targets)
    store = open_store(project, readonly=True)
    graph, p = make_plan(project, store, _probe(), chosen, chosen if force else (), force_all)
    store.close()
    renderers = {"--json": lambda: _json_text(render.plan_json(project, graph, p)),
                 "--dot": lambda: render.plan_dot(project, graph, p),
                 "--mermaid": lambda: render.plan_mermaid(project, graph, p)}
    click.echo(renderers.get(chosen_formats[0] if chosen_formats else "", lambda: render.plan_text(project, graph, p))())


@main.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Only show the plan (same as `atlas plan`).")
@click.option("-f", "--force", is_flag=True, help="Re-run the targets even when up to date.")
@click.option("--force-all", is_flag=True, help="Re-run the targets and all their upstream steps.")
@click.option("-k", "--keep-going", is_flag=True, help="After a failure, go on with independent steps.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Independent steps run in parallel (default 1); each GPU step gets its own "
                   "CUDA_VISIBLE_DEVICES. Under --executor slurm: how many jobs are queued at once (default 64).")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default=None,
              help="Where steps run: local (this machine) or slurm (one batch job per step, on a cluster "
                   "that shares the project folder). Default: `executor.kind` in tasks/project.yaml, else local.")
@click.option("--strict", is_flag=True, help="Exit 4 when any step was skipped or is waiting.")
@click.option("--wait", "wait_lock", is_flag=True, help="Queue behind another atlas run instead of stopping.")
@click.option("-v", "--verbose", is_flag=True, help="Echo every step's log lines to stderr.")
@click.option("--no-report", "report", flag_value=False, default=True,
              help="Do not write .atlas/report.html at the end (`atlas report` writes one any time).")
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary on stdout.")
@click.pass_context
def run(ctx: click.Context, targets: tuple[str, ...], dry_run: bool, **opts: Any) -> None:
    """Run the TARGET tasks and everything upstream of them, skipping what is up to date.

    At the end it writes the HTML report of the run to .atlas/report.html (the last line
    names it); a run in which every step was up to date keeps the last report when no
    result changed since. `atlas status`, `show` and `history` read the same results."""
    if dry_run:
        ctx.invoke(plan, targets=targets, as_json=opts["as_json"], dot=False, mermaid=False, force=opts["force"],
                   force_all=opts["force_all"])
        return
    from atlas.console import RunDisplay
    from atlas.workflow import RunOptions, run as run_workflow

    as_json, verbose = opts.pop("as_json"), opts.pop("verbose")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops cleanly, like Ctrl-C
    project = _project(ctx)
    if opts["jobs"] is None:
        opts["jobs"] = 64 if (opts["executor"] or project.settings["executor"]["kind"]) == "slurm" else 1
    with RunDisplay(out=sys.stderr if as_json else sys.stdout, verbose=verbose) as display:
        report = run_workflow(project, _probe(), RunOptions(list(targets), argv=sys.argv, **opts), display)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
    for problem in report.report_problems:
        click.echo(f"warning: {problem}", err=True)
    kept = " (unchanged: every step was up to date)" if report.report_kept else ""
    written = f" — report: {report.report_path}{kept}" if report.report_path else ""
    _emit_json(report.as_dict()) if as_json else click.echo(f"run {report.run_id}: {counts}{written}")
    sys.exit(report.exit_code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The last status of every step, in work-breakdown order."""
    from atlas.queries import status as status_rows
    from atlas.render import status_text

    rows = status_rows(_project(ctx))
    _emit_json(rows) if as_json else click.echo(status_text(rows))


@main.command()
@click.argument("task")
@click.option("--log", "log_lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many log lines to show.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.pass_context
def show(ctx: click.Context, task: str, log_lines: int, as_json: bool) -> None:
    """One step: manifest, params, fingerprint, why it last ran, metrics, artifacts, log tail."""
    from atlas.queries import show as show_step
    from atlas.render import show_text

    detail = show_step(_project(ctx), task, log_lines)
    _emit_json(detail) if as_json else click.echo(show_text(detail))


@main.command()
@click.argument("task", required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=30, show_default=True,
              help="How many step runs to read.")
@click.option("--all", "unfold", is_flag=True, help="List every up-to-date check instead of folding them.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.pass_context
def history(ctx: click.Context, task: str | None, limit: int, unfold: bool, as_json: bool) -> None:
    """Past step runs, newest first (of one TASK, or of all). An up-to-date check shows
    the result it repeats; runs of such checks fold into one line."""
    from atlas.queries import history as step_history
    from atlas.render import history_text

    rows = step_history(_project(ctx), task, limit)
    _emit_json(rows) if as_json else click.echo(history_text(rows, unfold))


@main.command()
@click.argument("run_a", type=int)
@click.argument("run_b", type=int)
@click.option("--all", "everything", is_flag=True, help="Show unchanged steps and metrics too.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.pass_context
def compare(ctx: click.Context, run_a: int, run_b: int, everything: bool, as_json: bool) -> None:
    """What changed from run RUN_A to run RUN_B: each step's status and result, and every
    metric whose value moved (run numbers as `atlas run` and `atlas history` print them).
    Warns when the runs ran on different GPUs, drivers or library versions."""
    from atlas.queries import compare as compare_runs
    from atlas.render import compare_text

    data = compare_runs(_project(ctx), run_a, run_b, everything)
    _emit_json(data) if as_json else click.echo(compare_text(data))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def env(as_json: bool) -> None:
    """What this machine offers: GPUs, driver, CUDA, cuDNN, TensorRT, DALI, CuPy, ... .

    Works outside a project; imports no framework, so it is fast without a GPU."""
    from atlas.queries import env_report, env_text

    report = env_report(_probe())
    _emit_json(report) if as_json else click.echo(env_text(report))


@main.command()
@click.option("--run", "run_id", type=click.IntRange(min=1), help="Report as of this run (default: the latest).")
@click.option("--format", "fmt", type=click.Choice(["html", "md", "json"]), default="html", show_default=True)
@click.option("--lang", type=click.Choice(["en", "tr"]), default="en", show_default=True,
              help="Language of the labels; titles appear as written in the manifests, in both.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write to this file (default: .atlas/report.<format>; `-` for stdout).")
@click.pass_context
def report(ctx: click.Context, run_id: int | None, fmt: str, lang: str, output: str | None) -> None:
    """The workplan's report: the Ana/Alt/Makro/Mikro Görev tree with every task's result,
    the dependency graph, charts (training curves, latency and throughput, accuracy), the
    benchmark tables, findings, metrics, artifacts, logs, environment, licenses and history.

    HTML is one self-contained file (no network, no JavaScript); Markdown suits CI
    comments (tables instead of charts); JSON is for machines."""
    from atlas.report import write_report

    target = write_report(_project(ctx), _probe(), fmt=fmt, lang=lang, run_id=run_id, output=output)
    if target is not None:
        click.echo(f"wrote {target}", err=True)


@main.command()
@click.argument("task")
@click.option("--note", required=True, help="What was done; kept with the step's outputs.")
@click.option("--wait", "wait_lock", is_flag=True, help="Queue behind a running atlas run.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.pass_context
def done(ctx: click.Context, task: str, note: str, wait_lock: bool, as_json: bool) -> None:
    """Mark a manual step complete (its evidence files must exist)."""
    from atlas.workflow import mark_done

    result = mark_done(_project(ctx), _probe(), task, note, wait_lock)
    _emit_json(result) if as_json else click.echo(f"{task}: marked done ({len(result['artifacts'])} file(s) kept)")
    sys.exit(EXIT_OK)


def run_cli() -> None:
    """The `atlas` command and `python -m atlas` (tests call `main` itself)."""
    # Nothing made before the project is loaded (modules, the cache read back, thousands
    # of steps) is garbage, and all of it lives to the end: the cyclic collector stays off
    # until _project() has frozen it, instead of scanning it again and again as it grows.
    gc.disable()
    main(obj={"freeze_gc": True}, prog_name="atlas")
