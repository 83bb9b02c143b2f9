"""README.md's figure blocks are what benchmarks/readme_figures.py generates from the results."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "readme_figures.py"
README = REPO / "README.md"


def _load():
    spec = importlib.util.spec_from_file_location("readme_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_figures", module)
    spec.loader.exec_module(module)
    return module


figures = _load()


@pytest.fixture()
def copy_root(tmp_path):
    """A scratch project with copies of the results, the manifests and the README."""
    shutil.copytree(REPO / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    shutil.copytree(REPO / "tasks", tmp_path / "tasks")
    shutil.copy(README, tmp_path / "README.md")
    return tmp_path


def _block(text: str, name: str) -> str:
    start = text.index(f"<!-- figures:{name} ")
    return text[start:text.index(f"<!-- /figures:{name} -->", start)]


def test_readme_is_up_to_date():
    text = README.read_text(encoding="utf-8")
    fresh = figures.render(text)
    assert fresh == text, ("README.md's figure blocks differ from the recorded results; "
                           "run `python benchmarks/readme_figures.py --write` and commit README.md")


def test_every_block_is_in_the_readme():
    text = README.read_text(encoding="utf-8")
    for name in figures.BLOCKS:
        assert f"<!-- figures:{name} " in text and f"<!-- /figures:{name} -->" in text, name


@pytest.mark.parametrize("name, typed, edited", [
    ("dali", "eager 3,883 of 4,684 img/s", "eager 3,999 of 4,684 img/s"),
    ("training", "| 0.983 | 1.000 | 0.983 |", "| 0.990 | 1.000 | 0.983 |"),
    ("plan-scale", "tasks/` | 12 |", "tasks/` | 3 |"),
])
def test_a_hand_edited_block_is_put_back(name, typed, edited):
    text = README.read_text(encoding="utf-8")
    block = _block(text, name)
    assert typed in block
    stale = text.replace(block, block.replace(typed, edited))
    assert figures.render(stale) != stale
    assert figures.render(stale) == figures.render(text)


def test_an_edited_opening_comment_is_put_back():
    text = README.read_text(encoding="utf-8")
    stale = text.replace("from tasks/AG-DS-*.yaml; do not edit", "from somewhere; do not edit")
    assert stale != text
    assert figures.render(stale) == figures.render(text)


def test_unknown_block_name_is_an_error():
    text = "intro\n<!-- figures:no-such-block (generated; do not edit) -->\nold\n<!-- /figures:no-such-block -->\n"
    with pytest.raises(figures.FiguresError, match="unknown figures block 'no-such-block'"):
        figures.render(text)


def test_unclosed_block_is_an_error():
    with pytest.raises(figures.FiguresError, match="has no <!-- /figures:tasks -->"):
        figures.render("<!-- figures:tasks (generated; do not edit) -->\nold\n")


def test_missing_results_file_is_an_error_naming_it(copy_root):
    missing = "benchmarks/results/dali-feed-h200-2026-12-01.json"
    (copy_root / missing).unlink()
    text = (copy_root / "README.md").read_text(encoding="utf-8")
    with pytest.raises(figures.FiguresError, match=f"results file missing: {missing}"):
        figures.render(text, copy_root)
    assert (REPO / missing).is_file()


def test_the_newest_plan_scale_result_is_used(copy_root):
    results = copy_root / "benchmarks" / "results"
    old = json.loads((results / "plan_scale-vm-2026-11-21.json").read_text())
    old["real_project"]["loaded_steps"] = 12
    old["machine"]["date"] = "2027-01-05T10:00:00+00:00"
    (results / "plan_scale-vm-2027-01-05.json").write_text(json.dumps(old))
    text = (copy_root / "README.md").read_text(encoding="utf-8")
    block = _block(figures.render(text, copy_root), "plan-scale")
    assert "plan_scale-vm-2027-01-05.json" in block and "plan_scale-vm-2026-11-21.json" not in block
    assert "| this repository's `tasks/` | 12 |" in block


def test_check_prints_a_diff_and_write_fixes_it(copy_root, monkeypatch, capsys):
    readme = copy_root / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("eager 3,883 of", "eager 3,999 of"),
                      encoding="utf-8")
    monkeypatch.setattr(figures, "ROOT", copy_root)
    assert figures.main(["--check"]) == 1
    out = capsys.readouterr()
    diff = out.out.splitlines()
    assert any(line.startswith("-") and "eager 3,999 of" in line for line in diff)
    assert any(line.startswith("+") and "eager 3,883 of" in line for line in diff)
    assert "--write" in out.err
    assert figures.main(["--write"]) == 0
    assert figures.main(["--check"]) == 0
    assert readme.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")
