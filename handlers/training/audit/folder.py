"""GPU-readiness audit of a folder of PyTorch training scripts, with a patch that keeps formatting.

The rules live in `rules` (libcst, imported on first use so that importing
this module never needs it); this module walks the folder, collects the results and
writes the report: report.md, report.json, changes.diff and patched/, a complete copy of
the scripts with the fixes applied. Columns are 1-based, as in `file:line:col` elsewhere.
"""

from __future__ import annotations

import ast
import difflib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atlas.atomic import write_atomically
from handlers.training.audit.findings import RULES, Finding

SKIP_DIRS = {"__pycache__", "venv", "env", "site-packages", "node_modules", "build", "dist"}
# Besides the scripts, patched/ gets the small files a script may read next to it.
COPY_SUFFIXES = {".txt", ".md", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".sh"}
COPY_MAX_BYTES = 1 << 20


@dataclass
class AuditResult:
    findings: list[Finding] = field(default_factory=list)
    patched: dict[str, str] = field(default_factory=dict)   # relpath -> new source (changed only)
    diff: str = ""
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    root: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)   # relpath -> original source

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.rule for f in self.findings))


def audit_source(source: str, relpath: str) -> tuple[list[Finding], str]:
    """Findings and patched source of one script; libcst.ParserSyntaxError if it doesn't parse."""
    from handlers.training.audit.rules import analyze
    return analyze(source, relpath)


def _walk(folder: Path, pattern: str) -> list[Path]:
    """Files under `folder`, sorted, outside hidden folders, caches and virtualenvs; a
    link that leads out of the folder is never read (see links_out)."""
    out = []
    inside = folder.resolve()
    for path in sorted(folder.rglob(pattern)):
        parts = path.relative_to(folder).parts
        if not path.is_file() or any(p.startswith(".") or p in SKIP_DIRS for p in parts[:-1]):
            continue
        if not path.resolve().is_relative_to(inside):
            continue
        if any((folder.joinpath(*parts[:i]) / "pyvenv.cfg").exists() for i in range(1, len(parts))):
            continue
        out.append(path)
    return out


def links_out(folder: Path) -> list[str]:
    """Files under `folder` that a symlink takes outside it: skipped, and said."""
    inside = folder.resolve()
    return [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*"))
            if p.is_symlink() and not p.resolve().is_relative_to(inside)]


def script_files(folder: Path) -> list[Path]:
    return _walk(folder, "*.py")


def audit_folder(folder: Path) -> AuditResult:
    """Audit every script in `folder`; a file that doesn't parse is an error, the rest go on.
    Raises ImportError when libcst is missing."""
    import libcst

    folder = Path(folder)
    result = AuditResult(root=folder)
    result.errors += [f"{rel}: a link out of {folder.name}/, not read" for rel in links_out(folder)]
    for path in script_files(folder):
        rel = path.relative_to(folder).as_posix()
        result.files.append(rel)
        try:
            source = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.errors.append(f"{rel}: unreadable: {exc}")
            continue
        result.sources[rel] = source
        try:
            findings, patched = audit_source(source, rel)
        except libcst.ParserSyntaxError as exc:
            result.errors.append(syntax_error(source, rel, exc))
            continue
        result.findings.extend(findings)
        if patched != source:
            result.patched[rel] = patched
    result.diff = "".join(unified_diff(result.sources[rel], new, rel)
                          for rel, new in sorted(result.patched.items()))
    return result


def syntax_error(source: str, rel: str, exc: Exception) -> str:
    """`rel:line:col: syntax error: ...`, placed by Python's own parser where it agrees (its
    positions and messages are the ones users know); libcst's where only libcst objects."""
    try:
        compile(source, rel, "exec", ast.PyCF_ONLY_AST)
    except SyntaxError as err:
        return f"{rel}:{err.lineno}:{err.offset or 1}: syntax error: {err.msg}"
    return f"{rel}:{exc.raw_line}:{exc.raw_column + 1}: syntax error: {exc.message}"


def unified_diff(old: str, new: str, rel: str) -> str:
    """A diff that `patch -p1` applies, "No newline at end of file" markers included."""
    lines = []
    for line in difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                     f"a/{rel}", f"b/{rel}"):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def _write(path: Path, data: str | bytes) -> None:
    """A temporary name in the same folder, then a rename: readers never see half a file."""
    write_atomically(path, data)


def render_markdown(result: AuditResult, folder_label: str) -> str:
    counts = result.counts()
    fixed = Counter(f.rule for f in result.findings if f.fixed)
    out = [f"# GPU-readiness audit of `{folder_label}`", "",
           f"{len(result.files)} script(s) scanned, {len(result.findings)} finding(s), "
           f"{sum(fixed.values())} fixed automatically, {len(result.patched)} file(s) patched.", "",
           "| rule | findings | patched | manual |", "|---|---:|---:|---:|"]
    for rule in RULES:
        n = counts.get(rule, 0)
        out.append(f"| `{rule}` | {n} | {fixed[rule]} | {n - fixed[rule]} |")
    if result.errors:
        out += ["", "## Files that could not be audited", ""]
        out += [f"- `{e}`" for e in result.errors]
    out += ["", "## Findings", ""]
    if not result.findings:
        out.append("None: the scripts already pick the device at run time.")
    for f in result.findings:
        out.append(f"- `{f.file}:{f.line}:{f.column}` {f.rule} — {f.message} — "
                   f"{f.fix if f.fixed else 'manual: not patched'}")
    out += ["", "## Using the patch", "",
            "`patched/` is a complete copy of the scripts with the fixes applied; "
            "`changes.diff` holds the same edits (`patch -p1 < changes.diff` inside the folder). "
            "The scripts pick `cuda` when `torch.cuda.is_available()` and the CPU otherwise.", ""]
    return "\n".join(out)


def write_report(result: AuditResult, out_dir: Path, folder_label: str) -> None:
    out_dir = Path(out_dir)
    _write(out_dir / "report.md", render_markdown(result, folder_label))
    data = {"folder": folder_label, "files": result.files, "errors": result.errors,
            "counts": result.counts(), "patched": sorted(result.patched),
            "findings": [asdict(f) for f in result.findings]}
    _write(out_dir / "report.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    _write(out_dir / "changes.diff", result.diff)
    patched_dir = out_dir / "patched"
    if patched_dir.exists():   # a file gone from the folder must not linger in the copy
        shutil.rmtree(patched_dir)
    for rel in result.files:
        if rel in result.patched:
            _write(patched_dir / rel, result.patched[rel])
        elif result.root is not None:
            _write(patched_dir / rel, (result.root / rel).read_bytes())
    if result.root is not None:
        for path in _walk(result.root, "*"):
            if path.suffix in COPY_SUFFIXES and path.stat().st_size <= COPY_MAX_BYTES:
                _write(patched_dir / path.relative_to(result.root), path.read_bytes())
