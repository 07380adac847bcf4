"""The `lipsync bench` command: prepare, start both shapes, drive them, print and save results."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from lipsync.bench.procs import rss_bytes
from lipsync.bench.run import (
    SHAPES,
    Shape,
    batch_audio,
    drive_streams,
    drive_throughput,
    drive_unary,
    machine_description,
    model_baseline,
    prepare_avatar,
    speech_cut,
    start_shapes,
    wire_bytes_per_frame,
)
from lipsync.bench.stats import summarize


def collect(shapes: dict[str, Shape], batch_size: int) -> dict:
    """Turn the measurements into the result document."""
    results = {}
    for name, shape in shapes.items():
        results[name] = {
            "cold_start_s": shape.cold_start_s,
            "latency_ms": summarize(shape.latencies_ms),
            "requests": len(shape.latencies_ms),
            "frames": shape.frames,
            "throughput": shape.throughput,
            "rss_mb": {p.name: rss_bytes(p.process.pid) / 1e6 for p in shape.processes},
            "cpu_ms_per_frame": 1000 * shape.cpu_s / shape.frames if shape.frames else 0.0,
            "stages_ms": {stage: summarize(v) for stage, v in shape.stages.items()},
            "streams": {
                "first_frame_ms": summarize(shape.streams.get("first_frame_ms", [])),
                "frame_latency_ms": summarize(shape.streams.get("frame_latency_ms", [])),
                "real_time_factor": summarize(shape.streams.get("real_time_factor", [])),
                "fast_frames_per_s": summarize(shape.streams.get("fast_frames_per_s", [])),
                "rounds": len(shape.streams.get("first_frame_ms", [])),
            },
        }
    mono, split = results["monolithic"]["latency_ms"], results["split"]["latency_ms"]
    results["split_overhead_ms"] = {
        "p50": split["p50"] - mono["p50"],
        "p99": split["p99"] - mono["p99"],
    }
    mono_rate = shapes["monolithic"].throughput.get("frames_per_s", 0.0)
    split_rate = shapes["split"].throughput.get("frames_per_s", 0.0)
    results["split_throughput_ratio"] = split_rate / mono_rate if mono_rate else 0.0
    results["batch_size"] = batch_size
    return results


def format_table(results: dict) -> str:
    """Render the comparison table, in the shape of the original system's published one."""
    rows = [
        ("cold start to SERVING (s)", lambda r: f"{r['cold_start_s']:.2f}"),
        ("latency min (ms)", lambda r: f"{r['latency_ms']['min']:.1f}"),
        ("latency p50 (ms)", lambda r: f"{r['latency_ms']['p50']:.1f}"),
        ("latency p95 (ms)", lambda r: f"{r['latency_ms']['p95']:.1f}"),
        ("latency p99 (ms)", lambda r: f"{r['latency_ms']['p99']:.1f}"),
        ("latency max (ms)", lambda r: f"{r['latency_ms']['max']:.1f}"),
        ("requests/s", lambda r: f"{r['throughput'].get('requests_per_s', 0):.2f}"),
        ("frames/s", lambda r: f"{r['throughput'].get('frames_per_s', 0):.1f}"),
        ("RSS (MB)", lambda r: " + ".join(f"{v:.0f}" for v in r["rss_mb"].values())),
        ("CPU ms per frame", lambda r: f"{r['cpu_ms_per_frame']:.1f}"),
        ("stage audio p50 (ms)", lambda r: f"{r['stages_ms']['audio']['p50']:.1f}"),
        ("stage inference p50 (ms)", lambda r: f"{r['stages_ms']['inference']['p50']:.1f}"),
        ("stage composite p50 (ms)", lambda r: f"{r['stages_ms']['composite']['p50']:.1f}"),
        ("stream first frame p50 (ms)", lambda r: f"{r['streams']['first_frame_ms']['p50']:.0f}"),
        (
            "stream frame latency p50 (ms)",
            lambda r: f"{r['streams']['frame_latency_ms']['p50']:.1f}",
        ),
        (
            "stream frame latency p95 (ms)",
            lambda r: f"{r['streams']['frame_latency_ms']['p95']:.1f}",
        ),
        ("stream real-time factor", lambda r: f"{r['streams']['real_time_factor']['p50']:.3f}"),
        ("stream fast frames/s", lambda r: f"{r['streams']['fast_frames_per_s']['p50']:.1f}"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':{width}}  {'monolithic':>12}  {'split':>12}"]
    for label, cell in rows:
        lines.append(
            f"{label:{width}}  {cell(results['monolithic']):>12}  {cell(results['split']):>12}"
        )
    overhead = results["split_overhead_ms"]
    lines.append(
        f"split overhead: p50 {overhead['p50']:+.1f} ms, p99 {overhead['p99']:+.1f} ms; "
        f"split/monolithic throughput {results['split_throughput_ratio']:.3f}; "
        f"{results['wire_bytes_per_frame']:.0f} bytes per frame between the tiers"
    )
    base = results["baseline"]
    serving = results["monolithic"]["latency_ms"]["p50"]
    floor = base["model"]["p50"] + base["jpeg"]["p50"]
    lines.append(
        f"model-only baseline p50: models {base['model']['p50']:.1f} ms + JPEG "
        f"{base['jpeg']['p50']:.1f} ms = {floor:.1f} ms; monolithic p50 is "
        f"{serving / floor:.3f}x of it"
    )
    return "\n".join(lines)


def run_bench(
    *,
    data_dir: Path,
    model: str,
    batch_size: int,
    iterations: int,
    warmup: int,
    throughput_s: float,
    concurrency: int,
    json_path: Path | None,
    stream_rounds: int = 2,
    stream_seconds: float = 4.0,
) -> dict:
    """Run the whole benchmark and return the results; print the table as it finishes."""
    started = time.monotonic()
    encoder, avatars_dir, avatar_id = prepare_avatar(data_dir.resolve(), model)
    audio = batch_audio(batch_size)

    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as tmp:
        shapes = start_shapes(Path(tmp), encoder, avatars_dir, avatar_id, batch_size)
        try:
            drive_unary(shapes, avatar_id, audio, batch_size, iterations, warmup)
            if throughput_s > 0:
                drive_throughput(shapes, avatar_id, audio, batch_size, throughput_s, concurrency)
            if stream_rounds > 0:
                drive_streams(
                    shapes, avatar_id, speech_cut(stream_seconds), stream_rounds, chunk_ms=20.0
                )
            wire = wire_bytes_per_frame(
                shapes["split"].processes[0].address, avatar_id, audio, batch_size
            )
            results = collect(shapes, batch_size)
        finally:
            for shape in shapes.values():
                for process in reversed(shape.processes):
                    process.stop()

    results["wire_bytes_per_frame"] = wire
    results["baseline"] = model_baseline(
        avatars_dir / avatar_id, encoder, audio, batch_size, repeats=max(3, iterations // 2)
    )
    results["model"] = model
    results["machine"] = machine_description()
    results["wall_s"] = time.monotonic() - started
    print(format_table(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {json_path}")
    return results


__all__ = ["SHAPES", "run_bench"]
