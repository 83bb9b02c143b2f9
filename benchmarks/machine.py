"""What every benchmark records about where it ran: the machine, the git revision, and a
digest of the sources (to tell whether the code changed during a run)."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def git_revision() -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def source_digest(folders: tuple[str, ...] = ("atlas",)) -> str:
    """sha256 over the Python sources of `folders`."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            h.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def machine() -> dict:
    import socket

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib(),
    }


def parse_sizes(parser, text: str) -> list[int]:
    """--sizes 100,1000: positive step counts, or a usage error through `parser`."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes comma-separated integers, e.g. 100,1000")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs positive step counts")
    return sizes
