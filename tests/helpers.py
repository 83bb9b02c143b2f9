"""Temporary projects and a CLI driver for end-to-end tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

import fake_handlers
from atlas.cli import main
from atlas.registry import Registry
from handlers.research.manual import Manual

REGISTRY = Registry.from_classes(*fake_handlers.ALL, Manual)


def task(tid: str, handler: str, deps: tuple[str, ...] = (), **fields) -> dict:
    data = {"id": tid, "title": f"görev {tid}", "title_en": f"task {tid}", "wbs": "1", "handler": handler,
            "depends_on": list(deps)}
    data.update(fields)
    return data


def write_project(root: Path, *tasks: dict) -> Path:
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "tasks" / "project.yaml").write_text("name: test-project\n")
    for data in tasks:
        write_task(root, data)
    return root


def write_task(root: Path, data: dict) -> None:
    (root / "tasks" / f"{data['id']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def atlas(root: Path, *args: str, registry: Registry = REGISTRY):
    result = CliRunner().invoke(main, ["-C", str(root), *args], obj={"registry": registry})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_json(root: Path, *args: str) -> tuple[int, dict]:
    result = atlas(root, "run", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def runner(root: Path, *args: str, command: str = "run") -> subprocess.Popen:
    """`atlas run ARGS` in its own process (to be killed or interrupted), with the fake
    handlers registered."""
    script = ("import sys; from atlas.cli import main; from helpers import REGISTRY; "
              f"main(['-C', {str(root)!r}, {command!r}, *{list(args)!r}], obj={{'registry': REGISTRY}})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_at_a_terminal)


def ctrl_c_as_at_a_terminal() -> None:
    """In the child before it starts: SIGINT back to its default. A shell without job control
    starts background commands with SIGINT ignored (`cmd &` in a script, so a CI harness run
    that way), and Python then installs no KeyboardInterrupt handler: a test's Ctrl-C would
    not reach the runner at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
