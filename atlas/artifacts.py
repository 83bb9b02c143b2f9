"""Step output folders: written under a temporary name, hashed, then renamed into place.

A step writes into .atlas/out/.tmp/<TASK>-<id>/. Only when it succeeded is that folder
renamed to .atlas/out/<TASK>/, so a killed or failed run never leaves half an output
where a later step would read it; the last good outputs stay until then.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from atlas.fingerprint import file_sha256


def out_root(state_dir: Path) -> Path:
    return state_dir / "out"


def final_dir(state_dir: Path, task: str) -> Path:
    return out_root(state_dir) / task


def temp_dir(state_dir: Path, task: str, step_run_id: int) -> Path:
    path = out_root(state_dir) / ".tmp" / f"{task}-{step_run_id}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def remove_temporaries(state_dir: Path, keep: set[str] = frozenset()) -> None:
    """Every step's unfinished output folder and spec file (only under the project lock,
    when no local step of this project can be running), except those named in `keep`:
    the folders of batch jobs that still run on a cluster."""
    tmp = out_root(state_dir) / ".tmp"
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for path in tmp.iterdir() if tmp.is_dir() else ():
        if path.name not in keep:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def missing_outputs(folder: Path, declared: tuple[str, ...]) -> list[str]:
    missing = []
    for name in declared:
        path = folder / name.rstrip("/")
        if name.endswith("/") and not path.is_dir() or not name.endswith("/") and not path.is_file():
            missing.append(name)
    return missing


def hash_folder(folder: Path) -> list[tuple[str, str, int]]:
    """(relative name, sha256, size) of every file, sorted; hidden temp files excluded."""
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and not path.is_symlink():
            entries.append((path.relative_to(folder).as_posix(), file_sha256(path), path.stat().st_size))
    return entries


def publish(tmp: Path, state_dir: Path, task: str) -> Path:
    """Swap the finished temporary folder in for the task's current outputs."""
    final = final_dir(state_dir, task)
    old = final.with_name(f".old-{task}-{os.getpid()}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def keep_failed(tmp: Path, state_dir: Path, task: str) -> Path:
    """Move a failed step's partial outputs aside for inspection (never where inputs are read)."""
    dest = out_root(state_dir) / ".failed" / task
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def input_digest(artifacts: list[dict], name: str) -> str | None:
    """Digest of one named output (a file, or every file under a folder) of a step run."""
    prefix = name.rstrip("/") + "/"
    chosen = sorted((a["name"], a["sha256"]) for a in artifacts if a["name"] == name.rstrip("/")
                    or a["name"].startswith(prefix))
    if not chosen:
        return None
    if len(chosen) == 1 and chosen[0][0] == name:
        return chosen[0][1]
    return hashlib.sha256("\n".join(f"{n} {h}" for n, h in chosen).encode()).hexdigest()
