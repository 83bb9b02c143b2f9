"""atlas handlers: one module per step type, found through the `atlas.handlers` entry points.

Each module stays light at import time; frameworks (torch, TensorRT, DALI, CuPy) are
imported inside a handler's `run`, so validating and planning never load them.
"""
