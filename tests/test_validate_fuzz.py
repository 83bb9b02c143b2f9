"""Random and mutated manifests thrown at `atlas validate` (property-based, hypothesis).

Whatever a manifest holds, validate ends with exit 0, or exit 3 with every problem on a
`tasks/FILE.yaml:LINE:COL: message` line; never a traceback, never over a second, and the
process never grows by 200 MB. The cases start from the project's own twelve manifests
(the real handlers and their params checks), mutated byte-wise, line-wise and value-wise,
plus whole manifests of random YAML. `FUZZ_EXAMPLES` raises the count for a long run;
`FUZZ_RECORD=FILE` writes how many cases ran, per strategy and outcome, as JSON.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from atlas.registry import Registry  # noqa: E402
from helpers import atlas  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "tasks").glob("AG-*.yaml"))
TEXTS = {p.name: p.read_text(encoding="utf-8") for p in MANIFESTS}
PROBLEM = re.compile(r"^tasks/[^:]+\.ya?ml:\d+:\d+: \S")
SUMMARY = re.compile(r"^(error: \d+ problems? in the manifests|hint: .+)$")
SECONDS = 1.0
GROWTH_KB = 200 * 1024
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
REGISTRY = Registry()           # the real handlers, as `atlas validate` uses them

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# what YAML parses specially, so mutations reach the parser's and the models' corners
YAML_BITS = ["&a ", "*a", "<<: ", "!!set ", "!!python/object ", "? ", "- ", ": ", "{", "}", "[", "]",
             "'", '"', "|", ">-", "#", "%YAML 1.1\n", "---\n", "...\n", "\t", "\n", "  ", "\\u0000",
             "~", "null", "1e999", "0x1F", "1:20:30", "2026-12-01", ".inf", "yes", "-1", "..", "/etc/passwd",
             "../../x", "AG-DS-SCRIPTGPU-001:model.pt", "AG-DS-NOPE-001:x", "\u00e7\u011f\u0131\u015f",
             "\ufeff", "\x85", "\u2028"]
KEYS = ["id", "title", "title_en", "wbs", "handler", "depends_on", "inputs", "params", "outputs",
        "timeout", "retries", "resources", "acceptance", "module", "libraries", "description"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "tasks", root / "tasks")
    assert atlas(root, "validate", registry=REGISTRY).exit_code == 0     # imports paid once
    return root


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak() -> bool:
    """Reset this process's peak resident size (VmHWM), so each case is measured alone."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def baseline_kb(project) -> int | None:
    if not _reset_peak():
        return None                  # not Linux, or no /proc: time and outcome still checked
    return _status_kb("VmRSS")


COUNTS: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def record_counts():
    yield
    target = os.environ.get("FUZZ_RECORD")
    if target:
        Path(target).write_text(json.dumps({"examples_per_strategy": EXAMPLES, "cases": COUNTS,
                                            "total": sum(sum(c.values()) for c in COUNTS.values())}, indent=2))


def check(root: Path, baseline: int | None, name: str, text: str, strategy: str = "") -> None:
    path = root / "tasks" / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    if baseline is not None:
        baseline = _status_kb("VmRSS")
        _reset_peak()
    try:
        start = time.perf_counter()
        result = atlas(root, "validate", registry=REGISTRY)       # a traceback raises here
        elapsed = time.perf_counter() - start
    finally:
        path.write_text(TEXTS.get(name, ""), encoding="utf-8")
        if name not in TEXTS:
            path.unlink()
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 3), result.output
    outcome = COUNTS.setdefault(strategy, {})
    outcome[f"exit {result.exit_code}"] = outcome.get(f"exit {result.exit_code}", 0) + 1
    if result.exit_code == 3:
        lines = result.stderr.splitlines()
        assert lines and all(PROBLEM.match(x) or SUMMARY.match(x) for x in lines), lines
        assert any(PROBLEM.match(x) for x in lines), lines
    assert elapsed < SECONDS, f"validate took {elapsed:.2f} s"
    if baseline is not None:
        grown = _status_kb("VmHWM") - baseline
        assert grown < GROWTH_KB, f"validate took {grown // 1024} MB more than the process held"


names = st.sampled_from(sorted(TEXTS))


@st.composite
def byte_mutations(draw) -> tuple[str, str]:
    """A real manifest with a few spans deleted, duplicated or replaced by YAML syntax."""
    name = draw(names)
    text = TEXTS[name]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "repeat"]))
        bit = draw(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=8)))
        text = (text[:i] + text[j:] if op == "delete" else
                text[:i] + bit + text[i:] if op == "insert" else
                text[:i] + bit + text[j:] if op == "replace" else
                text[:j] + text[i:j] * draw(st.integers(2, 5)) + text[j:])
    return name, text


@st.composite
def line_mutations(draw) -> tuple[str, str]:
    """Lines of a real manifest dropped, swapped, re-indented or taken from another one."""
    name = draw(names)
    lines = TEXTS[name].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "swap", "indent", "dedent", "foreign"]))
        if op == "drop":
            del lines[k]
        elif op == "swap":
            m = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[m] = lines[m], lines[k]
        elif op == "indent":
            lines[k] = " " * draw(st.integers(1, 6)) + lines[k]
        elif op == "dedent":
            lines[k] = lines[k].lstrip()
        else:
            other = TEXTS[draw(names)].splitlines()
            lines.insert(k, draw(st.sampled_from(other)))
        if not lines:
            break
    return name, "\n".join(lines) + "\n"


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=20), st.sampled_from(YAML_BITS))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)),
                                                 inner, max_size=5)), max_leaves=30)


@st.composite
def value_mutations(draw) -> tuple[str, str]:
    """A real manifest with some fields (top level or inside params) set to random values."""
    name = draw(names)
    data = yaml.safe_load(TEXTS[name])
    for _ in range(draw(st.integers(1, 3))):
        where = data.setdefault("params", {}) if draw(st.booleans()) and isinstance(
            data.get("params"), dict) else data
        key = draw(st.one_of(st.sampled_from(sorted(where) or KEYS), st.sampled_from(KEYS)))
        if draw(st.integers(0, 5)) == 0:
            where.pop(key, None)
        else:
            where[key] = draw(values)
    return name, yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def random_manifests(draw) -> tuple[str, str]:
    """A new manifest of random YAML text, or random data dumped as YAML."""
    name = draw(st.sampled_from(["AG-T-FUZZ-001.yaml", "fuzz.yml"] + sorted(TEXTS)))
    if draw(st.booleans()):
        text = "".join(draw(st.lists(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=6)),
                                     max_size=40)))
    else:
        text = yaml.safe_dump(draw(values), allow_unicode=True)
    return name, text


@pytest.mark.parametrize("strategy", [byte_mutations, line_mutations, value_mutations, random_manifests],
                         ids=lambda s: s.__name__)
def test_validate_survives(project, baseline_kb, strategy):
    @FUZZ
    @given(case=strategy())
    def run(case):
        check(project, baseline_kb, *case, strategy=strategy.__name__)

    run()
