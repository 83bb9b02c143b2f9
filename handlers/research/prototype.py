"""AG-DS-PROTOTYPE-001: a new architecture prototyped on a small subset and compared with
the ResNet-50 baseline trained the same way on the same images.

The prototype (DenseNet-121 as in CheXNet by default; EfficientNet-B0, ConvNeXt-Tiny or
any torchvision classifier by name) gets its model definition from the shared builder
(new linear head), the shared training loop, and the loss chosen here (focal or
class-weighted cross-entropy). The baseline is the project's model (model.arch, with its
freeze setting), so the table answers "is the new model better than what we have?".
"""
from __future__ import annotations

from pydantic import Field

from atlas.charts import Chart, Series
from atlas.handler import Context, Handler, Result
from handlers.ml.errors import MLError
from handlers.training.params import TrainParams

ROWS = ("accuracy", "auc", "f1", "sensitivity", "specificity")


class PrototypeParams(TrainParams):
    arch: str | None = Field("densenet121", description="the prototype: densenet121, efficientnet_b0, "
                                                        "convnext_tiny, or any torchvision classifier")
    freeze_until: str | None = Field("none", description="prototype's frozen blocks ('none' = fine-tune all)")
    loss: str = Field("focal", pattern="^(cross_entropy|focal)$")
    epochs: int = Field(3, ge=1)
    subset_per_class: int | None = Field(40, ge=1, description="train/val images per class (a small subset)")
    baseline: bool = Field(True, description="also train the project's model on the same subset")


def _row(label: str, run) -> dict:
    return {"model": label, "arch": run.built.arch, "weights": run.built.weights.used,
            "trainable_params": run.built.trainable_params, "total_params": run.built.total_params,
            "best_epoch": run.fit.best_epoch, "epochs_run": len(run.fit.history),
            "train_images_per_s": run.fit.train_images_per_s,
            "seconds": sum(h["epoch_seconds"] for h in run.fit.history),
            **{k: run.fit.test.get(k) for k in ROWS}}


def comparison_chart(rows: list[dict]) -> Chart:
    """Prototype against the project's own model on the test split."""
    return Chart(name="comparison", title="Prototype against the baseline (test split)", plot="bar",
                 x_label="metric", y_label="score (0-1)",
                 series=[Series(label=f"{r['model']}: {r['arch']}", x=list(ROWS), y=[r.get(k) for k in ROWS])
                         for r in rows])


def loss_label(loss: str, class_weighted: bool) -> str:
    """What the loss really was: the name and whether class weights entered it."""
    return f"{'class-weighted ' if class_weighted else ''}{loss}"


def comparison_markdown(rows: list[dict], synthetic: bool, subset: int | None, loss: str,
                        baseline_loss: str | None = None) -> str:
    head = "| model | arch | weights | trainable params | best epoch | " + " | ".join(ROWS) + " | img/s |"
    lines = ["# Prototype vs baseline", "",
             f"Same images for both ({'SYNTHETIC DATA, ' if synthetic else ''}"
             f"{f'{subset} per class' if subset else 'all'} in train/val, full test split); loss: prototype {loss}"
             + (f", baseline {baseline_loss} (as the project trains it)" if baseline_loss else "") + ".", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        scores = " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else "-" for k in ROWS)
        lines.append(f"| {r['model']} | {r['arch']} | {r['weights']} | {r['trainable_params']:,} | "
                     f"{r['best_epoch']}/{r['epochs_run']} | {scores} | {r['train_images_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


class Prototype(Handler):
    name = "prototype"
    version = "1"
    Params = PrototypeParams
    outputs = ("model.pt", "prototype.json", "comparison.md")
    requires = ("torch",)
    gpu_env = True
    project_keys = ("data", "model")

    def run(self, ctx: Context) -> Result:
        params: PrototypeParams = ctx.params
        from handlers.ml.curves import training_charts
        from handlers.training.session import run_training
        try:
            proto = run_training(params, ctx.project, ctx.project_root, ctx.output("model.pt"), ctx)
            runs = [("prototype", proto)]
            if params.baseline:
                # the project's own model, same data and training settings
                base_params = params.model_copy(update={"arch": None, "weights": None, "freeze_until": None,
                                                        "loss": "cross_entropy"})
                base = run_training(base_params, ctx.project, ctx.project_root, ctx.output("baseline.pt"),
                                    ctx, data=proto.data, placement=proto.placement)
                runs.append(("baseline", base))
        except MLError as exc:
            return Result.failed(exc.message, exc.hint)
        rows = [_row(label, run) for label, run in runs]
        for label, run in runs:
            for chart in training_charts(run.fit.history, run.fit.best_epoch, name=label,
                                         label=f"{label}: {run.built.arch}"):
                ctx.figure(chart)
        if len(rows) == 2:
            ctx.figure(comparison_chart(rows))
        ctx.write_json("prototype.json", {"rows": rows, "runs": {label: run.summary() for label, run in runs}})
        baseline_loss = loss_label("cross_entropy", params.class_weighted) if params.baseline else None
        ctx.write_text("comparison.md", comparison_markdown(rows, proto.data.synthetic, params.subset_per_class,
                                                            loss_label(params.loss, params.class_weighted),
                                                            baseline_loss))
        message = proto.headline()
        if len(rows) == 2:
            p, b = rows
            message += (f"; baseline {b['arch']}: AUC {b['auc']:.3f}, F1 {b['f1']:.3f} "
                        f"(prototype AUC {p['auc'] - b['auc']:+.3f})")
        findings = proto.findings + [f"baseline: {f}" for f in runs[-1][1].findings if len(runs) == 2
                                     and f not in proto.findings]
        return Result.succeeded(message, findings)
