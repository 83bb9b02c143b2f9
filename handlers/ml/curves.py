"""Training curves for the report: loss and validation scores per epoch, with the kept
(best) epoch and any overfitting stretch marked. Pure Python: the history is a list of
the per-epoch rows training records (epoch, train_loss, val_loss, val_accuracy, ...)."""
from __future__ import annotations

from atlas.charts import Chart, Mark, Series


def overfitting_epochs(history: list[dict], tolerance: float = 0.0) -> tuple[dict, dict] | None:
    """(best row, worst later row) when validation loss rose above its best while the
    training loss kept falling; None otherwise."""
    if len(history) < 2:
        return None
    best = min(history, key=lambda h: h["val_loss"])
    later = [h for h in history if h["epoch"] > best["epoch"]
             and h["val_loss"] > best["val_loss"] * (1 + tolerance) and h["train_loss"] < best["train_loss"]]
    if not later:
        return None
    return best, max(later, key=lambda h: h["val_loss"])


def training_charts(history: list[dict], best_epoch: int, name: str = "training", label: str = "") -> list[Chart]:
    """Two charts: losses (train, validation) and validation scores, per epoch."""
    if not history:
        return []
    epochs = [h["epoch"] for h in history]
    marks = [Mark(x=best_epoch, label=f"kept: epoch {best_epoch} (lowest validation loss)")] if best_epoch else []
    span = overfitting_epochs(history)
    if span:
        marks.append(Mark(x=span[0]["epoch"], x_end=span[1]["epoch"],
                          label=f"overfitting: validation loss rising, epochs {span[0]['epoch']}-{span[1]['epoch']}"))
    title = f" ({label})" if label else ""
    losses = Chart(name=f"{name}-loss", title=f"Loss per epoch{title}", x_label="epoch", y_label="loss",
                   series=[Series(label="training loss", x=epochs, y=[h.get("train_loss") for h in history]),
                           Series(label="validation loss", x=epochs, y=[h.get("val_loss") for h in history],
                                  style="dashed")],
                   marks=marks)
    scores = [(key, text) for key, text in (("val_accuracy", "validation accuracy"), ("val_auc", "validation AUC"),
                                            ("val_f1", "validation F1")) if any(key in h for h in history)]
    charts = [losses]
    if scores:
        charts.append(Chart(name=f"{name}-scores", title=f"Validation scores per epoch{title}", x_label="epoch",
                            y_label="score (0-1)",
                            series=[Series(label=text, x=epochs, y=[h.get(key) for h in history])
                                    for key, text in scores],
                            marks=marks[:1]))
    return charts
