"""atlas.probe: this machine's probe finds each field when it is first read."""
from __future__ import annotations

import dataclasses

import pytest

from atlas import probe
from atlas.planner import missing_capabilities
from atlas.probe import CAPABILITIES, HasCapability, Hints, MachineProbe, Probe


@pytest.fixture
def counted(monkeypatch):
    """The probe's finders replaced by fakes that count their calls."""
    calls: dict[str, int] = {}

    def fake(name, value):
        def found(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return value
        monkeypatch.setattr(probe, name, found)

    gpu = probe.Gpu(0, "NVIDIA GeForce RTX 3060", 12288, "8.6", "581.57")
    fake("query_gpus", ([gpu], None))
    fake("cuda_driver_version", "13.0")
    fake("nvcc_version", "13.0")
    fake("torch_cuda_build", "13.0")
    fake("cudnn_version", "91002")
    fake("package_version", "1.0")
    return calls


def test_every_field_has_a_finder():
    assert set(probe._FINDERS) == {f.name for f in dataclasses.fields(Probe)}


def test_nothing_is_found_until_a_field_is_read(counted):
    found = MachineProbe()
    assert counted == {}
    assert found.nvcc == "13.0" and counted == {"nvcc_version": 1}
    assert found.nvcc == "13.0" and counted == {"nvcc_version": 1}          # kept, not found again
    assert found.driver == "581.57" and found.gpus[0].name.endswith("3060")  # one nvidia-smi call for both
    assert counted["query_gpus"] == 1


def test_the_planner_asks_only_for_the_capabilities_steps_require(counted):
    found = MachineProbe()
    has = HasCapability(found)
    assert missing_capabilities((), has) == [] and counted == {}
    assert missing_capabilities(("torch",), has) == [] and set(counted) == {"package_version"}
    assert "nvcc_version" not in counted and "query_gpus" not in counted
    assert missing_capabilities(("cuda", "nvcc", "no_such_capability"), has) == ["no_such_capability"]
    hints = Hints(found)
    assert "torch_cuda_build" not in counted                 # hints are worked out when asked
    assert hints["dali"] == probe.dali_install_hint("13") and "dali" in dict(hints)


def test_a_machine_probe_read_in_full_holds_what_an_eager_probe_holds(counted):
    lazy = MachineProbe()
    eager = Probe(**{f.name: getattr(MachineProbe(), f.name) for f in dataclasses.fields(Probe)})
    assert lazy.as_dict() == eager.as_dict()
    assert lazy.capabilities() == eager.capabilities() == {c for c in CAPABILITIES if eager.has(c)}
    assert lazy.gpu_environment() == eager.gpu_environment() and lazy.hints() == eager.hints()
