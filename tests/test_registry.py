"""atlas.registry: handlers found through `atlas.handlers` entry points, imported lazily."""
from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap
from types import SimpleNamespace

import pytest

from atlas.errors import AtlasError
from atlas.handler import Handler
from atlas.registry import GROUP, HandlerLoadError, Registry

MISSING_MODULE = "atlas_test_no_such_module_9f3c"


def ep(name: str, value: str, dist: str | None = None) -> md.EntryPoint:
    point = md.EntryPoint(name=name, value=value, group=GROUP)
    if dist is not None:                 # as importlib.metadata does for an installed package
        point = point._for(SimpleNamespace(name=dist))
    return point


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write an importable module under tmp_path; forget it from sys.modules afterwards."""
    names = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in names:
        sys.modules.pop(name, None)


PLUGIN = """\
    from atlas.handler import Handler, Params

    IMPORTS = globals().get("IMPORTS", 0) + 1

    class ConvertParams(Params):
        opset: int = 17

    class Convert(Handler):
        name = "convert"
        Params = ConvertParams
        outputs = ("model.onnx",)

    class NotAHandler:
        name = "not_a_handler"

    def factory():
        return Convert
    """


# --- listing without importing -----------------------------------------------------------

def test_names_are_listed_without_importing():
    registry = Registry([ep("ghost", f"{MISSING_MODULE}:Ghost"), ep("alpha", f"{MISSING_MODULE}:Alpha")])
    assert registry.names() == ["alpha", "ghost"]
    assert "ghost" in registry
    assert "nope" not in registry
    assert MISSING_MODULE not in sys.modules


def test_listing_does_not_import_a_real_module(plugin_module):
    module = plugin_module("atlas_test_plugin_lazy", PLUGIN)
    registry = Registry([ep("convert", f"{module}:Convert")])
    assert registry.names() == ["convert"]
    assert "convert" in registry
    assert module not in sys.modules
    assert registry.load("convert").name == "convert"
    assert module in sys.modules


def test_load_of_a_missing_module_names_it():
    registry = Registry([ep("ghost", f"{MISSING_MODULE}:Ghost")])
    with pytest.raises(HandlerLoadError) as info:
        registry.load("ghost")
    err = info.value
    assert err.message == (f"handler 'ghost' ({MISSING_MODULE}:Ghost) failed to import: "
                           f"ModuleNotFoundError: No module named '{MISSING_MODULE}'")
    assert err.hint == "reinstall the package that provides it"
    assert isinstance(err, AtlasError)


def test_load_of_a_module_that_raises(plugin_module):
    module = plugin_module("atlas_test_plugin_broken", "raise RuntimeError('no CUDA at import')\n")
    registry = Registry([ep("broken", f"{module}:Broken")])
    with pytest.raises(HandlerLoadError) as info:
        registry.load("broken")
    assert info.value.message == (f"handler 'broken' ({module}:Broken) failed to import: "
                                  "RuntimeError: no CUDA at import")


def test_load_of_a_missing_attribute(plugin_module):
    module = plugin_module("atlas_test_plugin_attr", PLUGIN)
    registry = Registry([ep("convert", f"{module}:Nope")])
    with pytest.raises(HandlerLoadError) as info:
        registry.load("convert")
    assert info.value.message.startswith(f"handler 'convert' ({module}:Nope) failed to import: AttributeError")


def test_a_broken_entry_point_does_not_hide_the_others(plugin_module):
    module = plugin_module("atlas_test_plugin_mixed", PLUGIN)
    registry = Registry([ep("ghost", f"{MISSING_MODULE}:Ghost"), ep("convert", f"{module}:Convert")])
    with pytest.raises(HandlerLoadError):
        registry.load("ghost")
    assert registry.load("convert").outputs == ("model.onnx",)


def test_load_imports_once_and_caches_the_class(plugin_module):
    module = plugin_module("atlas_test_plugin_cache", PLUGIN)
    registry = Registry([ep("convert", f"{module}:Convert")])
    first = registry.load("convert")
    del sys.modules[module]              # a second import would make a new class
    assert registry.load("convert") is first


def test_load_of_an_unknown_name():
    registry = Registry([ep("ghost", f"{MISSING_MODULE}:Ghost"), ep("alpha", f"{MISSING_MODULE}:Alpha")])
    with pytest.raises(HandlerLoadError) as info:
        registry.load("gohst")
    assert info.value.message == "unknown handler 'gohst'"
    assert info.value.hint == "known handlers: alpha, ghost"


def test_load_of_an_unknown_name_in_an_empty_registry():
    with pytest.raises(HandlerLoadError) as info:
        Registry([]).load("x")
    assert info.value.hint == "known handlers: none installed"


# --- duplicate names ---------------------------------------------------------------------

def test_same_name_with_different_values_is_an_error_naming_both():
    with pytest.raises(HandlerLoadError) as info:
        Registry([ep("train", "pkg_a.handlers:Train"), ep("train", "pkg_b.train:Trainer")])
    err = info.value
    assert "pkg_a.handlers:Train" in err.message
    assert "pkg_b.train:Trainer" in err.message
    assert err.message.startswith("handler name 'train' is registered twice: ")
    assert err.hint == "uninstall one of the two packages, or rename one entry point"


def test_duplicate_error_names_both_distributions():
    with pytest.raises(HandlerLoadError) as info:
        Registry([ep("train", "pkg_a.handlers:Train", dist="pkg-a"),
                  ep("train", "pkg_b.train:Trainer", dist="pkg-b")])
    assert info.value.message == ("handler name 'train' is registered twice: pkg_a.handlers:Train "
                                  "(from pkg-a) and pkg_b.train:Trainer (from pkg-b)")


def test_duplicate_is_found_without_importing():
    with pytest.raises(HandlerLoadError):
        Registry([ep("x", f"{MISSING_MODULE}:A"), ep("x", f"{MISSING_MODULE}:B")])
    assert MISSING_MODULE not in sys.modules


def test_same_name_with_the_same_value_twice_is_fine(plugin_module):
    # e.g. one package seen twice on sys.path (an editable install and a wheel)
    module = plugin_module("atlas_test_plugin_twice", PLUGIN)
    registry = Registry([ep("convert", f"{module}:Convert", dist="pkg"),
                         ep("convert", f"{module}:Convert", dist="pkg")])
    assert registry.names() == ["convert"]
    assert registry.load("convert").name == "convert"


# --- what an entry point must point at ---------------------------------------------------

def test_entry_point_that_is_not_a_handler_class(plugin_module):
    module = plugin_module("atlas_test_plugin_not_handler", PLUGIN)
    registry = Registry([ep("not_a_handler", f"{module}:NotAHandler")])
    with pytest.raises(HandlerLoadError) as info:
        registry.load("not_a_handler")
    assert info.value.message == (f"entry point 'not_a_handler' ({module}:NotAHandler) "
                                  "is not an atlas Handler class")


@pytest.mark.parametrize("target", ["factory", "ConvertParams", "IMPORTS"])
def test_entry_point_pointing_at_a_function_or_other_object(plugin_module, target):
    module = plugin_module(f"atlas_test_plugin_{target.lower()}", PLUGIN)
    registry = Registry([ep("convert", f"{module}:{target}")])
    with pytest.raises(HandlerLoadError, match=r"is not an atlas Handler class$"):
        registry.load("convert")


def test_entry_point_whose_class_has_another_name(plugin_module):
    module = plugin_module("atlas_test_plugin_renamed", PLUGIN)
    registry = Registry([ep("onnx_export", f"{module}:Convert")])
    with pytest.raises(HandlerLoadError) as info:
        registry.load("onnx_export")
    err = info.value
    assert err.message == f"entry point 'onnx_export' points at handler 'convert' ({module}:Convert)"
    assert err.hint == "make the entry-point name and the class's `name` the same"


def test_the_handler_base_class_itself_is_rejected():
    registry = Registry([ep("base", "atlas.handler:Handler")])
    with pytest.raises(HandlerLoadError) as info:
        registry.load("base")
    assert info.value.message == "entry point 'base' points at handler '' (atlas.handler:Handler)"


def test_a_failed_load_is_not_cached(plugin_module):
    module = plugin_module("atlas_test_plugin_retry", PLUGIN)
    registry = Registry([ep("onnx_export", f"{module}:Convert")])
    for _ in range(2):
        with pytest.raises(HandlerLoadError):
            registry.load("onnx_export")


# --- in-memory registries ----------------------------------------------------------------

class Alpha(Handler):
    name = "alpha"


class Beta(Handler):
    name = "beta"


def test_from_classes():
    registry = Registry.from_classes(Beta, Alpha)
    assert registry.names() == ["alpha", "beta"]
    assert "alpha" in registry and "gamma" not in registry
    assert registry.load("beta") is Beta


def test_from_classes_reads_no_entry_points():
    assert Registry.from_classes().names() == []


# --- the installed entry points ----------------------------------------------------------

def test_real_entry_points_include_the_project_handlers():
    names = Registry().names()
    assert {"cuda_setup", "lib_test", "manual"} <= set(names)


@pytest.mark.parametrize("name", ["cuda_setup", "lib_test", "manual"])
def test_real_entry_points_load_matching_handler_classes(name):
    handler = Registry().load(name)
    assert issubclass(handler, Handler)
    assert handler.name == name


def test_loading_a_light_handler_does_not_import_torch():
    # DESIGN.md: atlas validate/plan never import torch; a handler module stays light
    import subprocess
    code = ("import sys; from atlas.registry import Registry; r = Registry(); "
            "[r.load(n) for n in ('cuda_setup', 'lib_test', 'manual')]; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'cupy', 'nvidia.dali', 'tensorflow') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
