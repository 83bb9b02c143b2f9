"""One error base for everything a user can cause or fix.

The CLI turns an AtlasError into `error: message` + `hint: ...` on stderr and the
error's exit code; nothing else in atlas prints tracebacks to the user.
"""
from __future__ import annotations

from dataclasses import dataclass

# Exit codes (DESIGN.md): 0 ok, 1 a step failed, 2 usage, 3 invalid manifests,
# 4 steps skipped under --strict, 130 interrupted.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_STRICT_SKIP = 4
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
        field = f" [{self.field}]" if self.field else ""
        return f"{where}: {self.message}{field}"

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
