"""`lipsync soak`: load a running service for a while and check every response.

Stream workers each run StreamRender calls (or RenderUtterance calls) back to back, and unary
workers run InferBatchComposite calls, all on the same audio clip, until the run's time is up.
Every call is checked: it must end with OK, return exactly the K + 2 frames the clip forms, with
frame indices 0, 1, 2, ... in order, and every image must be a whole JPEG. Meanwhile the
resident memory (VmRSS) of the server processes named with --pid is sampled, and the report
gives its least-squares slope after the warm-up in MB per minute, which a leak makes positive.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lipsync.media import PCM_S16LE, WavAudio
from lipsync.protos import compositing_pb2, compositing_pb2_grpc
from lipsync.serving import channel_options
from lipsync.settings import MiB
from lipsync.soak_report import RssSampler, Tally, format_report, passed, write_report

# The inference tier's audio framing (inference_service.features): 16 kHz audio with n samples
# forms 1 + n // 200 mel rows, and R rows form K + 2 = int((R - 16) / 80 * 25) + 4 frames.
TARGET_SAMPLE_RATE = 16000
HOP_LENGTH = 200
MEL_WINDOW_ROWS = 16
MEL_ROWS_PER_SECOND = 80
VIDEO_FPS = 25

STREAM_CHUNK_S = 0.1
STREAM_METHODS = ("StreamRender", "RenderUtterance")


def expected_frames(audio: WavAudio) -> int:
    """Return K + 2, the frames the service renders for the whole clip."""
    samples = audio.frames
    if audio.sample_rate != TARGET_SAMPLE_RATE:
        samples = math.ceil(samples * TARGET_SAMPLE_RATE / audio.sample_rate)
    mel_rows = 1 + samples // HOP_LENGTH
    if mel_rows < MEL_WINDOW_ROWS:
        raise ValueError(f"the audio clip ({audio.duration_s:.3f} s) is too short to render")
    windows = int((mel_rows - MEL_WINDOW_ROWS) / float(MEL_ROWS_PER_SECOND) * VIDEO_FPS) + 2
    return windows + 2


def cut_clip(audio: WavAudio, seconds: float) -> WavAudio:
    """Return the first `seconds` of the audio (all of it when it is shorter)."""
    frame_bytes = (2 if audio.encoding == PCM_S16LE else 4) * audio.channels
    frames = min(audio.frames, int(seconds * audio.sample_rate))
    return WavAudio(
        data=audio.data[: frames * frame_bytes],
        encoding=audio.encoding,
        sample_rate=audio.sample_rate,
        channels=audio.channels,
    )


@dataclass
class SoakSettings:
    """Settings of one soak run: the server, the workers, the audio clip and the duration."""

    server: str
    avatar: str
    seconds: float
    streams: int
    unary: int
    clip: WavAudio
    stream_method: str = "StreamRender"
    pids: list[int] = field(default_factory=list)
    warmup_s: float | None = None
    sample_interval_s: float = 1.0
    call_timeout_s: float = 120.0
    batch_size: int = 0  # frames per InferBatchComposite call; 0: the clip's K + 2


def _stream_requests(
    settings: SoakSettings, start_frame: int
) -> Iterator[compositing_pb2.StreamRenderRequest]:
    clip = settings.clip
    config = compositing_pb2.StreamConfig(
        model_id=settings.avatar,
        sample_rate=clip.sample_rate,
        audio_encoding=clip.encoding,
        audio_channels=clip.channels,
        start_frame_idx=start_frame,
    )
    yield compositing_pb2.StreamRenderRequest(config=config)
    frame_bytes = (2 if clip.encoding == PCM_S16LE else 4) * clip.channels
    chunk_bytes = max(1, int(STREAM_CHUNK_S * clip.sample_rate)) * frame_bytes
    for offset in range(0, len(clip.data), chunk_bytes):
        chunk = compositing_pb2.AudioChunk(data=clip.data[offset : offset + chunk_bytes])
        yield compositing_pb2.StreamRenderRequest(audio=chunk)


def _run_stream_call(stub, settings: SoakSettings, start_frame: int) -> list:
    if settings.stream_method == "StreamRender":
        responses = stub.StreamRender(
            _stream_requests(settings, start_frame), timeout=settings.call_timeout_s
        )
    else:
        clip = settings.clip
        request = compositing_pb2.RenderUtteranceRequest(
            model_id=settings.avatar,
            raw_audio=clip.data,
            sample_rate=clip.sample_rate,
            audio_encoding=clip.encoding,
            audio_channels=clip.channels,
            start_frame_idx=start_frame,
        )
        responses = stub.RenderUtterance(request, timeout=settings.call_timeout_s)
    return [frame for response in responses for frame in response.frames]


def _stream_worker(stub, settings: SoakSettings, tally: Tally, deadline: float, seed: int) -> None:
    expected = expected_frames(settings.clip)
    calls = 0
    while time.monotonic() < deadline:
        start_frame = (seed * 7 + calls * 13) % 1000
        started = time.monotonic()
        frames: list = []
        error = ""
        try:
            frames = _run_stream_call(stub, settings, start_frame)
        except grpc.RpcError as exc:
            error = exc.code().name
        tally.record(
            settings.stream_method,
            [frame.image for frame in frames],
            [frame.index for frame in frames],
            expected,
            time.monotonic() - started,
            error,
        )
        calls += 1


def _unary_worker(stub, settings: SoakSettings, tally: Tally, deadline: float, seed: int) -> None:
    clip = settings.clip
    utterance_frames = expected_frames(clip)
    expected = settings.batch_size or utterance_frames
    calls = 0
    while time.monotonic() < deadline:
        request = compositing_pb2.CompositeBatchRequest(
            model_id=settings.avatar,
            raw_audio=clip.data,
            sample_rate=clip.sample_rate,
            audio_encoding=clip.encoding,
            audio_channels=clip.channels,
            batch_size=expected,
            start_frame_idx=(seed * 11 + calls * 17) % 1000,
        )
        started = time.monotonic()
        images: list[bytes] = []
        error = ""
        try:
            reply = stub.InferBatchComposite(request, timeout=settings.call_timeout_s)
            images = list(reply.composited_frames)
            if reply.utterance_frames != utterance_frames:
                error = f"utterance_frames {reply.utterance_frames} instead of {utterance_frames}"
        except grpc.RpcError as exc:
            error = exc.code().name
        # A unary reply has no frame indices: its frames are in order by definition.
        tally.record(
            "InferBatchComposite",
            images,
            list(range(len(images))),
            expected,
            time.monotonic() - started,
            error,
        )
        calls += 1


def run_soak(settings: SoakSettings) -> dict:
    """Run the workers for `settings.seconds`, then return the report as a dict."""
    if settings.stream_method not in STREAM_METHODS:
        raise ValueError(f"stream method {settings.stream_method!r} is not one of {STREAM_METHODS}")
    warmup_s = settings.seconds / 5 if settings.warmup_s is None else settings.warmup_s
    tally = Tally()
    channel = grpc.insecure_channel(settings.server, options=channel_options(256 * MiB))
    stub = compositing_pb2_grpc.CompositingServiceStub(channel)
    sampler = RssSampler(settings.pids, settings.sample_interval_s).start()
    started = time.monotonic()
    deadline = started + settings.seconds

    workers: list[tuple[Callable, int]] = [(_stream_worker, i) for i in range(settings.streams)]
    workers += [(_unary_worker, i) for i in range(settings.unary)]
    threads = [
        threading.Thread(
            target=work, args=(stub, settings, tally, deadline, seed), name=f"soak-{index}"
        )
        for index, (work, seed) in enumerate(workers)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sampler.stop()
        channel.close()

    elapsed_s = time.monotonic() - started
    kinds = {kind: stats.summary() for kind, stats in sorted(tally.kinds.items())}
    totals = {
        key: sum(kind[key] for kind in kinds.values())
        for key in ("calls", "ok", "frames", "lost_frames", "reordered_frames", "bad_images")
    }
    totals["errors"] = sum(sum(kind["errors"].values()) for kind in kinds.values())
    return {
        "server": settings.server,
        "avatar": settings.avatar,
        "seconds": round(elapsed_s, 1),
        "streams": settings.streams,
        "unary": settings.unary,
        "stream_method": settings.stream_method,
        "clip_seconds": round(settings.clip.duration_s, 3),
        "clip_frames": expected_frames(settings.clip),
        "frames_per_second": round(totals["frames"] / elapsed_s, 1) if elapsed_s else 0.0,
        "totals": totals,
        "calls": kinds,
        "memory_warmup_s": round(warmup_s, 1),
        "memory": sampler.summary(warmup_s),
    }


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `lipsync soak` to its subparser."""
    parser.add_argument(
        "--server", required=True, help="public API host:port (compositing or monolithic)"
    )
    parser.add_argument("--avatar", required=True, help="avatar id")

    parser.add_argument(
        "--seconds", type=float, required=True, help="how long the workers start new calls"
    )
    parser.add_argument(
        "--streams", type=int, default=2, help="workers running streams back to back (default 2)"
    )
    parser.add_argument(
        "--unary",
        type=int,
        default=1,
        help="workers running InferBatchComposite calls back to back (default 1)",
    )
    parser.add_argument(
        "--stream-method",
        choices=STREAM_METHODS,
        default="StreamRender",
        help="the call each stream worker makes (default StreamRender)",
    )

    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        help="server process whose VmRSS is sampled; repeat for several processes",
    )

    parser.add_argument(
        "--audio", type=Path, help="WAV file to send (default: the bundled speech sample)"
    )
    parser.add_argument(
        "--audio-seconds",
        type=float,
        default=2.0,
        help="seconds of the audio each call sends, from its start (default 2)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds of the run left out of the memory slope (default: a fifth of the run)",
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=1.0,
        help="seconds between two VmRSS samples (default 1)",
    )

    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="frames per InferBatchComposite call (default: all K + 2 frames of the clip)",
    )
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=120.0,
        help="deadline of each call in seconds (default 120)",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")


def soak_from_args(args: argparse.Namespace) -> int:
    """Run `lipsync soak`; return 0 when every call passed its checks and 1 otherwise."""
    from lipsync.demo.run import speech_wav
    from lipsync.media import read_wav

    if args.seconds <= 0 or args.streams < 0 or args.unary < 0 or args.streams + args.unary == 0:
        raise ValueError("--seconds must be positive and --streams plus --unary at least 1")
    if args.batch_size < 0:
        raise ValueError(f"--batch-size {args.batch_size} is negative: use 0 or more")
    clip = cut_clip(read_wav(args.audio or speech_wav()), args.audio_seconds)
    settings = SoakSettings(
        server=args.server,
        avatar=args.avatar,
        seconds=args.seconds,
        streams=args.streams,
        unary=args.unary,
        clip=clip,
        stream_method=args.stream_method,
        pids=args.pid,
        warmup_s=args.warmup,
        sample_interval_s=args.sample_interval,
        call_timeout_s=args.call_timeout,
        batch_size=args.batch_size,
    )
    report = run_soak(settings)
    print(format_report(report))
    if args.json is not None:
        write_report(report, args.json)
    return 0 if passed(report) else 1
