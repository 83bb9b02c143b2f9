"""Reading one manifest file within bounds: only a regular file, at most
MAX_MANIFEST_BYTES, UTF-8, YAML within atlas.yamlpos's bounds. Many of them are read on
two cores (atlas.two_cores). Imports neither pydantic nor networkx: a cold load starts
reading before it imports them.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Iterable, Protocol

from atlas import signature, two_cores
from atlas.located import Located
from atlas.project import DEFAULTS_FILE, TASKS_DIR

# A manifest is one or two KB, and tasks/project.yaml with the hierarchy of 12 tasks is 8 KB:
# the bound stops a runaway file (or a link to /dev/zero) long before it costs anything.
MAX_MANIFEST_BYTES = 256 * 1024


# what reading one manifest found: the signature of the stat() its read was checked by
# (atlas.signature; None when that failed) and its YAML (None when it has a problem)
Read = tuple[list[int] | None, Located | None]


class Problems(Protocol):
    def add(self, file: str, pos: tuple[int, int], message: str, path: tuple = ()) -> None: ...


class _Count:
    def __init__(self) -> None:
        self.problems = 0

    def add(self, file: str, pos: tuple[int, int], message: str, path: tuple = ()) -> None:
        self.problems += 1


def manifest_paths(root: Path, names: Iterable[str] | None = None) -> list[str]:
    """The manifests in tasks/ (not the defaults), by name, as paths; `names`: the names in
    tasks/ when the caller has listed it already (a listing of 2,000 files costs 10 ms).
    Plain strings: a load needs only each one's name, and 2,000 Path objects (made,
    hashed, asked for their name) cost a cold load 10 ms on one core."""
    folder = os.path.join(root, TASKS_DIR)
    if names is None:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries]
    # ".yaml" alone is a hidden file with no suffix, as pathlib sees it: not a manifest
    found = sorted(name for name in names if name.endswith((".yaml", ".yml"))
                   and name not in (".yaml", ".yml", DEFAULTS_FILE))
    return [os.path.join(folder, name) for name in found]


def stem(name: str) -> str:
    """A manifest's file name without its suffix (as Path.stem): its task ID."""
    return os.path.splitext(name)[0]


def read_all(paths: list[str] | list[Path], before: Callable[[], object] | None = None,
             then: Callable[[int, Read], object] | None = None) -> list[Read]:
    """Each manifest's signature and YAML (see Read; reading one with a problem again
    with `read` reports it); on two cores where there are many, `before` run meanwhile,
    and `then(index, read)` for each one as it comes in (see two_cores.map_items). The
    signature is taken before the file is opened, as the project cache needs: a later
    edit makes it differ."""
    return two_cores.map_items(_read_cleanly, paths, before=before, then=then)


def _read_at_most(fd: int, expected: int, limit: int) -> bytes:
    """Up to `limit` bytes of the file, read until its end. The first read asks for what
    stat() found plus one byte (a file that grew shows it), later ones for at most 16 KB:
    asking for `limit` at once allocates a 256 KB buffer per file, which cost a cold load
    of 2,000 manifests 35-50 ms of page faults on a 2-core VM."""
    chunks = []
    total = 0
    want = min(expected + 1, limit)
    while total < limit:
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = min(limit - total, 16 * 1024)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_cleanly(path: str | Path) -> Read:
    count = _Count()
    info, located = _read(path, f"{TASKS_DIR}/{os.path.basename(path)}", count)
    return (None if info is None else signature.of_stat(info)), (None if count.problems else located)


def read(path: str | Path, rel: str, out: Problems) -> Located | None:
    """The YAML of the manifest at `path` (`rel` in messages); None when it cannot be
    read, its problems added to `out`."""
    return _read(path, rel, out)[1]


def _read(path: str | Path, rel: str, out: Problems) -> tuple[os.stat_result | None, Located | None]:
    # Only a regular file, and at most MAX_MANIFEST_BYTES + 1 bytes of it. stat() follows
    # links as open() would; a FIFO is never opened (that blocks until a writer comes).
    data = b""
    info = None
    try:
        info = os.stat(path)
        mode = info.st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a character device" if stat.S_ISCHR(mode)
                    else "a block device" if stat.S_ISBLK(mode) else "a special file")
            out.add(rel, (1, 1), f"not a regular file ({kind})")
            return info, None
        if info.st_size <= MAX_MANIFEST_BYTES:
            # O_NONBLOCK: should the path become a FIFO after stat(), open() still returns
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    out.add(rel, (1, 1), "not a regular file (it was replaced while being read)")
                    return info, None
                data = _read_at_most(fd, info.st_size, MAX_MANIFEST_BYTES + 1)
            finally:
                os.close(fd)
    except OSError as exc:
        out.add(rel, (1, 1), f"cannot read the file: {exc.strerror or exc}")
        return info, None
    limit_kb = MAX_MANIFEST_BYTES // 1024
    if info.st_size > MAX_MANIFEST_BYTES:
        out.add(rel, (1, 1), f"manifest is {-(-info.st_size // 1024):,} KB; the limit is {limit_kb} KB")
        return info, None
    if len(data) > MAX_MANIFEST_BYTES:
        out.add(rel, (1, 1), f"manifest is over {limit_kb} KB (it grew while being read); "
                f"the limit is {limit_kb} KB")
        return info, None
    from atlas import yamlpos      # here: the process that only checks what the other core read needs none

    try:
        # newlines translated as read_text() does (\r\n and \r become \n)
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        located = yamlpos.load(text)
    except UnicodeDecodeError as exc:
        out.add(rel, (1, 1), f"not UTF-8 text: {exc.reason}")
        return info, None
    except yamlpos.YamlSyntaxError as exc:
        out.add(rel, (exc.line, exc.col), exc.message)
        return info, None
    for dup_path, pos in located.duplicates:
        out.add(rel, pos, f"duplicate key {dup_path[-1]!r}", dup_path)
    if not isinstance(located.data, dict):
        out.add(rel, (1, 1), "a manifest must be a YAML mapping (key: value lines)")
        return info, None
    return info, located
