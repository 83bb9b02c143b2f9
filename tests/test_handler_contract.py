"""The contract every registered handler must keep (DESIGN.md, "The handler contract")."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from atlas.handler import Handler, Params
from atlas.probe import CAPABILITIES
from atlas.registry import Registry

REGISTRY = Registry()
NAMES = REGISTRY.names()
HEAVY = ("torch", "torchvision", "tensorrt", "nvidia.dali", "cupy", "onnxruntime", "tensorflow", "pycuda")


def test_the_project_registers_its_handlers():
    assert {"cuda_setup", "lib_test", "manual"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_declarations(name):
    handler = REGISTRY.load(name)
    assert issubclass(handler, Handler) and handler.name == name
    assert isinstance(handler.version, str) and handler.version
    assert issubclass(handler.Params, Params)
    assert all(isinstance(o, str) and o and not o.startswith("/") for o in handler.outputs)
    assert set(handler.requires) <= set(CAPABILITIES), handler.requires
    assert handler.run is not Handler.run, "run() must be implemented"
    assert handler.__doc__ or sys.modules[handler.__module__].__doc__, "say what the step does"


@pytest.mark.parametrize("name", NAMES)
def test_params_have_defaults_and_reject_unknown_keys(name):
    params_model = REGISTRY.load(name).Params
    params_model()                                   # a manifest may omit params entirely
    with pytest.raises(ValidationError) as err:
        params_model.model_validate({"no_such_param_xyz": 1})
    assert err.value.errors()[0]["type"] == "extra_forbidden"
    json.dumps(params_model().model_dump(mode="json"))   # params are fingerprinted as JSON


@pytest.mark.parametrize("name", NAMES)
def test_importing_a_handler_loads_no_framework(name):
    module = REGISTRY.load(name).__module__
    code = (f"import sys, {module}; heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
            "print(heavy); assert not heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"{module} imports a framework at import time: {out.stdout}{out.stderr}"
