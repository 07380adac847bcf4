"""Checks and report of `lipsync soak`: per-call tallies, server memory samples, the summary.

`Tally` checks each finished call (status, frame count, frame order, whole JPEGs) and counts
it by kind. `RssSampler` reads the VmRSS of server processes from /proc, and
`slope_mb_per_min` fits a least-squares line to the samples taken after the warm-up.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

JPEG_START = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
# Memory samples per process kept in the JSON report.
SERIES_POINTS = 60


@dataclass
class CallStats:
    """Counts and latencies of one kind of call."""

    calls: int = 0
    ok: int = 0
    frames: int = 0
    lost_frames: int = 0
    reordered_frames: int = 0
    bad_images: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        latencies = sorted(self.latencies_s)
        return {
            "calls": self.calls,
            "ok": self.ok,
            "frames": self.frames,
            "lost_frames": self.lost_frames,
            "reordered_frames": self.reordered_frames,
            "bad_images": self.bad_images,
            "errors": dict(self.errors),
            "latency_p50_ms": _percentile_ms(latencies, 0.50),
            "latency_p95_ms": _percentile_ms(latencies, 0.95),
        }


def _percentile_ms(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return round(sorted_values[index] * 1000, 1)


class Tally:
    """Thread-safe CallStats per call kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kinds: dict[str, CallStats] = {}

    def record(
        self,
        kind: str,
        images: list[bytes],
        indices: list[int],
        expected: int,
        latency_s: float,
        error: str = "",
    ) -> None:
        """Check one finished call's frames against the expected count and order, and count it."""
        bad = sum(not (i.startswith(JPEG_START) and i.endswith(JPEG_END)) for i in images)
        in_range = set(indices) & set(range(expected))
        with self._lock:
            stats = self.kinds.setdefault(kind, CallStats())
            stats.calls += 1
            stats.frames += len(indices)
            stats.lost_frames += expected - len(in_range)
            stats.reordered_frames += sum(i != position for position, i in enumerate(indices))
            stats.bad_images += bad
            stats.latencies_s.append(latency_s)
            if error:
                stats.errors[error] += 1
            elif len(indices) != expected:
                stats.errors[f"{len(indices)} frames instead of {expected}"] += 1
            else:
                stats.ok += 1


def read_rss_bytes(pid: int) -> int | None:
    """Return the VmRSS of a process from /proc/PID/status, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def slope_mb_per_min(samples: list[tuple[float, int]]) -> float | None:
    """Fit rss = a + b * t by least squares and return b in MB per minute (None: < 3 samples)."""
    if len(samples) < 3:
        return None
    times = np.array([t for t, _ in samples]) / 60.0
    megabytes = np.array([rss for _, rss in samples]) / 1e6
    slope, _ = np.polyfit(times, megabytes, 1)
    return float(slope)


class RssSampler:
    """A thread that reads the VmRSS of each process every `interval_s` seconds."""

    def __init__(self, pids: list[int], interval_s: float) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in pids}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        now = time.monotonic() - self._started
        for pid in self.pids:
            rss = read_rss_bytes(pid)
            if rss is not None:
                self.samples[pid].append((now, rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
        self._sample()

    def summary(self, warmup_s: float) -> dict:
        report = {}
        for pid, samples in self.samples.items():
            rss_mb = [rss / 1e6 for _, rss in samples]
            after_warmup = [(t, rss) for t, rss in samples if t >= warmup_s]
            slope = slope_mb_per_min(after_warmup)
            report[str(pid)] = {
                "samples": len(samples),
                "start_mb": round(rss_mb[0], 1) if rss_mb else None,
                "end_mb": round(rss_mb[-1], 1) if rss_mb else None,
                "max_mb": round(max(rss_mb), 1) if rss_mb else None,
                "slope_mb_per_min": None if slope is None else round(slope, 3),
                "slope_samples": len(after_warmup),
                "series": downsample(samples, SERIES_POINTS),
            }
        return report


def downsample(samples: list[tuple[float, int]], points: int) -> list[tuple[float, float]]:
    """Return at most about `points` evenly spaced samples as (seconds, MB), the last included."""
    if not samples:
        return []
    step = max(1, len(samples) // points)
    chosen = samples[::step]
    if chosen[-1] is not samples[-1]:
        chosen.append(samples[-1])
    return [(round(t, 1), round(rss / 1e6, 1)) for t, rss in chosen]


def passed(report: dict) -> bool:
    """Return whether a soak report shows no error, no lost or reordered frame, no bad image."""
    totals = report["totals"]
    return totals["calls"] > 0 and not any(
        totals[key] for key in ("errors", "lost_frames", "reordered_frames", "bad_images")
    )


def format_report(report: dict) -> str:
    """Return the report as a few lines of text for the terminal."""
    totals = report["totals"]
    lines = [
        f"soak of {report['server']} for {report['seconds']} s: {report['streams']} "
        f"{report['stream_method']} workers and {report['unary']} InferBatchComposite workers, "
        f"clip {report['clip_seconds']} s ({report['clip_frames']} frames)",
        f"total: {totals['calls']} calls, {totals['ok']} OK, {totals['frames']} frames "
        f"({report['frames_per_second']} frames/s), {totals['errors']} errors, "
        f"{totals['lost_frames']} lost, {totals['reordered_frames']} out of order, "
        f"{totals['bad_images']} bad images",
    ]
    for kind, stats in report["calls"].items():
        lines.append(
            f"  {kind}: {stats['calls']} calls, p50 {stats['latency_p50_ms']} ms, "
            f"p95 {stats['latency_p95_ms']} ms, errors {stats['errors'] or 'none'}"
        )
    for pid, memory in report["memory"].items():
        lines.append(
            f"  pid {pid}: RSS {memory['start_mb']} -> {memory['end_mb']} MB (max "
            f"{memory['max_mb']}), slope after {report['memory_warmup_s']} s warm-up: "
            f"{memory['slope_mb_per_min']} MB/min over {memory['slope_samples']} samples"
        )
    lines.append("PASS" if passed(report) else "FAIL")
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
