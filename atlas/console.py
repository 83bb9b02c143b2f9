"""What `atlas run` shows while it works: step lines, progress and log echo.

On a terminal progress is a rich bar; elsewhere (CI, pipes) plain lines at most every few
seconds. Step lines go to `out` (stdout, or stderr under --json); progress and echoed
step logs always go to stderr.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import IO

SYMBOLS = {"succeeded": "✓", "failed": "✗", "skipped": "-", "up-to-date": "=", "waiting": "…",
           "interrupted": "!", "run": "▶"}
PLAIN_PROGRESS_EVERY_S = 5.0


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class RunDisplay:
    def __init__(self, out: IO[str] | None = None, verbose: bool = False, tty: bool | None = None,
                 clock=time.monotonic) -> None:
        self.out = out or sys.stdout
        self._clock = clock          # for the plain-line throttle; tests pass a scripted one
        self.err = sys.stderr
        self.verbose = verbose
        self.tty = self.err.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._bars: dict[tuple, object] = {}
        self._last_plain: dict[tuple, float] = {}
        self._progress = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), console=Console(file=self.err), transient=True)

    def __enter__(self) -> "RunDisplay":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _print(self, text: str, stream: IO[str] | None = None) -> None:
        stream = stream or self.out
        with self._lock:
            if self._progress is not None and stream is self.err:
                self._progress.console.print(text, markup=False, highlight=False)
            else:
                print(text, file=stream, flush=True)

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}", self.err)

    def step_started(self, task: str, reason: str, attempt: int, attempts: int) -> None:
        again = f" (attempt {attempt}/{attempts})" if attempt > 1 else ""
        self._print(f"{SYMBOLS['run']} {task}: running — {reason}{again}")

    def step_ended(self, task: str, status: str, detail: str = "", duration: float | None = None,
                   findings: list[str] | None = None, hint: str = "") -> None:
        took = f" in {_fmt_duration(duration)}" if duration is not None else ""
        text = f"{SYMBOLS.get(status, '?')} {task}: {status}{took}" + (f" — {detail}" if detail else "")
        for finding in findings or []:
            text += f"\n    · {finding}"
        if hint:
            text += f"\n    hint: {hint}"
        self._print(text)

    def log(self, task: str, line: str) -> None:
        if self.verbose:
            self._print(f"  [{task}] {line}", self.err)

    def progress(self, event: dict) -> None:
        key = (event.get("task"), event.get("description"))
        if event["type"] == "progress_end":
            if self._progress is not None and key in self._bars:
                self._progress.remove_task(self._bars.pop(key))
            return
        total, done = event.get("total"), event.get("done", 0)
        fields = event.get("fields") or {}
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        label = f"{key[0]}: {key[1]}" + (f" {extra}" if extra else "")
        if self._progress is not None:
            with self._lock:
                if key not in self._bars:
                    self._bars[key] = self._progress.add_task(label, total=total)
                self._progress.update(self._bars[key], completed=done, description=label)
            return
        now = self._clock()
        finished = total is not None and done >= total
        if finished or now - self._last_plain.get(key, 0.0) >= PLAIN_PROGRESS_EVERY_S:
            self._last_plain[key] = now
            of = f"/{total:g}" if total is not None else ""
            self._print(f"  {label}: {done:g}{of}", self.err)
