"""Following a file that another process (or another machine) appends lines to."""
from __future__ import annotations

from pathlib import Path
from typing import Callable


class FileTail:
    """Hands each new complete line of `path` to `sink`; a partial last line waits for the
    rest (or for `read(final=True)`). A file that does not exist yet has no lines."""

    def __init__(self, path: Path, sink: Callable[[str], None]) -> None:
        self.path, self.sink, self.offset, self.rest = path, sink, 0, b""

    def read(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        if final and self.rest:
            lines.append(self.rest)
            self.rest = b""
        for raw in lines:
            self.sink(raw.decode("utf-8", "replace").rstrip("\r"))
