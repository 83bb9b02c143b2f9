"""SVG for the HTML report, drawn by matplotlib: a step's charts and the dependency graph.

matplotlib is imported here only, when a report is written. Each figure gets its own
salt and root id, so several SVGs inlined in one page never share clip-path ids
(matplotlib #4349), and no date is written, so the same data gives the same bytes.
"""
from __future__ import annotations

import io
import re

from atlas.charts import Chart

# one colour per status, shared by the graph and the HTML badges
STATUS_COLOR = {"succeeded": "#2ca02c", "up-to-date": "#5aa35a", "failed": "#d62728", "skipped": "#7f7f7f",
                "waiting": "#ff7f0e", "interrupted": "#9467bd", "running": "#1f77b4", "never run": "#bbbbbb"}
LINESTYLE = {"solid": "-", "dashed": "--", "dotted": ":"}
_HEADER = re.compile(r"^.*?(?=<svg)", re.S)
_ID = re.compile(r'\sid="([^"]+)"')
_REF = re.compile(r'((?:\sid="|href="#|url\(#))([^")]+)([")])')


def unavailable() -> str | None:
    """Why charts cannot be drawn here, with the fix; None when they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "charts not drawn: matplotlib is not installed (pip install matplotlib); the tables below hold the numbers"
    return None


def _rc(salt: str) -> dict:
    return {"svg.hashsalt": salt, "svg.id": "svg", "svg.fonttype": "none", "font.size": 9,
            "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}


def _svg(fig, salt: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return _own_ids(_HEADER.sub("", buf.getvalue(), count=1), salt)


def _own_ids(svg: str, salt: str) -> str:
    """Prefix every id the SVG defines (matplotlib names groups "axes_1", "line2d_1" in
    every figure) and each reference to it, so ids stay unique across one HTML page."""
    ids = set(_ID.findall(svg))

    def rename(match: re.Match) -> str:
        name = match.group(2)
        return f"{match.group(1)}{salt}-{name}{match.group(3)}" if name in ids else match.group(0)
    return _REF.sub(rename, svg)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def chart_svg(chart: Chart, salt: str) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_rc(salt)):
        fig = Figure(figsize=(6.4, 3.3))
        ax = fig.subplots()
        (_bars if chart.plot == "bar" else _lines)(ax, chart)
        for ref in chart.references:
            ax.axhline(ref.y, color="#555", linestyle="--", linewidth=1, label=ref.label)
        ax.set_title(chart.title)
        ax.set_xlabel(chart.x_label)
        ax.set_ylabel(chart.y_label)
        if chart.log_y:
            ax.set_yscale("log", base=chart.log_y)
        if len(chart.series) > 1 or chart.marks or chart.references:
            ax.legend(fontsize=7, frameon=False, loc="best")
        return _svg(fig, salt)


def _lines(ax, chart: Chart) -> None:
    numeric = all(isinstance(x, (int, float)) for s in chart.series for x in s.x)
    for s in chart.series:
        ax.plot(s.x, [_num(v) for v in s.y], LINESTYLE[s.style], marker="o", markersize=3, label=s.label)
    if chart.log_x and numeric:
        ax.set_xscale("log", base=chart.log_x)
        ticks = sorted({float(x) for s in chart.series for x in s.x if float(x) > 0})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    for i, mark in enumerate(chart.marks):
        if mark.x_end is None:
            ax.axvline(mark.x, color="#444", linestyle=":", linewidth=1.2, label=mark.label)
        else:
            ax.axvspan(mark.x, mark.x_end, color=f"C{3 + i}", alpha=0.12, label=mark.label)


def _bars(ax, chart: Chart) -> None:
    categories: list = []
    for s in chart.series:
        categories += [x for x in s.x if x not in categories]
    width = 0.8 / len(chart.series)
    for i, s in enumerate(chart.series):
        values = dict(zip(s.x, s.y))
        offsets = [c + (i - (len(chart.series) - 1) / 2) * width for c in range(len(categories))]
        bars = ax.bar(offsets, [_num(values.get(c)) for c in categories], width, label=s.label)
        ax.bar_label(bars, fmt="%.3g", fontsize=6, padding=1)
    ax.set_xticks(range(len(categories)), [str(c) for c in categories],
                  rotation=20 if sum(len(str(c)) for c in categories) > 60 else 0, ha="right"
                  if sum(len(str(c)) for c in categories) > 60 else "center")


def graph_svg(levels: list[list[str]], edges: list[tuple[str, str]], status: dict[str, str],
              salt: str = "graph") -> str:
    """The dependency graph left to right, one column per level, each task coloured by its
    status and linked to its section of the report."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tallest = max((len(level) for level in levels), default=1)
    with matplotlib.rc_context(_rc(salt) | {"axes.grid": False}):
        fig = Figure(figsize=(max(6.0, 2.2 * len(levels)), max(1.6, 0.75 * tallest + 0.6)))
        ax = fig.subplots()
        ax.set_axis_off()
        boxes = {}
        for col, level in enumerate(levels):
            for row, task in enumerate(level):
                y = (len(level) - 1) / 2 - row
                colour = STATUS_COLOR.get(status.get(task, "never run"), "#bbbbbb")
                text = ax.text(col, y, f"{task}\n{status.get(task, 'never run')}", ha="center", va="center",
                               fontsize=7, color="white" if colour != "#bbbbbb" else "#222",
                               bbox={"boxstyle": "round,pad=0.4", "fc": colour, "ec": "none"})
                text.set_url(f"#step-{task}")
                text.set_gid(f"node-{task}")
                boxes[task] = text
        for dep, task in edges:
            if dep in boxes and task in boxes:
                ax.annotate("", xy=(0.5, 0.5), xycoords=boxes[task], xytext=(0.5, 0.5), textcoords=boxes[dep],
                            arrowprops={"arrowstyle": "-|>", "color": "#666", "linewidth": 0.9,
                                        "patchA": boxes[dep].get_bbox_patch(),
                                        "patchB": boxes[task].get_bbox_patch(), "shrinkA": 2, "shrinkB": 2})
        ax.set_xlim(-0.6, max(len(levels) - 1, 0) + 0.6)
        half = max(tallest / 2, 0.5)
        ax.set_ylim(-half, half)
        shown = [s for s in STATUS_COLOR if s in set(status.values())]
        ax.legend(handles=[Patch(color=STATUS_COLOR[s], label=s) for s in shown], fontsize=7, frameon=False,
                  loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=max(1, len(shown)))
        return _svg(fig, salt)

