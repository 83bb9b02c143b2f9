"""`manual`: a human step (literature review, sign-off) that waits until `atlas done`.

The runner never executes it; `atlas done TASK --note ...` calls `run` in-process to
keep the checklist and the evidence files (copied, with their digests) as outputs.
Editing the checklist or an evidence file afterwards makes the step wait again.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field

from atlas.handler import Context, Handler, Params, Result
from atlas.paths import ProjectPath, resolve_inside


class ManualParams(Params):
    instructions: str = Field("", description="what the person has to do")
    checklist: list[str] = Field(default_factory=list, description="items to tick before `atlas done`")
    evidence: list[ProjectPath] = Field(default_factory=list,
                                description="files (relative to the project) that prove the work")


class Manual(Handler):
    name = "manual"
    version = "1"
    Params = ManualParams
    outputs = ("checklist.md",)
    manual = True

    @classmethod
    def watched_paths(cls, params: ManualParams) -> list[str]:
        return list(params.evidence)

    def run(self, ctx: Context) -> Result:
        params: ManualParams = ctx.params  # type: ignore[assignment]
        missing = [rel for rel in params.evidence if not (ctx.project_root / rel).is_file()]
        if missing:
            return Result.failed(f"evidence file(s) missing: {', '.join(missing)}",
                                 f"create them, or edit params.evidence in tasks/{ctx.task_id}.yaml")
        lines = [f"# {ctx.task_id}", ""]
        if params.instructions:
            lines += [params.instructions.strip(), ""]
        lines += [f"- [x] {item}" for item in params.checklist]
        if params.evidence:
            lines += ["", "## Evidence", ""] + [f"- `{rel}` (copied to evidence/)" for rel in params.evidence]
        ctx.write_text("checklist.md", "\n".join(lines) + "\n")
        for rel in params.evidence:
            dest = ctx.output(f"evidence/{Path(rel).name}")
            shutil.copyfile(resolve_inside(ctx.project_root, rel), dest)    # checked again: links may change
        return Result.succeeded(f"{len(params.checklist)} checklist item(s), {len(params.evidence)} evidence file(s)")
