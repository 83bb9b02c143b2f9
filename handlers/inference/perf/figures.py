"""The benchmark as report figures: throughput and latency by batch size (with and without
the host-to-device copy), latency percentiles at batch 1, accuracy against PyTorch FP32,
and the backend x batch table."""
from __future__ import annotations

from atlas.charts import Chart, Series, Table
from handlers.inference.perf.report import _h2d


def _lines(measurements, value) -> list[Series]:
    series: dict[tuple, Series] = {}
    for m in sorted(measurements, key=lambda m: (m.backend, m.h2d is True, m.batch)):
        key = (m.backend, m.h2d)
        label = m.backend if m.h2d is None else f"{m.backend} ({_h2d(m.h2d)})"
        s = series.setdefault(key, Series(label=label, x=[], y=[], style="dashed" if m.h2d else "solid"))
        s.x.append(m.batch)
        s.y.append(value(m))
    return list(series.values())


def benchmark_figures(result, accuracy: dict, device: str) -> list:
    ms = result.measurements
    if not ms:
        return []
    figures = [
        Chart(name="throughput", title=f"Throughput by batch size ({device})", x_label="batch size",
              y_label="images/s", log_x=2, series=_lines(ms, lambda m: m.throughput),
              note="dashed: the input copied from host memory on every call; solid: input already on the device"
              if any(m.h2d is not None for m in ms) else ""),
        Chart(name="latency-p99", title=f"Latency p99 by batch size ({device})", x_label="batch size",
              y_label="ms per batch (p99)", log_x=2, log_y=10, series=_lines(ms, lambda m: m.latency_ms["p99"])),
    ]
    first = sorted({m.batch for m in ms})[0]
    at_first = [m for m in ms if m.batch == first and m.h2d is not True]
    figures.append(Chart(
        name="latency-percentiles", title=f"Latency percentiles at batch {first}", plot="bar", x_label="backend",
        y_label="ms", series=[Series(label=p, x=[m.backend for m in at_first], y=[m.latency_ms[p] for m in at_first])
                              for p in ("p50", "p90", "p99")]))
    if accuracy:
        names = list(accuracy)
        series = [Series(label=label, x=names, y=[accuracy[n].get(key) for n in names])
                  for key, label in (("accuracy", "accuracy"), ("auc", "AUC"), ("agreement", "agreement with FP32"))]
        figures.append(Chart(name="accuracy", title="Accuracy on the test split against PyTorch FP32", plot="bar",
                             x_label="backend", y_label="score (0-1)", series=series))
    figures.append(Table(
        name="benchmark", title="Benchmark: backend x batch size", columns=[
            "backend", "batch", "input", "p50 ms", "p99 ms", "img/s", "iterations"],
        rows=[[m.backend, m.batch, _h2d(m.h2d), round(m.latency_ms["p50"], 3), round(m.latency_ms["p99"], 3),
               round(m.throughput, 1), m.iterations] for m in ms]))
    return figures


def measurement_line(m) -> str:
    lat = m.latency_ms
    return (f"{m.backend} batch {m.batch} ({_h2d(m.h2d)}): p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, "
            f"{m.throughput:,.1f} img/s over {m.iterations} iterations ({m.timer})")
