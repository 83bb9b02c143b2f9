"""Files written under a temporary name beside them and renamed into place only when
complete: a crash or a failed check never leaves half a file where a reader looks. And
read back only when they are regular files (a FIFO put there would block the reader)."""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path, suffix: str = "", mode: int = 0o644):
    """Yields the temporary path to write; on success it becomes `path` with `mode` (not
    mkstemp's 0600), on an exception it is removed and `path` is left as it was."""
    import tempfile                      # not at import: readers need none of it (7 ms)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomically(path: Path, data: str | bytes | bytearray | memoryview, mode: int = 0o644) -> Path:
    """Text (UTF-8, "\\n" line ends) or any bytes-like buffer (a serialized TensorRT engine
    too), written whole or not at all."""
    with replaced_atomically(path, mode=mode) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8", newline="\n")
        else:
            tmp.write_bytes(data)
    return Path(path)


def read_regular(path: Path) -> bytes | None:
    """The bytes of `path` when it is a regular file (links followed), else None. The open
    does not block on a FIFO, and the check is made on the opened file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            return file.read()
        except OSError:                  # an I/O error: as unreadable as a missing file
            return None
