"""Files the steps hand on: written under a temporary name and renamed into place only when
complete: a crash or a failed check never leaves half a model where a later step looks."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path, suffix: str = ""):
    """Yields the temporary path to write; on success it becomes `path` (mode 0644, not
    mkstemp's 0600), on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

