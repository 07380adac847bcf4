"""`lipsync soak`: a short run against the split deployment, and its checks on known inputs.

The CI run lasts about 10 s, so its memory slope means little. The long run and its figures
are in docs/benchmarks.md under "Soak".
"""

from __future__ import annotations

import json
import subprocess
import sys

from lipsync.demo.run import speech_wav
from lipsync.media import read_wav
from lipsync.soak import cut_clip, expected_frames
from lipsync.soak_report import Tally, passed, slope_mb_per_min

JPEG = b"\xff\xd8" + b"\x00" * 8 + b"\xff\xd9"


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lipsync", "soak", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_soak_split_deployment(split_deployment, tmp_path):
    report_path = tmp_path / "soak.json"
    result = run_cli(
        "--server",
        split_deployment.compositing.address,
        "--avatar",
        "demo",
        "--seconds",
        "10",
        "--streams",
        "2",
        "--unary",
        "1",
        "--pid",
        str(split_deployment.inference.process.pid),
        "--pid",
        str(split_deployment.compositing.process.pid),
        "--json",
        str(report_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout

    report = json.loads(report_path.read_text())
    totals = report["totals"]
    assert totals["errors"] == 0
    assert totals["lost_frames"] == 0
    assert totals["reordered_frames"] == 0
    assert totals["bad_images"] == 0
    assert report["calls"]["StreamRender"]["ok"] > 0
    assert report["calls"]["InferBatchComposite"]["ok"] > 0
    assert totals["frames"] == totals["ok"] * report["clip_frames"]
    for memory in report["memory"].values():
        assert memory["samples"] >= 3
        assert memory["slope_mb_per_min"] is not None


def test_soak_render_utterance_on_monolithic(monolithic_deployment, tmp_path):
    report_path = tmp_path / "soak.json"
    result = run_cli(
        "--server",
        monolithic_deployment.address,
        "--avatar",
        "demo",
        "--seconds",
        "3",
        "--streams",
        "1",
        "--unary",
        "0",
        "--stream-method",
        "RenderUtterance",
        "--audio-seconds",
        "1",
        "--json",
        str(report_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["clip_frames"] == 24
    assert report["calls"]["RenderUtterance"]["ok"] == report["totals"]["calls"]
    assert report["totals"]["calls"] > 0


def test_soak_fails_on_unknown_avatar(split_deployment):
    result = run_cli(
        "--server",
        split_deployment.compositing.address,
        "--avatar",
        "nobody",
        "--seconds",
        "0.5",
        "--streams",
        "1",
        "--unary",
        "0",
    )
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stdout
    assert "FAIL" in result.stdout


def test_expected_frames_of_clips():
    speech = read_wav(speech_wav())
    assert expected_frames(cut_clip(speech, 1.0)) == 24
    assert expected_frames(cut_clip(speech, 2.0)) == 49
    assert cut_clip(speech, 100.0).frames == speech.frames


def test_tally_counts_lost_and_reordered_frames():
    tally = Tally()
    tally.record("good", [JPEG] * 4, [0, 1, 2, 3], expected=4, latency_s=0.1)
    tally.record("short", [JPEG] * 3, [0, 1, 2], expected=4, latency_s=0.1)
    tally.record("swapped", [JPEG] * 4, [0, 2, 1, 3], expected=4, latency_s=0.1)
    tally.record("cut", [JPEG], [0], expected=4, latency_s=0.1, error="UNAVAILABLE")
    tally.record("broken", [b"not a jpeg"] * 4, [0, 1, 2, 3], expected=4, latency_s=0.1)

    kinds = {kind: stats.summary() for kind, stats in tally.kinds.items()}
    assert kinds["good"]["ok"] == 1
    assert kinds["short"]["lost_frames"] == 1
    assert kinds["short"]["errors"] == {"3 frames instead of 4": 1}
    assert kinds["swapped"]["reordered_frames"] == 2
    assert kinds["cut"]["lost_frames"] == 3
    assert kinds["cut"]["errors"] == {"UNAVAILABLE": 1}
    assert kinds["broken"]["bad_images"] == 4


def test_passed_needs_clean_calls():
    clean = {"calls": 3, "errors": 0, "lost_frames": 0, "reordered_frames": 0, "bad_images": 0}
    assert passed({"totals": clean})
    assert not passed({"totals": {**clean, "calls": 0}})
    assert not passed({"totals": {**clean, "lost_frames": 1}})


def test_memory_slope_least_squares():
    # 1 MB every 6 s is 10 MB per minute.
    samples = [(6.0 * i, int(100e6 + 1e6 * i)) for i in range(10)]
    assert abs(slope_mb_per_min(samples) - 10.0) < 1e-9
    flat = [(float(i), 5_000_000) for i in range(10)]
    assert abs(slope_mb_per_min(flat)) < 1e-9
    assert slope_mb_per_min(samples[:2]) is None
