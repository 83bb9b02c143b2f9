"""The report's data through the Jinja templates in reports/: HTML with inline SVG, or
Markdown with tables in place of charts. Both escape every string they are given."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from markupsafe import Markup

from atlas import charts
from atlas.atomic import read_regular, write_atomically
from atlas.render import status_mermaid

TEMPLATES = {"html": "report.html.j2", "md": "report.md.j2"}
LANGUAGES = ("en", "tr")


@lru_cache(maxsize=1)
def labels() -> dict[str, dict[str, str]]:
    return yaml.safe_load(resources.files("reports").joinpath("labels.yaml").read_text(encoding="utf-8"))


def translator(lang: str):
    table = labels()

    def t(key: str, **values) -> str:
        return table[key][lang].format(**values)
    return t


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{int(value // 60)} min {value % 60:.0f} s"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def _metric(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"


def _cell(text) -> str:
    """A Markdown table cell: no row-breaking pipe or newline."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "."), undefined=jinja2.StrictUndefined,
                             autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(when=_when, secs=_secs, size=_size, metric=_metric, cell=_cell, num=charts.cell_text)
    return env


class _SvgCache:
    """Drawn figures kept in .atlas/cache/figures/, named by a digest of what they show
    and of the code that draws them: a report after a run that changed nothing (or changed
    one step) draws only what changed, and needs no matplotlib at all when nothing did.
    Entries this page does not use are removed; a folder that cannot be written (a
    write-protected project) only means every figure is drawn."""

    def __init__(self, folder: Path | None) -> None:
        from atlas.report import figures

        self.folder = folder
        self.code = hashlib.sha256(Path(figures.__file__).read_bytes()).hexdigest()[:16]
        self.used: set[str] = set()

    def get(self, what: object, draw) -> str:
        key = hashlib.sha256(json.dumps([self.code, what], sort_keys=True, default=str).encode()).hexdigest()[:32]
        self.used.add(key)
        path = self.folder / f"{key}.svg" if self.folder is not None else None
        kept = read_regular(path) if path is not None else None     # a FIFO there is never opened to read
        if kept is not None:
            try:
                return kept.decode("utf-8")
            except UnicodeDecodeError:
                pass                         # damaged: drawn again
        svg = draw()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, svg, 0o644)
            except OSError:
                pass
        return svg

    def prune(self) -> None:
        if self.folder is None:
            return
        try:
            for path in self.folder.glob("*.svg"):
                if path.stem not in self.used:
                    path.unlink(missing_ok=True)
        except OSError:
            pass


def _svgs(data: dict, cache_dir: Path | None) -> tuple[dict[str, Markup], str | None]:
    """Every figure of the page drawn once: the graph and each step's charts."""
    from atlas.report import figures

    status = {s["id"]: s["status"] for s in data["steps"]}
    out = {}
    if len(status) <= figures.GRAPH_MAX_STEPS:
        out["graph"] = Markup(figures.graph_svg(data["graph"]["levels"], data["graph"]["edges"], status))
    missing = figures.unavailable()
    if missing:
        return out, missing
    cache = _SvgCache(cache_dir)
    for step in data["steps"]:
        for spec in step["figures"]:
            if spec["kind"] == "chart":
                key = f"{step['id']}/{spec['name']}"
                out[key] = Markup(cache.get(["chart", key, spec], lambda spec=spec, key=key: figures.chart_svg(
                    charts.Chart.model_validate(spec), key.replace("/", "-"))))
    cache.prune()
    return out, None


def t_graph_too_big(t, steps: int) -> str:
    from atlas.report.figures import GRAPH_MAX_STEPS

    return t("graph_too_big", steps=steps, limit=GRAPH_MAX_STEPS)


def render(data: dict, fmt: str, lang: str = "en", cache_dir: Path | None = None) -> str:
    env = _environment()
    extra: dict = {"t": translator(lang), "lang": lang}
    if fmt == "html":
        extra["svgs"], extra["svg_problem"] = _svgs(data, cache_dir)
        if not extra["svg_problem"] and "graph" not in extra["svgs"]:
            extra["svg_problem"] = t_graph_too_big(extra["t"], len(data["steps"]))
    else:
        status = {s["id"]: s["status"] for s in data["steps"]}
        titles = {s["id"]: s["title_en"] for s in data["steps"]}
        # mermaid_text has already replaced every character Markdown or Mermaid could misread
        extra["mermaid"] = Markup(status_mermaid(data["graph"]["levels"], data["graph"]["edges"], status, titles))
        extra["as_table"] = lambda spec: charts.as_table(charts.Chart.model_validate(spec)).model_dump()
    return env.get_template(TEMPLATES[fmt]).render(**data, **extra)
