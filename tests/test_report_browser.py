"""The HTML report in a real browser (headless Chromium over CDP, see browser.py): it loads
with no console error, no exception and no network request, draws its figures inline, and
shows hostile manifest text as text."""
from __future__ import annotations

from pathlib import Path

import pytest

from browser import find_chromium, open_page
from helpers import atlas, task, write_project

if find_chromium() is None:
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)

E, C, P, F = "AG-T-E-001", "AG-T-C-001", "AG-T-P-001", "AG-T-F-001"
HOSTILE = "<script>alert(1)</script> & co"
PROJECT = """name: demo
title: Demo plan
hierarchy:
  - wbs: '1'
    title: Ana görev
    title_en: Main task
"""
CHECKS = {
    "graph": "document.querySelector('#graph svg') !== null",
    "charts": "document.querySelectorAll('.chart svg').length",
    "tree": "document.querySelectorAll('ul.tree li').length",
    "scripts": "document.scripts.length",
    "hostile_text": f"document.body.innerText.includes({HOSTILE!r})",
    "steps": "document.querySelectorAll('section.step').length",
}


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    root = write_project(tmp_path_factory.mktemp("project"),
                         task(E, "echo", title_en=HOSTILE, params={"text": HOSTILE}),
                         task(C, "copy", (E,), inputs={"src": f"{E}:out.txt"}),
                         task(P, "plot"), task(F, "fail"))
    (root / "tasks" / "project.yaml").write_text(PROJECT)
    run = atlas(root, "run", "--keep-going", C, P, F)  # F fails on purpose: the report shows a failure too
    assert run.exit_code != 0 and "run 1: 1 failed, 3 succeeded" in run.output, run.output
    path = root / "report.html"
    result = atlas(root, "report", "-o", str(path))
    assert result.exit_code == 0, result.output
    return path


def test_report_renders_cleanly_in_chromium(report_html, tmp_path):
    shot = tmp_path / "report.png"
    page = open_page(report_html, screenshot=shot, checks=CHECKS)
    assert page.errors == []
    assert page.requests == []
    assert page.checks["graph"] is True
    assert page.checks["charts"] >= 1
    assert page.checks["tree"] >= 1
    assert page.checks["steps"] == 4
    assert page.checks["scripts"] == 0  # the hostile title became text, not a <script>
    assert page.checks["hostile_text"] is True
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert page.screenshot == str(shot)


def test_open_page_catches_errors_and_requests(report_html, tmp_path):
    """The checker itself: a copy of the report with a console error, an exception and a
    remote image must be reported as such (or the test above proves nothing)."""
    hostile = tmp_path / "hostile.html"
    hostile.write_text(report_html.read_text(encoding="utf-8").replace(
        "</body>", "<script>console.error('x'); throw new Error('boom')</script>"
                   "<img src=\"http://example.invalid/x.png\"></body>"), encoding="utf-8")
    page = open_page(hostile, checks={"scripts": "document.scripts.length"})
    assert {"level": "error", "text": "x"} in page.console
    assert any("console.error: x" in e for e in page.errors)
    assert any("boom" in e for e in page.errors)
    assert page.requests == ["http://example.invalid/x.png"]
    assert page.checks["scripts"] == 1
