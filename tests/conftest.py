"""Shared pytest configuration for atlas tests."""


def pytest_configure(config):
    # GPU tests are marked and skipped where no CUDA device exists (DESIGN.md, tests/).
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped where none exists")
