"""A file's signature, as make, ninja and DVC judge files: it is unchanged while the
file's mtime, ctime, size and inode are. Links are followed, as reading the file does."""
from __future__ import annotations

import os


def of_stat(info: os.stat_result) -> list[int]:
    return [info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino]


def of_path(path: str | os.PathLike) -> list[int] | None:
    """None when it cannot be stat()ed (missing, or a link to nothing)."""
    try:
        return of_stat(os.stat(path))
    except OSError:
        return None
