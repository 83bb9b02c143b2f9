"""Problems of the ML steps that the user fixes: a message and a hint, never a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class MLError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class DataError(MLError):
    """A data problem: the hint names the path and the fix."""


class DeviceError(MLError):
    """The asked-for device or precision is not available here."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM, or a runtime's own out-of-memory error told by its message
    (ONNX Runtime: "Failed to allocate memory", CUDA: "out of memory")."""
    torch = sys.modules.get("torch")   # never import torch just to classify an error
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate memory" in text


def release_device_memory() -> None:
    """Give cached CUDA memory back after an out-of-memory error (before a retry)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class ModelError(MLError):
    """Unknown architecture, weights that cannot be found or do not fit, a bad freeze block."""


class TrainingError(MLError):
    """Training produced nothing worth keeping (e.g. a loss that was never finite)."""


def failures_for_user_errors(run: Callable) -> Callable:
    """Decorator for Handler.run: an MLError (the user's to fix) ends the step as failed with
    its message and hint, instead of a traceback."""
    @functools.wraps(run)
    def wrapper(self, ctx):
        try:
            return run(self, ctx)
        except MLError as exc:
            from atlas.handler import Result
            return Result.failed(exc.message, exc.hint)
    return wrapper
