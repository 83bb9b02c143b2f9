"""The README's picture of a real report: opens an atlas HTML report in headless Chromium
(through tests/browser.py, which also fails on console errors or network requests) and
keeps two parts of the page, stacked: the top (progress, work breakdown, dependency graph)
and one step's charts.

    python benchmarks/report_screenshot.py .atlas/report.html docs/report.png \
        --step AG-DS-TRTTEST-001
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _browser():
    spec = importlib.util.spec_from_file_location("browser", REPO / "tests" / "browser.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["browser"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--step", default="AG-DS-TRTTEST-001", help="the step whose charts to show")
    ap.add_argument("--width", type=int, default=1300)
    args = ap.parse_args()
    box = ("(e => e ? [e.getBoundingClientRect().top + scrollY, e.getBoundingClientRect().bottom + scrollY] "
           ": null)")
    checks = {"top": f"{box}(document.querySelector('#graph'))",
              "charts": f"{box}(document.querySelector('#step-{args.step} .charts'))",
              "heading": f"{box}(document.querySelector('#step-{args.step} h3'))"}
    with tempfile.TemporaryDirectory() as tmp:
        page = _browser().open_page(args.report, Path(tmp) / "full.png", width=args.width, checks=checks)
        if page.errors or page.requests:
            print(f"the report is not clean: errors {page.errors}, requests {page.requests}", file=sys.stderr)
            return 1
        full = Image.open(io.BytesIO((Path(tmp) / "full.png").read_bytes())).convert("RGB")
    parts = [full.crop((0, 0, full.width, int(page.checks["top"][1]) + 10))]
    if page.checks["charts"] and page.checks["heading"]:
        parts.append(full.crop((0, int(page.checks["heading"][0]) - 10, full.width, int(page.checks["charts"][1]) + 10)))
    out = Image.new("RGB", (full.width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    out.quantize(colors=256).save(args.out, optimize=True)     # a screenshot: 256 colours suffice
    print(f"wrote {args.out} ({out.width}x{out.height}) from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
