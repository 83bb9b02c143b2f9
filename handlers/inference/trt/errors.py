"""TensorRT problems the user fixes: a message and a hint, never a traceback."""
from __future__ import annotations

from handlers.ml.errors import MLError


class TrtError(MLError):
    """A TensorRT step cannot go on: missing tool, bad settings or profile, failed build or load."""
