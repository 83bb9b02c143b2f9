"""SVG for the HTML report: a step's charts (drawn by matplotlib) and the dependency graph
(plain SVG written here).

matplotlib is imported here only, when a chart is drawn. Each figure gets its own
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
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:     # found, not imported: 0.4 s saved
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


GRAPH_MAX_STEPS = 200      # beyond this a drawing is unreadable; the report says so
_FONT_PX = 11
_CHAR_PX = 6.6             # an average character of the 11 px sans-serif the page uses
_ROW_PX, _GAP_PX, _PAD_PX = 46, 56, 8


def graph_svg(levels: list[list[str]], edges: list[tuple[str, str]], status: dict[str, str],
              salt: str = "graph") -> str:
    """The dependency graph left to right, one column per level, each task a box coloured
    by its status and linked to its section of the report; arrows from a dependency to the
    task that needs it.

    Plain SVG written here, not matplotlib: boxes, lines and text need no plotting
    library, and a report after a run that changed only statuses costs no matplotlib import
    (0.4 s) and no drawing (matplotlib's patch-clipped arrows: ~10 ms an edge)."""
    from markupsafe import escape

    def label(task: str) -> str:
        return status.get(task, "never run")

    widths = [max((max(len(t), len(label(t))) * _CHAR_PX + 2 * _PAD_PX for t in level), default=80)
              for level in levels]
    tallest = max((len(level) for level in levels), default=1)
    height = tallest * _ROW_PX + 30                        # room for the legend below
    xs, x = [], 4.0
    for width in widths:
        xs.append(x)
        x += width + _GAP_PX
    total_width = max(x - _GAP_PX + 4, 200)
    boxes: dict[str, tuple[float, float, float]] = {}     # task -> (left, centre y, width)
    for col, level in enumerate(levels):
        top = (tallest - len(level)) * _ROW_PX / 2
        for row, task in enumerate(level):
            boxes[task] = (xs[col], top + row * _ROW_PX + _ROW_PX / 2, widths[col])
    marker = f"{salt}-arrow"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{total_width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {total_width:.0f} {height:.0f}" font-family="DejaVu Sans, sans-serif" '
           f'font-size="{_FONT_PX}">',
           f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#666"/></marker></defs>']
    for dep, task in edges:
        if dep in boxes and task in boxes:
            (x0, y0, w0), (x1, y1, _) = boxes[dep], boxes[task]
            out.append(f'<line x1="{x0 + w0:.1f}" y1="{y0:.1f}" x2="{x1 - 1:.1f}" y2="{y1:.1f}" stroke="#666" '
                       f'stroke-width="1.2" marker-end="url(#{marker})"/>')
    for task, (left, cy, width) in boxes.items():
        text = label(task)
        fill = STATUS_COLOR.get(text, "#bbbbbb")
        ink = "#222" if fill == "#bbbbbb" else "#fff"
        out.append(f'<a href="#step-{escape(task)}"><g id="{salt}-node-{escape(task)}">'
                   f'<title>{escape(task)}: {escape(text)}</title>'
                   f'<rect x="{left:.1f}" y="{cy - 17:.1f}" width="{width:.1f}" height="34" rx="5" fill="{fill}"/>'
                   f'<text x="{left + width / 2:.1f}" y="{cy - 3:.1f}" text-anchor="middle" fill="{ink}">'
                   f'{escape(task)}</text>'
                   f'<text x="{left + width / 2:.1f}" y="{cy + 11:.1f}" text-anchor="middle" fill="{ink}">'
                   f'{escape(text)}</text></g></a>')
    shown = [s for s in STATUS_COLOR if s in set(status.values())]
    x = 4.0
    for name in shown:
        out.append(f'<rect x="{x:.1f}" y="{height - 18:.1f}" width="14" height="10" fill="{STATUS_COLOR[name]}"/>'
                   f'<text x="{x + 18:.1f}" y="{height - 9:.1f}">{escape(name)}</text>')
        x += 18 + len(name) * _CHAR_PX + 16
    out.append("</svg>")
    return "\n".join(out)
