"""Fingerprints: canonical JSON, what changed in words, and the handler's code version."""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from atlas import codedigest
from atlas import fingerprint as fp
from atlas.handler import Handler


def comps(**over) -> dict:
    base = {"handler": "train@1:abc", "params": {"lr": 0.1, "epochs": 3},
            "inputs": {"data": "d1", "model": "m1"}, "env": {"gpu": "H100", "driver": "550"}}
    return base | over


def test_canonical_is_independent_of_key_order():
    a = {"b": 1, "a": {"y": [1, 2], "x": None}}
    b = {"a": {"x": None, "y": [1, 2]}, "b": 1}
    assert fp.canonical(a) == fp.canonical(b) == '{"a":{"x":null,"y":[1,2]},"b":1}'
    assert fp.digest(a) == fp.digest(b)
    assert fp.fingerprint(a) == fp.fingerprint(b)


def test_canonical_keeps_list_order_and_unicode():
    assert fp.digest([1, 2]) != fp.digest([2, 1])
    assert fp.canonical({"title": "Görev"}) == '{"title":"Görev"}'


def test_digest_changes_with_any_value():
    assert fp.digest(comps()) != fp.digest(comps(params={"lr": 0.1, "epochs": 4}))


def test_file_sha256(tmp_path):
    import hashlib

    path = tmp_path / "blob.bin"
    data = b"x" * (3 * 1024 + 7)
    path.write_bytes(data)
    assert fp.file_sha256(path, chunk=1024) == hashlib.sha256(data).hexdigest()


def test_what_changed_nothing():
    assert fp.what_changed(comps(), comps()) is None


def test_what_changed_handler():
    assert fp.what_changed(comps(), comps(handler="train@1:def")) == "handler code changed"


def test_what_changed_params_names_keys_with_old_and_new_values():
    new = comps(params={"lr": 0.01, "epochs": 3, "optimizer": "adam"})
    assert fp.what_changed(comps(), new) == 'params changed (lr 0.1 -> 0.01, optimizer null -> "adam")'


def test_what_changed_params_shortens_long_values():
    new = comps(params={"lr": 0.1, "epochs": 3, "classes": ["normal", "pneumonia", "covid", "other"]})
    reason = fp.what_changed(comps(), new)
    assert reason.startswith("params changed (classes null -> ")
    assert "..." in reason and len(reason) < 80


def test_what_changed_inputs_names_each_changed_input():
    assert fp.what_changed(comps(), comps(inputs={"data": "d2", "model": "m1"})) == "input data changed"
    assert fp.what_changed(comps(), comps(inputs={"data": "d2", "model": "m2"})) == "input data, model changed"
    assert fp.what_changed(comps(), comps(inputs={"data": "d1"})) == "input model changed"


def test_what_changed_environment():
    new = comps(env={"gpu": "H100", "driver": "560"})
    assert fp.what_changed(comps(), new) == "environment changed (driver 550 -> 560)"


def test_what_changed_env_from_null_to_set():
    reason = fp.what_changed(comps(env=None), comps(env={"gpu": "H100"}))
    assert reason.startswith("environment changed (gpu ") and reason.endswith(" -> H100)")


def test_what_changed_reports_the_first_component_in_order():
    new = comps(handler="train@2:zzz", params={"lr": 1}, inputs={}, env={})
    assert fp.what_changed(comps(), new) == "handler code changed"
    new = comps(params={"lr": 1}, inputs={}, env={})
    assert fp.what_changed(comps(), new).startswith("params changed")


def test_components_sorts_inputs_and_keeps_params():
    class H(Handler):
        name = "h"

    c = fp.components(fp.handler_version(H), {"a": 1}, {"z": "1", "a": None}, None)
    assert list(c) == ["handler", "params", "inputs", "env"]
    assert list(c["inputs"]) == ["a", "z"]
    assert c["params"] == {"a": 1} and c["env"] is None
    assert c["handler"].startswith("h@1:")


@pytest.fixture
def temp_module(tmp_path, monkeypatch):
    name = "atlas_fp_probe_handler"
    path = tmp_path / f"{name}.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    codedigest.clear_cache()
    yield name, path
    sys.modules.pop(name, None)
    codedigest.clear_cache()


HANDLER_SRC = """
from atlas.handler import Handler, Result

class Probe(Handler):
    name = "probe"
    version = "{version}"

    def run(self, ctx):
        return Result.succeeded({message!r})
"""


def test_handler_version_changes_when_the_module_source_changes(temp_module):
    name, path = temp_module
    path.write_text(textwrap.dedent(HANDLER_SRC.format(version="1", message="a")))
    module = importlib.import_module(name)
    first = fp.handler_version(module.Probe)
    assert first.startswith("probe@1:")
    digest = first.split(":", 1)[1]
    assert len(digest) == 12 and digest != "unknown"

    assert fp.handler_version(module.Probe) == first  # stable while the file is the same

    path.write_text(textwrap.dedent(HANDLER_SRC.format(version="1", message="b")))
    assert fp.handler_version(module.Probe) == first  # cached for the life of the process
    codedigest.clear_cache()
    second = fp.handler_version(module.Probe)
    assert second.startswith("probe@1:") and second != first

    # same source again: same digest (content, not mtime)
    path.write_text(textwrap.dedent(HANDLER_SRC.format(version="1", message="a")))
    codedigest.clear_cache()
    assert fp.handler_version(module.Probe) == first


def test_handler_version_includes_the_declared_version(temp_module):
    name, path = temp_module
    path.write_text(textwrap.dedent(HANDLER_SRC.format(version="7", message="a")))
    module = importlib.import_module(name)
    assert fp.handler_version(module.Probe).startswith("probe@7:")


def test_a_changed_handler_version_is_reported_as_handler_code_changed(temp_module):
    name, path = temp_module
    path.write_text(textwrap.dedent(HANDLER_SRC.format(version="1", message="a")))
    module = importlib.import_module(name)
    old = fp.components(fp.handler_version(module.Probe), {}, {}, None)
    path.write_text(textwrap.dedent(HANDLER_SRC.format(version="1", message="changed")))
    codedigest.clear_cache()
    new = fp.components(fp.handler_version(module.Probe), {}, {}, None)
    assert fp.fingerprint(old) != fp.fingerprint(new)
    assert fp.what_changed(old, new) == "handler code changed"
