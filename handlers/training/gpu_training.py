"""AG-DS-SCRIPTGPU-001: the chest X-ray model trained on the GPU, and the user's own
training scripts audited for GPU readiness.

(a) trains the project's model (ResNet-50, ImageNet weights, early layers frozen, new
    linear head) with AMP, channels_last, pinned memory and early stopping; the best
    checkpoint (`model.pt`) is what the ONNX export consumes. Without a CUDA device it
    trains on the CPU and says so.
(b) audits the scripts in `scripts` (model_training_scripts/ by default) with a concrete
    syntax tree: report, patched device-agnostic copy, unified diff (audit/).
"""
from __future__ import annotations


from pydantic import Field

from atlas.handler import Context, Handler, Result
from atlas.paths import ProjectPath
from handlers.ml.errors import MLError
from handlers.training.params import TrainParams


class ScriptGpuParams(TrainParams):
    scripts: ProjectPath = Field("model_training_scripts", description="folder of the user's training scripts to "
                                                                      "audit (inside the project)")
    audit: bool = True


def audit_scripts(ctx: Context, folder_name: str) -> tuple[str, list[str]]:
    """Run the audit into audit/; returns (summary, findings). Never fails the step:
    an audit that cannot run is itself a finding."""
    folder = ctx.project_root / folder_name
    if not folder.is_dir() or not any(folder.rglob("*.py")):
        why = f"audit: no Python scripts in {folder_name}/ (set params.scripts to your folder)"
        ctx.write_text("audit/report.md", f"# Script audit\n\n{why}\n")
        return "audit: no scripts", [why]
    try:
        from handlers.training.audit.folder import audit_folder, write_report
        result = audit_folder(folder)
    except ImportError as exc:
        why = f"audit skipped: {exc.name or 'libcst'} not installed (pip install 'atlas-runner[ml]')"
        ctx.write_text("audit/report.md", f"# Script audit\n\n{why}\n")
        return "audit skipped", [why]
    write_report(result, ctx.output("audit/report.md").parent, folder_name)
    counts = result.counts()
    for rule, n in sorted(counts.items()):
        ctx.metric(f"audit_{rule.replace('-', '_')}", n)
    ctx.metric("audit_findings", len(result.findings))
    findings = [f"audit: {f.file}:{f.line}:{f.column}: {f.rule}: {f.message}" for f in result.findings[:20]]
    findings += [f"audit: cannot parse {e}" for e in result.errors]
    fixed = sum(f.fixed for f in result.findings)
    summary = (f"audit: {len(result.findings)} GPU-readiness problems in {len(result.files)} scripts, "
               f"{fixed} patched (audit/changes.diff)")
    return summary, findings


class ScriptGpu(Handler):
    name = "script_gpu"
    version = "1"
    Params = ScriptGpuParams
    outputs = ("model.pt", "training.json", "audit/")
    requires = ("torch",)
    gpu_env = True
    project_keys = ("data", "model")

    @classmethod
    def watched_paths(cls, params: ScriptGpuParams) -> list[str]:
        return [params.scripts] if params.audit else []

    def run(self, ctx: Context) -> Result:
        params: ScriptGpuParams = ctx.params
        if params.audit:
            audit_summary, audit_findings = audit_scripts(ctx, params.scripts)
        else:
            audit_summary, audit_findings = "", []
            ctx.write_text("audit/report.md", "# Script audit\n\nDisabled (params.audit: false).\n")
        from handlers.ml.curves import training_charts
        from handlers.training.session import run_training
        try:
            run = run_training(params, ctx.project, ctx.project_root, ctx.output("model.pt"), ctx)
        except MLError as exc:
            return Result.failed(exc.message, exc.hint, audit_findings)
        ctx.write_json("training.json", run.summary())
        ctx.metric("train_images_per_s", run.fit.train_images_per_s, "img/s")
        for chart in training_charts(run.fit.history, run.fit.best_epoch):
            ctx.figure(chart)
        message = run.headline() + (f"; {audit_summary}" if audit_summary else "")
        return Result.succeeded(message, run.findings + audit_findings)
