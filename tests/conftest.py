"""Shared pytest configuration for atlas tests.

Marked tests skip themselves where their hardware or library is missing, so one suite runs
everywhere: `gpu` needs a CUDA device, `tensorrt` needs the full `tensorrt` package
(builder included). Both run wherever those exist (`pytest -m gpu` on the GPU machine)."""
import importlib.util

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch
    return torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped where none exists")


def pytest_collection_modifyitems(config, items):
    needs = {"gpu": (_cuda_available, "no CUDA device"),
             "tensorrt": (lambda: importlib.util.find_spec("tensorrt") is not None, "tensorrt not installed")}
    found: dict[str, bool] = {}
    for item in items:
        for mark, (check, reason) in needs.items():
            if mark in item.keywords:
                if mark not in found:
                    found[mark] = check()
                if not found[mark]:
                    item.add_marker(pytest.mark.skip(reason=reason))
