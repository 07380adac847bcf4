"""`lipsync bench` smoke run on the demo model: both shapes start, serve and are reported."""

from __future__ import annotations

import json

from lipsync.bench.command import format_table, run_bench


def test_bench_smoke_run_reports_both_shapes(demo_data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = run_bench(
        data_dir=demo_data.data_dir,
        model="demo",
        batch_size=8,
        iterations=2,
        warmup=1,
        throughput_s=1.0,
        concurrency=2,
        json_path=out,
        stream_rounds=1,
        stream_seconds=1.0,
    )

    saved = json.loads(out.read_text())
    assert saved["batch_size"] == 8
    for shape in ("monolithic", "split"):
        figures = saved[shape]
        assert figures["requests"] == 2
        assert figures["frames"] == 16
        assert figures["cold_start_s"] > 0
        assert figures["latency_ms"]["min"] <= figures["latency_ms"]["p50"]
        assert figures["latency_ms"]["p50"] <= figures["latency_ms"]["max"]
        assert figures["throughput"]["frames_per_s"] > 0
        assert figures["cpu_ms_per_frame"] > 0
        assert all(rss > 0 for rss in figures["rss_mb"].values())
        assert set(figures["stages_ms"]) == {"audio", "inference", "composite", "total"}
        streams = figures["streams"]
        assert streams["rounds"] == 1
        assert streams["first_frame_ms"]["p50"] > 0
        assert streams["fast_frames_per_s"]["p50"] > 0
        assert streams["real_time_factor"]["p50"] > 0
    assert len(saved["split"]["rss_mb"]) == 2
    assert len(saved["monolithic"]["rss_mb"]) == 1
    # One uint8 crop of 320x320x3 per frame crosses between the tiers, plus framing.
    assert 307_200 <= saved["wire_bytes_per_frame"] < 320_000
    assert saved["baseline"]["model"]["p50"] > 0
    assert saved["machine"]["cores"]

    table = capsys.readouterr().out
    assert "split overhead" in table
    assert format_table(results).splitlines()[0].split() == ["monolithic", "split"]
