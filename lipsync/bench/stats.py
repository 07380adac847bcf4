"""Summaries of latency samples."""

from __future__ import annotations

import numpy as np


def summarize(samples_ms: list[float]) -> dict[str, float]:
    """Return min, p50, p95, p99, max and mean of latency samples in milliseconds."""
    if not samples_ms:
        return {k: 0.0 for k in ("min", "p50", "p95", "p99", "max", "mean")}
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "min": float(values.min()),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }
