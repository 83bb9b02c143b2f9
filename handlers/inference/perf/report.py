"""Benchmark tables for people: markdown for benchmark.md, short lines for the run summary."""
from __future__ import annotations


def _h2d(value) -> str:
    return "n/a (CPU)" if value is None else ("with H2D" if value else "resident")


def throughput_table(result) -> str:
    lines = ["| backend | batch | input | img/s | mean ms | p50 ms | p90 ms | p99 ms | iterations | timer |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in result.measurements:
        lat = m.latency_ms
        lines.append(f"| {m.backend} | {m.batch} | {_h2d(m.h2d)} | {m.throughput:,.1f} | {lat['mean']:.3f} | "
                     f"{lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | {m.iterations} | {m.timer} |")
    for f in result.failures:
        if f.get("batch") is not None:
            lines.append(f"| {f['backend']} | {f['batch']} | failed | — | — | — | — | — | — | {f['reason']} |")
    return "\n".join(lines)


def accuracy_table(accuracy: dict) -> str:
    lines = ["| backend | accuracy | AUC | F1 | agreement with PyTorch FP32 | max Δprob |", "|---|---|---|---|---|---|"]
    for name, a in accuracy.items():
        agree = f"{a['agreement']:.2%}" if "agreement" in a else "—"
        diff = f"{a['max_prob_diff']:.2e}" if "max_prob_diff" in a else "—"
        lines.append(f"| {name} | {a['accuracy']:.4f} | {a['auc']:.4f} | {a['f1']:.4f} | {agree} | {diff} |")
    return "\n".join(lines)


def unavailable_list(result) -> str:
    rows = [f"- **{u['backend']}**: {u['reason']}" + (f" ({u['hint']})" if u.get("hint") else "")
            for u in result.unavailable]
    rows += [f"- **{f['backend']}** failed: {f['reason']}" for f in result.failures if f.get("batch") is None]
    rows += [f"- **{s['backend']}** batch {s['batch']} not run: {s['reason']}" for s in result.skipped]
    return "\n".join(rows)


def best_by_backend(result) -> dict:
    """Each backend's highest throughput (resident input where both were measured)."""
    best: dict = {}
    for m in result.measurements:
        if m.h2d is True:
            continue
        if m.backend not in best or m.throughput > best[m.backend].throughput:
            best[m.backend] = m
    return best


def summary_lines(result, accuracy: dict) -> list[str]:
    lines = []
    by_batch = {(m.backend, m.batch): m for m in result.measurements if m.h2d is not True}
    for name, top in best_by_backend(result).items():
        one = by_batch.get((name, 1))
        latency = f"batch 1 p50 {one.latency_ms['p50']:.2f} ms p99 {one.latency_ms['p99']:.2f} ms; " if one else ""
        a = accuracy.get(name)
        acc = (f"; accuracy {a['accuracy']:.3f}, AUC {a['auc']:.3f}"
               + (f", agreement {a['agreement']:.1%}" if "agreement" in a else "")) if a else ""
        lines.append(f"{name}: {latency}best {top.throughput:,.1f} img/s at batch {top.batch}{acc}")
    for u in result.unavailable:
        lines.append(f"{u['backend']}: not available: {u['reason']}" + (f" ({u['hint']})" if u.get("hint") else ""))
    for f in result.failures:
        lines.append(f"{f['backend']}" + (f" batch {f['batch']}" if f.get("batch") is not None else "")
                     + f": failed: {f['reason']}")
    return lines
