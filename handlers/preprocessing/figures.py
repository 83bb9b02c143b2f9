"""The preprocessing steps' numbers as report charts: DALI against the DataLoader, CuPy
against NumPy, and the fused kernel against a device copy."""
from __future__ import annotations

from atlas.charts import Chart, Reference, Series


def dali_figures(speeds: dict, training: dict | None, workers: int) -> list[Chart]:
    stages = (("decode only", "dali_decode", "dataloader_decode"),
              ("training pipeline", "dali_pipeline", "dataloader_pipeline"))
    charts = [Chart(name="dali-loader", title="Images per second: DALI against the DataLoader", plot="bar",
                    x_label="what is timed", y_label="images/s", series=[
                        Series(label="DALI", x=[s for s, _, _ in stages], y=[speeds[d]["images_per_s"] for _, d, _ in stages]),
                        Series(label=f"DataLoader ({workers} workers)", x=[s for s, _, _ in stages],
                               y=[speeds[t]["images_per_s"] for _, _, t in stages])])]
    if training:
        modes = list(training["resident"])
        series = [Series(label="batches already on the GPU", x=modes,
                         y=[training["resident"][m]["images_per_s"] for m in modes]),
                  Series(label="fed by DALI", x=modes, y=[training["dali"][m]["images_per_s"] for m in modes])]
        if training.get("dataloader"):
            series.append(Series(label="fed by the DataLoader", x=modes,
                                 y=[training["dataloader"].get(m, {}).get("images_per_s") for m in modes]))
        charts.append(Chart(name="dali-training", title="Training throughput by input feed", plot="bar",
                            x_label="model", y_label="images/s", series=series, note=training.get("model", "")))
    return charts


def cupy_figures(reports: list[dict], kernel: dict, target: float) -> list[Chart]:
    ported = [r for r in reports if r["portable"] and r.get("speedup")]
    charts = []
    if ported:
        charts.append(Chart(name="cupy-speedup", title="CuPy speed-up over NumPy, per function", plot="bar",
                            x_label="function", y_label="times faster than NumPy (log)", log_y=10,
                            series=[Series(label="CuPy / NumPy", x=[r["name"] for r in ported],
                                           y=[r["speedup"] for r in ported])],
                            references=[Reference(y=1.0, label="as fast as NumPy")]))
    copy = kernel["copy"]["bandwidth_gbs"]
    names = list(kernel["variants"])
    charts.append(Chart(name="fused-kernel", title="Fused normalisation kernel against a device copy", plot="bar",
                        x_label="kernel variant", y_label="GB/s", series=[
                            Series(label="bandwidth", x=names, y=[kernel["variants"][n]["bandwidth_gbs"] for n in names])],
                        references=[Reference(y=copy, label=f"same-size device copy ({copy:,.0f} GB/s)"),
                                    Reference(y=target * copy, label=f"target: {target:.0%} of the copy")]))
    return charts
