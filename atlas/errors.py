"""One error base for everything a user can cause or fix.

The CLI turns an AtlasError into `error: message` + `hint: ...` on stderr and the
error's exit code; nothing else in atlas prints tracebacks to the user.
"""
from __future__ import annotations

from dataclasses import dataclass

# Exit codes (DESIGN.md): 0 ok, 1 a step failed, 2 usage, 3 invalid manifests,
# 4 steps skipped under --strict, 5 another run holds the project, 6 the project's
# state cannot be written (permissions, read-only filesystem, full disk), 130 interrupted.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_STRICT_SKIP = 4
EXIT_BUSY = 5
EXIT_STORAGE = 6
EXIT_INTERRUPTED = 130


class AtlasError(Exception):
    """A user-facing error: a message and a hint naming the next thing to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(AtlasError):
    """Wrong command-line use: unknown task, bad option combination."""

    exit_code = EXIT_USAGE


class ProjectNotFound(UsageError):
    pass


class LockBusy(AtlasError):
    """Another `atlas run` holds the project lock."""

    exit_code = EXIT_BUSY


class StorageError(AtlasError):
    """The project's state (.atlas/) cannot be written: permissions, a read-only
    filesystem, a full disk. Nothing already stored is lost."""

    exit_code = EXIT_STORAGE


# errno values that mean "this path cannot be written", not a bug
_STORAGE_ERRNOS = {"EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT"}


def storage_error(exc: BaseException) -> StorageError | None:
    """The user-facing form of an OSError or SQLite error about writing the project's
    files; None for anything else (a real bug keeps its traceback)."""
    import errno
    import sys

    if isinstance(exc, OSError) and errno.errorcode.get(exc.errno or -1) in _STORAGE_ERRNOS:
        where = exc.filename or "the project's files"
        return StorageError(f"cannot write {where}: {exc.strerror}", _storage_hint(exc.errno))
    sqlite3 = sys.modules.get("sqlite3")     # an SQLite error comes only from a loaded sqlite3
    if sqlite3 is not None and isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "readonly" in text or "read-only" in text:
            return StorageError(f"cannot write the state store (.atlas/state.db): {text}",
                                "make .atlas/ and the files in it writable (chmod -R u+w .atlas); "
                                "status, show, history and report still read it")
        if "disk is full" in text or "disk I/O error" in text:
            return StorageError(f"cannot write the state store (.atlas/state.db): {text}",
                                "free space on the disk that holds .atlas/, then run again; nothing already "
                                "stored was lost")
        if "unable to open" in text:
            return StorageError(f"cannot open the state store (.atlas/state.db): {text}",
                                "check that .atlas/ exists and is readable and writable")
    return None


def _storage_hint(code: int | None) -> str:
    import errno

    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "free space on that disk (or raise the quota), then run again; nothing already stored was lost"
    if code == errno.EROFS:
        return "the filesystem is mounted read-only: run atlas on a copy of the project on a writable disk"
    return "make it writable (chmod u+w), or run atlas on a copy of the project you may write"


def _printable(text: str) -> str:
    """Control characters (a key made of `\\r`, say) escaped: one problem stays one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


@dataclass(frozen=True, order=True)
class ManifestProblem:
    """One validation finding, located as precisely as the YAML allows."""

    file: str
    line: int
    col: int
    message: str
    field: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        field = f" [{_printable(self.field)}]" if self.field else ""
        return f"{where}: {_printable(self.message)}{field}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "col": self.col,
                "message": self.message, "field": self.field}


class InvalidManifests(AtlasError):
    """Every problem found in tasks/, reported at once."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[ManifestProblem]) -> None:
        self.problems = sorted(problems)
        n = len(self.problems)
        super().__init__(
            f"{n} problem{'s' if n != 1 else ''} in the manifests",
            "fix the lines above, then run `atlas validate` again",
        )
