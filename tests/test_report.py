"""`atlas report` and the report written after every run, from recorded runs: success,
failure, skips, a manual step waiting, no-op re-runs; escaping in HTML, Markdown, Mermaid."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import atlas, task, write_project

A, B, F, S, M, P = "AG-T-A-001", "AG-T-B-001", "AG-T-F-001", "AG-T-S-001", "AG-T-M-001", "AG-T-P-001"
HOSTILE = '<script>alert("x")</script> & co'
HIERARCHY = """name: demo
title: Demo plan
hierarchy:
  - wbs: '1'
    title: Ana görev
    title_en: Main task
    children:
      - {wbs: '1.1', title: "Alt görev", title_en: Sub task, task: AG-T-A-001}
      - {wbs: '1.2', title: "Planlı", title_en: Planned only, task: AG-T-Z-001}
      - {wbs: '1.3', title: "Kopya", title_en: Copy}
      - {wbs: '1.4', title: "Grafik", title_en: Plot}
      - {wbs: '1.5', title: "Hata", title_en: Fail}
      - {wbs: '1.6', title: "Atlanan", title_en: Skipped}
      - {wbs: '1.7', title: "Elle", title_en: Manual}
"""


def project(tmp_path: Path, title_en: str = "task A") -> Path:
    root = write_project(
        tmp_path, task(A, "echo", title_en=title_en, wbs="1.1", params={"text": HOSTILE}),
        task(B, "copy", (A,), wbs="1.3", inputs={"src": f"{A}:out.txt"}),
        task(P, "plot", wbs="1.4"),
        task(F, "fail", wbs="1.5"),
        task(S, "needs_trt", (F,), wbs="1.6"),
        task(M, "manual", wbs="1.7", params={"checklist": ["read papers"], "evidence": ["notes.md"]}))
    (root / "tasks" / "project.yaml").write_text(HIERARCHY)
    return root


def run_all(root: Path, *extra: str):
    return atlas(root, "run", "-k", B, P, S, M, *extra)


def report(root: Path, *args: str) -> str:
    out = root / "out.report"
    result = atlas(root, "report", "-o", str(out), *args)
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8")


def test_every_run_writes_the_html_report_and_names_it_last(tmp_path):
    root = project(tmp_path)
    result = run_all(root)
    last = result.stdout.splitlines()[-1]
    assert last.startswith("run 1: ") and last.endswith(" — report: " + str(root / ".atlas" / "report.html"))
    html = (root / ".atlas" / "report.html").read_text()
    assert html.startswith("<!doctype html>")
    assert json.loads(atlas(root, "run", "--json", B).stdout)["report"].endswith("report.html")
    (root / ".atlas" / "report.html").unlink()
    quiet = atlas(root, "run", "--no-report", B)
    assert "report:" not in quiet.stdout and not (root / ".atlas" / "report.html").exists()


def test_a_run_where_nothing_ran_keeps_the_report_until_a_result_changes(tmp_path):
    root = project(tmp_path)
    page = root / ".atlas" / "report.html"
    atlas(root, "run", B)
    written = page.stat().st_mtime_ns
    again = json.loads(atlas(root, "run", "--json", B).stdout)
    assert again["report_kept"] and again["report"].endswith("report.html") and page.stat().st_mtime_ns == written
    last = atlas(root, "run", B).stdout.splitlines()[-1]
    assert last.endswith("report.html (unchanged: every step was up to date)")
    # a new result (a forced run) writes it again; so does a report written by hand in between
    assert not json.loads(atlas(root, "run", "--json", "-f", B).stdout)["report_kept"]
    atlas(root, "report", "--lang", "tr")
    assert not json.loads(atlas(root, "run", "--json", B).stdout)["report_kept"]
    assert json.loads(atlas(root, "run", "--json", B).stdout)["report_kept"]
    # a skipped or failed step is a result too: never kept
    assert not json.loads(atlas(root, "run", "--json", "-k", S).stdout)["report_kept"]
    page.unlink()
    assert not json.loads(atlas(root, "run", "--json", B).stdout)["report_kept"] and page.is_file()


def test_a_report_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path):
    root = project(tmp_path)
    (root / ".atlas").mkdir()
    (root / ".atlas" / "report.html").mkdir()                 # a folder where the file goes
    result = atlas(root, "run", A)
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "run 1: 1 succeeded"
    assert "warning: report not written (UsageError: " in result.stderr and "`atlas report`" in result.stderr
    assert json.loads(atlas(root, "status", "--json").stdout)[0]["status"] == "succeeded"


def test_html_report_holds_graph_charts_tree_and_every_result(tmp_path):
    root = project(tmp_path)
    run_all(root)
    html = report(root)
    assert "<script" not in html.lower().replace("&lt;script", "")   # no JavaScript, none injected
    assert "http://" not in html.replace("http://www.w3.org", "")   # nothing fetched from a network
    assert re.search(r'<section id="graph">.*?<svg', html, re.S)
    assert html.count('<div class="figure chart"') == 1 and 'id="fig-AG-T-P-001-curve"' in html
    assert "loss per epoch" in html and "best epoch" in html          # the chart's own text, as SVG text
    assert 'id="table-AG-T-P-001-numbers"' in html
    assert "3 of 7 tasks done" in html          # A, B, P of six manifests and the planned AG-T-Z-001
    assert "planned in the work breakdown, no manifest yet: AG-T-Z-001" in html
    # the failure with its hint, the skip with its reason, the manual step waiting
    assert 'class="error"><strong>Error:</strong> boom: the step failed on purpose' in html
    assert "<strong>hint:</strong> fix the fake handler" in html
    assert "TensorFlow not installed" in html and 'class="status waiting"' in html
    # per-step values, the artifacts with sizes and digests, the log tail, the licenses
    assert "Metrics per step (epoch)" in html and "train_loss" in html
    assert f".atlas/out/{A}/out.txt" in html and "sha256" in html
    assert "INFO atlas.AG-T-A-001: wrote" in html
    assert 'id="licenses"' in html and 'id="environment"' in html


def test_escaping_in_html_markdown_and_mermaid(tmp_path):
    root = project(tmp_path, title_en=HOSTILE)
    run_all(root)
    html = report(root)
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in html     # title and param
    md = report(root, "--format", "md")
    assert "<script>" not in md and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in md
    mermaid = md.split("```mermaid\n", 1)[1].split("```", 1)[0]
    node = next(line for line in mermaid.splitlines() if line.strip().startswith("AG_T_A_001["))
    assert "#lt;script#gt;alert(#quot;x#quot;)#lt;/script#gt; #amp; co" in node
    assert node.count('"') == 2 and "&" not in node


def test_markdown_has_tables_instead_of_charts(tmp_path):
    root = project(tmp_path)
    run_all(root)
    md = report(root, "--format", "md")
    assert md.startswith("# Demo plan\n")
    assert "**loss per epoch**" in md and "| epoch | loss | best epoch |" not in md
    assert "| epoch | loss |\n|---|---|\n| 1 | 1 |\n| 2 | 0.5 |" in md
    assert "- **1** Ana Görev: Ana görev — *Main task* (3/7)" in md
    assert "```mermaid\nflowchart LR" in md and "svg" not in md.lower()


def test_up_to_date_steps_keep_their_result_and_no_op_runs_fold(tmp_path):
    root = project(tmp_path)
    atlas(root, "run", B)
    for _ in range(3):
        atlas(root, "run", B)
    data = json.loads(report(root, "--format", "json"))
    a = next(s for s in data["steps"] if s["id"] == A)
    assert a["status"] == "up-to-date" and a["result_status"] == "succeeded" and a["result_run"] == 1
    assert a["message"].startswith("wrote ") and a["duration"] > 0 and a["metrics"][0]["name"] == "chars"
    assert data["runs"][0] == {**data["runs"][0], "folded": True, "first": 2, "last": 4, "n": 3}
    assert data["runs"][1]["id"] == 1 and not data["runs"][1]["folded"]
    html = report(root)
    assert "3 run(s) in which nothing ran: every step was up to date" in html
    assert "up to date (checked " in html and "showing the result of run 1" in html
    assert "nothing changed" not in html.split('id="history"')[0].split('id="steps"')[1].split("</table>")[0]


def test_report_as_of_an_earlier_run(tmp_path):
    root = project(tmp_path)
    atlas(root, "run", A)
    (root / "tasks" / f"{A}.yaml").write_text((root / "tasks" / f"{A}.yaml").read_text().replace(
        "text: ", "text: again "))
    atlas(root, "run", A)
    first = json.loads(report(root, "--format", "json", "--run", "1"))
    latest = json.loads(report(root, "--format", "json"))
    pick = lambda d: next(s for s in d["steps"] if s["id"] == A)   # noqa: E731
    assert first["as_of_run"] == 1 and [r["id"] for r in first["runs"]] == [1]
    assert pick(first)["run"] == 1 and pick(latest)["run"] == 2
    assert pick(first)["metrics"][0]["value"] < pick(latest)["metrics"][0]["value"]
    missing = atlas(root, "report", "--run", "9")
    assert missing.exit_code == 2 and "error: no run 9 in this project" in missing.stderr


def test_turkish_labels_and_titles_as_written(tmp_path):
    root = project(tmp_path)
    run_all(root)
    html = report(root, "--lang", "tr")
    assert '<html lang="tr">' in html and "İş kırılımı" in html and "Bağımlılık grafiği" in html
    assert "başarısız" in html and "görev AG-T-F-001" in html and "task AG-T-F-001" in html
    md = report(root, "--format", "md", "--lang", "tr")
    assert "## İş kırılımı" in md and "görevden" in md


def test_every_label_has_both_languages():
    from atlas.report.pages import LANGUAGES, labels

    table = labels()
    assert table and all(set(v) == set(LANGUAGES) and all(v.values()) for v in table.values()), \
        [k for k, v in table.items() if set(v) != set(LANGUAGES)]


def test_report_on_a_project_that_never_ran(tmp_path):
    root = project(tmp_path)
    html = report(root)
    assert "nothing has run yet" in html and "0 of 7 tasks done" in html
    assert json.loads(report(root, "--format", "json"))["runs"] == []


def test_report_to_stdout_and_bad_paths(tmp_path):
    root = project(tmp_path)
    atlas(root, "run", A)
    out = atlas(root, "report", "--format", "md", "-o", "-")
    assert out.exit_code == 0 and out.stdout.startswith("# Demo plan")
    folder = atlas(root, "report", "-o", str(tmp_path))
    assert folder.exit_code == 2 and "is a directory" in folder.stderr and "Traceback" not in folder.output


def test_a_malformed_stored_figure_is_named_not_fatal(tmp_path):
    from atlas.state import StateStore

    root = project(tmp_path)
    atlas(root, "run", P)
    store = StateStore(root / ".atlas" / "state.db")
    store.record_figure(1, {"kind": "chart", "name": "broken", "title": "x", "series": []})
    store.close()
    html = report(root)
    assert "figure &#39;broken&#39; unreadable" in html and 'id="fig-AG-T-P-001-curve"' in html


def test_svg_ids_differ_between_figures_and_repeat_for_the_same_data():
    pytest.importorskip("matplotlib")
    from atlas.charts import Chart, Series
    from atlas.report.figures import chart_svg

    chart = Chart(name="c", title="t", x_label="x", y_label="y", series=[Series(label="s", x=[1, 2], y=[3, 4])])
    one, again, other = chart_svg(chart, "a-c"), chart_svg(chart, "a-c"), chart_svg(chart, "b-c")
    assert one == again and one.startswith("<svg")
    ids = lambda svg: set(re.findall(r'id="([^"]+)"', svg))   # noqa: E731
    assert ids(one) and not ids(one) & ids(other)


def test_a_damaged_figure_cache_is_drawn_again_and_a_fifo_there_is_never_read(tmp_path):
    import os

    root = project(tmp_path)
    run_all(root)
    cache = root / ".atlas" / "cache" / "figures"
    [svg] = cache.glob("*.svg")
    def timeless(text: str) -> str:          # the report says when it was generated, to the second
        return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "WHEN", text)

    first = timeless(report(root))
    svg.write_bytes(b"\xff\xfe not UTF-8")
    assert timeless(report(root)) == first and svg.read_bytes().startswith(b"<")     # drawn again
    svg.unlink()
    os.mkfifo(svg)
    assert timeless(report(root)) == first and svg.is_file()     # never opened; replaced by the drawing
