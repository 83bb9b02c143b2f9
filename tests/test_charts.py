"""Figure specs (atlas.charts) and the handlers' figures, built from recorded results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from atlas.charts import Chart, Series, Table, as_table, cell_text, parse

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
GPU_PREPROCESSING = RESULTS / "gpu-preprocessing-h200-2026-12-01"


def test_specs_are_checked_and_survive_a_round_trip():
    chart = Chart(name="c", title="t", x_label="x", y_label="y", series=[Series(label="s", x=[1, 2], y=[0.5, None])])
    assert parse(json.loads(json.dumps(chart.model_dump(mode="json")))) == chart
    table = Table(name="t", title="t", columns=["a", "b"], rows=[[1, "x"]])
    assert parse(table.model_dump(mode="json")) == table
    with pytest.raises(ValidationError, match="2 x values but 1 y values"):
        Series(label="s", x=[1, 2], y=[1.0])
    with pytest.raises(ValidationError, match="row 0 has 1 cells for 2 columns"):
        Table(name="t", title="t", columns=["a", "b"], rows=[[1]])
    with pytest.raises(ValidationError):
        Chart(name="Bad Name!", title="t", x_label="x", y_label="y", series=[Series(label="s", x=[1], y=[1.0])])
    with pytest.raises(ValidationError, match="base is 2 or more"):
        Chart(name="c", title="t", x_label="x", y_label="y", log_x=1, series=[Series(label="s", x=[1], y=[1.0])])
    assert Series(label="s", x=[1], y=[float("nan")]).y == [None]          # not finite: a gap, stored as null


def test_a_chart_as_a_table_has_a_row_per_x_and_a_column_per_series():
    chart = Chart(name="c", title="t", x_label="batch", y_label="img/s", series=[
        Series(label="eager", x=[1, 8], y=[10.0, 70.0]), Series(label="compiled", x=[8, 32], y=[90.0, 300.0])])
    table = as_table(chart)
    assert table.columns == ["batch", "eager", "compiled"]
    assert table.rows == [[1, 10.0, None], [8, 70.0, 90.0], [32, None, 300.0]]
    assert [cell_text(v) for v in (None, 0.123456, 123456.0, "x", 3)] == ["-", "0.1235", "123,456", "x", "3"]


def test_training_charts_mark_the_kept_epoch_and_the_overfitting_stretch():
    from handlers.ml.curves import overfitting_epochs, training_charts

    history = [{"epoch": e, "train_loss": t, "val_loss": v, "val_accuracy": a, "val_auc": a}
               for e, t, v, a in ((1, 0.9, 0.7, 0.6), (2, 0.6, 0.5, 0.8), (3, 0.4, 0.6, 0.79), (4, 0.2, 0.8, 0.75))]
    best, worst = overfitting_epochs(history)
    assert (best["epoch"], worst["epoch"]) == (2, 4)
    loss, scores = training_charts(history, 2)
    assert [s.label for s in loss.series] == ["training loss", "validation loss"]
    assert loss.series[1].y == [0.7, 0.5, 0.6, 0.8]
    assert [(m.x, m.x_end) for m in loss.marks] == [(2, None), (2, 4)]
    assert "overfitting" in loss.marks[1].label
    assert [s.label for s in scores.series] == ["validation accuracy", "validation AUC"]
    assert training_charts([], 0) == []
    assert [(m.x, m.x_end) for m in training_charts(history[:2], 2)[0].marks] == [(2, None)]   # no overfitting


def test_benchmark_figures_from_measurements():
    from handlers.inference.perf.figures import benchmark_figures, measurement_line
    from handlers.inference.perf.harness import BenchmarkResult, Measurement

    lat = {"mean": 2.0, "p50": 1.9, "p90": 2.5, "p99": 3.0, "min": 1.0, "max": 4.0, "std": 0.1, "n": 10}
    result = BenchmarkResult(measurements=[
        Measurement("eager", b, h2d, 10, {k: v * b for k, v in lat.items()}, 100.0 * b / (2 if h2d else 1),
                    "cuda-events") for b in (1, 8) for h2d in (False, True)])
    accuracy = {"eager": {"accuracy": 0.9, "auc": 0.95, "agreement": 1.0}}
    throughput, p99, percentiles, acc, table = benchmark_figures(result, accuracy, "cuda")
    assert [s.label for s in throughput.series] == ["eager (resident)", "eager (with H2D)"]
    assert throughput.series[1].style == "dashed" and throughput.series[1].y == [50.0, 400.0]
    assert throughput.log_x == 2 and p99.series[0].y == [3.0, 24.0]
    assert [s.label for s in percentiles.series] == ["p50", "p90", "p99"] and percentiles.series[2].y == [3.0]
    assert acc.series[2].y == [1.0]
    assert table.columns[:3] == ["backend", "batch", "input"] and table.rows[0][:3] == ["eager", 1, "resident"]
    assert measurement_line(result.measurements[0]).startswith("eager batch 1 (resident): p50 1.900 ms, p99 3.000")
    assert benchmark_figures(BenchmarkResult(), {}, "cpu") == []


def test_preprocessing_figures_from_the_recorded_h200_run():
    from handlers.preprocessing.figures import cupy_figures, dali_figures

    dali = json.loads((GPU_PREPROCESSING / "ag-ds-dali-001-dali.json").read_text())
    loader, training = dali_figures(dali["speed"], dali["training"], dali["cpu_cores"])
    assert loader.series[0].y == [dali["speed"]["dali_decode"]["images_per_s"],
                                  dali["speed"]["dali_pipeline"]["images_per_s"]]
    assert loader.series[1].label == f"DataLoader ({dali['cpu_cores']} workers)"
    assert training.series[0].x == list(dali["training"]["resident"])
    cupy = json.loads((GPU_PREPROCESSING / "ag-ds-cupy-001-cupy.json").read_text())
    reports = [f for m in cupy["modules"].values() for f in m.get("functions", [])]
    speedup, kernel = cupy_figures(reports, cupy["fused_kernel"], 0.8)
    assert speedup.log_y == 10 and len(speedup.series[0].x) == sum(1 for r in reports if r["portable"] and r["speedup"])
    copy = cupy["fused_kernel"]["copy"]["bandwidth_gbs"]
    assert [r.y for r in kernel.references] == [copy, pytest.approx(0.8 * copy)]


def test_precision_chart_marks_the_accuracy_int8_must_keep():
    from handlers.inference.trt_profile import precision_chart

    results = {p: {"accuracy": a, "auc": 0.9, "agreement": g} for p, a, g in
               (("fp32", 0.8, 1.0), ("fp16", 0.8, 1.0), ("int8", 0.78, 0.93))}
    chart = precision_chart(results, 0.99)
    assert chart.series[0].x == ["fp32", "fp16", "int8"] and chart.series[2].y == [1.0, 1.0, 0.93]
    assert chart.references[0].y == pytest.approx(0.792) and chart.references[0].label == "99% of FP32 accuracy"
