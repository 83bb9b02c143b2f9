"""The child side of a step: `python -m atlas.worker SPEC.json`.

Runs one handler in its own process so that a crash, a hang or a CUDA error cannot take
the runner down. Metrics, progress and the result go to the parent as JSON lines on the
file descriptor named in the spec; stdout and stderr are the step's log.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from atlas.handler import Context, Handler, Result


def load_handler(ref: str) -> type[Handler]:
    module, _, name = ref.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def watch_lifeline(fd: int) -> None:
    """Kill this step's whole process group when the runner dies: its end of the
    lifeline closes, and the read below returns."""
    def wait() -> None:
        try:
            while os.read(fd, 64):
                pass
        except OSError:
            pass
        os.killpg(os.getpgrp(), signal.SIGKILL)
    threading.Thread(target=wait, name="atlas-lifeline", daemon=True).start()


def main(spec_path: str, *, events_fd: int | None = None, lifeline_fd: int | None = None) -> int:
    """Run the step the spec names. A forked child (atlas.forkserver) passes the pipes it
    received, whose numbers differ from the ones the runner wrote into the spec."""
    spec = json.loads(Path(spec_path).read_text())
    lifeline = lifeline_fd if lifeline_fd is not None else spec.get("lifeline_fd")
    if lifeline is not None:
        watch_lifeline(lifeline)
    if spec.get("events_path"):          # a Slurm job: the runner reads the file as it grows
        stream = open(spec["events_path"], "a", buffering=1, encoding="utf-8")
    else:
        stream = os.fdopen(events_fd if events_fd is not None else spec["events_fd"], "w",
                           buffering=1, encoding="utf-8")
    lock = threading.Lock()

    def emit(event: dict) -> None:
        with lock:
            stream.write(json.dumps(event, default=str) + "\n")

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger(f"atlas.{spec['task']}")
    try:
        handler = load_handler(spec["handler_ref"])
        ctx = Context(task_id=spec["task"], params=handler.Params.model_validate(spec["params"]),
                      inputs={k: Path(v) if v else None for k, v in spec["inputs"].items()},
                      output_dir=Path(spec["output_dir"]), project_root=Path(spec["project_root"]),
                      project=spec["project"], devices=spec["devices"], emit=emit, log=log)
        result = handler().run(ctx)
        if not isinstance(result, Result):
            result = Result.failed(f"handler returned {type(result).__name__}, not a Result",
                                   "a handler's run() must return atlas.handler.Result")
    except Exception as exc:  # the traceback belongs in the step's log, not on the user's terminal
        traceback.print_exc()
        result = Result.failed(f"{type(exc).__name__}: {exc}",
                               f"the traceback is in the step's log: atlas show {spec['task']}")
    sys.stdout.flush()
    sys.stderr.flush()
    emit({"type": "result", **result.as_dict()})
    stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
