"""The workplan report (`atlas report`, and after every `atlas run`): data from the state
store (data.py), figures drawn by matplotlib (figures.py), pages from reports/ (pages.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from typing import TYPE_CHECKING

from atlas import __version__
from atlas.atomic import read_regular, write_atomically
from atlas.errors import UsageError, storage_error

if TYPE_CHECKING:
    from atlas.probe import Probe
    from atlas.project import Project

FORMATS = ("html", "md", "json")
STAMP = Path("cache") / "report-stamp.json"     # under .atlas/: what the last run's report showed


def text_of(project: Project, probe: Probe, fmt: str = "html", lang: str = "en", run_id: int | None = None) -> str:
    from atlas.report.data import build
    from atlas.report.pages import LANGUAGES, render

    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}", f"choose one of {', '.join(FORMATS)}")
    if lang not in LANGUAGES:
        raise UsageError(f"unknown language {lang!r}", f"choose one of {', '.join(LANGUAGES)}")
    data = build(project, probe, run_id)
    if fmt == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    return render(data, fmt, lang, project.state_dir / "cache" / "figures")


def default_path(project: Project, fmt: str) -> Path:
    return project.state_dir / f"report.{fmt}"


def write_report(project: Project, probe: Probe, fmt: str = "html", lang: str = "en", run_id: int | None = None,
                 output: str | None = None) -> str | None:
    """Write the report to `output` (default .atlas/report.FORMAT; "-" prints it). Returns
    the path written, as the user should read it, or None for stdout."""
    text = text_of(project, probe, fmt, lang, run_id)
    if output == "-":
        print(text, end="")
        return None
    path = Path(output) if output else default_path(project, fmt)
    if path.is_dir():
        raise UsageError(f"{path} is a folder", "give -o a file name, e.g. -o report.html")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text, 0o644)
    except OSError as exc:
        raise storage_error(exc) or UsageError(f"cannot write {path}: {exc.strerror or exc}",
                                               "choose another -o path") from None
    return shown_path(path)


def shown_path(path: Path) -> str:
    """Relative to the working folder when inside it, else absolute."""
    try:
        return os.path.relpath(path.resolve(), Path.cwd()) if path.resolve().is_relative_to(Path.cwd()) \
            else str(path.resolve())
    except (OSError, ValueError):
        return str(path)


def write_after_run(project: Project, probe: Probe, run_id: int,
                    nothing_ran: bool = False) -> tuple[str | None, list[str], bool]:
    """The HTML report at the end of `atlas run`: (path, problems, kept). A run in which
    every step was up to date keeps the report of the run before it when no result has
    changed since (`kept`): it would differ only in the run number and its history, and
    on 2,000 steps it costs a second. A report that cannot be written never changes the
    run's result: it becomes a warning naming the command that retries it."""
    path = default_path(project, "html")
    results = _latest_result(project)
    if nothing_ran and results is not None and _stamp_of(project, path) == _stamp(path, results):
        return shown_path(path), [], True
    try:
        written = write_report(project, probe, "html", "en", None, None)
    except Exception as exc:  # noqa: BLE001 - the run's results are stored; the report is a view of them
        return None, [f"report not written ({type(exc).__name__}: {exc}); `atlas report` writes it again"], False
    if results is not None:
        try:
            write_atomically(project.state_dir / STAMP, json.dumps(_stamp(path, results)))
        except OSError:
            pass                         # no stamp: the next up-to-date run writes the report again
    return written, [], False


def _latest_result(project: Project) -> int | None:
    """The newest step run that is not an up-to-date check (a result, a skip, a failure)."""
    from atlas.facts import open_store

    try:
        store = open_store(project, readonly=True)
        try:
            return store.latest_result_id()
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - without it the report is simply written
        return None


def _stamp(path: Path, results: int) -> dict:
    try:
        info = os.stat(path)
    except OSError:
        return {}
    return {"atlas": __version__, "latest_result": results, "report": [info.st_mtime_ns, info.st_size]}


def _stamp_of(project: Project, path: Path) -> dict | None:
    raw = read_regular(project.state_dir / STAMP)
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None
