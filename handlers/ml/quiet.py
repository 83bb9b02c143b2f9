"""Keep third-party chatter out of a step's log: the ONNX exporter logs every rewrite pass at
INFO and ONNX Runtime's calibrator prints progress to stdout. Both become debug lines."""
from __future__ import annotations

import contextlib
import io
import logging

CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "onnxruntime")


@contextlib.contextmanager
def quiet_tools(log: logging.Logger | None = None):
    saved = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    for name in saved:
        logging.getLogger(name).setLevel(logging.WARNING)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if log is not None:
            for line in buffer.getvalue().splitlines():
                if line.strip():
                    log.debug("%s", line.rstrip())
