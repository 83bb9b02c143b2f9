"""Latency statistics and throughput: plain arithmetic over timed samples (numpy only)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """n, mean, std (population, ddof=0), min, p50, p90, p99, max of per-iteration
    latencies in ms. Percentiles interpolate linearly between the two nearest samples
    (numpy's default), so p99 of 100 samples lies between the 99th and 100th smallest."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("latency_stats needs a non-empty 1-D sequence of samples")
    stats = {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
             "min": float(values.min())}
    for key, q in PERCENTILES.items():
        stats[key] = float(np.percentile(values, q, method="linear"))
    stats["max"] = float(values.max())
    return stats


def throughput(images: int, seconds: float) -> float:
    """Images per second. A zero or negative span means the timer is broken, not that
    the backend is infinitely fast, so it is an error."""
    if seconds <= 0:
        raise ValueError(f"throughput needs a positive time span, got {seconds!r} s")
    return images / seconds
