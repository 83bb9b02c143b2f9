"""atlas.codedigest: a handler's code is its module and what it imports from its own package,
read from import lines; and the project's own handlers follow that rule after the move."""
from __future__ import annotations

import sys
import textwrap

import networkx as nx
import pytest

from atlas import codedigest
from atlas.registry import Registry


@pytest.fixture
def package(tmp_path, monkeypatch):
    """pkgx/ with a handler module and the modules it uses in every import form."""
    root = tmp_path / "pkgx"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "sub/__init__.py": "",
        "step.py": """
            from pkgx.top import A            # top-level import
            from pkgx import plain            # from a package import a module
            from .rel import R                # relative import

            def run():
                from pkgx.sub.lazy import L   # inside a function
                import pkgx.dotted
            """,
        "top.py": "from pkgx.deep import D\nA = 1\n",
        "deep.py": "D = 1\n",
        "plain.py": "P = 1\n",
        "rel.py": "R = 1\n",
        "sub/lazy.py": "L = 1\n",
        "dotted.py": "X = 1\n",
        "other_step.py": "import os\n",
        "data/template.j2": "hello\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    codedigest.clear_cache()
    yield root
    for name in list(sys.modules):
        if name.startswith("pkgx"):
            sys.modules.pop(name)
    codedigest.clear_cache()


def _digest(extra=()):
    codedigest.clear_cache()
    return codedigest.code_digest("pkgx.step", tuple(extra))


def test_the_closure_follows_every_import_form_transitively(package):
    names = [n for n, _ in codedigest.code_closure("pkgx.step")]
    assert set(names) == {"pkgx", "pkgx.step", "pkgx.top", "pkgx.deep", "pkgx.plain", "pkgx.rel",
                          "pkgx.sub", "pkgx.sub.lazy", "pkgx.dotted"}
    assert not any(n.startswith("pkgx") for n in sys.modules), "the closure must not import the code"


@pytest.mark.parametrize("edited", ["step.py", "top.py", "deep.py", "plain.py", "rel.py", "sub/lazy.py", "dotted.py"])
def test_editing_a_used_file_changes_the_digest(package, edited):
    before = _digest()
    (package / edited).write_text((package / edited).read_text() + "# edited\n")
    assert _digest() != before


def test_editing_an_unused_file_leaves_the_digest(package):
    before = _digest()
    (package / "other_step.py").write_text("import sys\n")
    assert _digest() == before


def test_code_modules_add_folders_and_modules_no_import_shows(package):
    before = _digest(["pkgx.data", "pkgx.other_step"])
    assert before != _digest()
    (package / "data" / "template.j2").write_text("changed\n")
    assert _digest(["pkgx.data", "pkgx.other_step"]) != before
    assert _digest(["pkgx.missing"]) != _digest()   # a name that is gone still counts, as missing


def test_the_digest_reads_content_not_times(package):
    before = _digest()
    text = (package / "deep.py").read_text()
    (package / "deep.py").write_text(text + "# x\n")
    (package / "deep.py").write_text(text)
    assert _digest() == before


# --- the project's own handlers --------------------------------------------------------

REGISTRY = Registry()
HANDLERS = {name: REGISTRY.load(name) for name in REGISTRY.names()}


def _closure(handler) -> set[str]:
    return {n for n, _ in codedigest.code_closure(handler.__module__)}


def test_a_steps_own_module_enters_only_its_own_fingerprint():
    """Editing one step's module re-runs that step and nothing else."""
    for name, handler in HANDLERS.items():
        for other_name, other in HANDLERS.items():
            if other_name != name and other.__module__ != handler.__module__:
                assert handler.__module__ not in _closure(other), (name, other_name)


@pytest.mark.parametrize("module, users", [
    ("handlers.inference.perf.harness", {"trt_test"}),
    ("handlers.training.audit.rules", {"script_gpu"}),
    ("handlers.environment.cuda_compat", {"cuda_setup"}),
    ("handlers.inference.trt.builder", {"trt_engine"}),
    ("handlers.training.ddp_worker", {"distributed"}),
])
def test_a_steps_helpers_enter_the_fingerprints_of_the_steps_that_use_them(module, users):
    using = {name for name, h in HANDLERS.items()
             if module in _closure(h) or module in h.code_modules}
    assert using == users


def test_the_shared_training_code_reaches_every_training_step():
    for name in ("script_gpu", "prototype", "distributed", "onnx_conv", "trt_profile", "trt_test"):
        handler = HANDLERS[name]
        closure = _closure(handler) | set(handler.code_modules)
        if name == "distributed":   # through the worker torchrun starts
            closure |= {n for n, _ in codedigest.code_closure("handlers.training.ddp_worker")}
        assert "handlers.ml.data" in closure or "handlers.ml.models" in closure, name


def test_handlers_have_no_import_circles():
    graph = nx.DiGraph()
    package = codedigest.module_path("handlers")
    for file in package.rglob("*.py"):
        rel = file.relative_to(package.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        source = file.read_text()
        for imported in codedigest.imported_names(source, name, rel.name == "__init__"):
            target = codedigest.module_path(imported)
            if imported.startswith("handlers.") and target is not None and target.suffix == ".py":
                graph.add_edge(name, imported)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles


def test_no_step_module_is_named_like_a_test_file():
    package = codedigest.module_path("handlers")
    assert not [f for f in package.rglob("*.py") if f.name.endswith("_test.py") or f.name.startswith("test_")]
