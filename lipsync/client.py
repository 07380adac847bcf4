"""A small client of the public API, used by `lipsync render` and `lipsync demo`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lipsync.media import Mp4Writer, WavAudio
from lipsync.protos import compositing_pb2, compositing_pb2_grpc
from lipsync.serving import channel_options
from lipsync.settings import MiB


def wait_for_serving(address: str, timeout_s: float, service: str = "") -> bool:
    """Poll grpc.health.v1 at address until it reports SERVING or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


@dataclass
class RenderStats:
    """Counts and timings of one render, measured by the client."""

    frames: int = 0
    total_frames: int = 0
    first_frame_ms: float = 0.0
    wall_s: float = 0.0
    audio_ms: float = 0.0
    inference_ms: float = 0.0
    composite_ms: float = 0.0
    background_indices: list[int] = field(default_factory=list)

    def summary(self) -> str:
        fps = self.frames / self.wall_s if self.wall_s else 0.0
        return (
            f"{self.frames} frames ({self.frames / 25:.2f} s of video) in {self.wall_s:.2f} s "
            f"({fps:.1f} frames/s); first frame after {self.first_frame_ms:.0f} ms; server time: "
            f"audio {self.audio_ms:.0f} ms, inference {self.inference_ms:.0f} ms, "
            f"composite {self.composite_ms:.0f} ms"
        )


class LipsyncClient:
    """Client of CompositingService."""

    def __init__(self, address: str, *, max_message_bytes: int = 64 * MiB) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address, options=channel_options(max_message_bytes))
        self.stub = compositing_pb2_grpc.CompositingServiceStub(self.channel)

    def render_utterance(
        self,
        avatar_id: str,
        audio: WavAudio,
        *,
        start_frame: int = 0,
        output_format: int = compositing_pb2.JPEG,
        jpeg_quality: int = 0,
        timeout_s: float | None = None,
    ) -> Iterator[compositing_pb2.RenderUtteranceResponse]:
        """Stream the responses of RenderUtterance for a whole WAV."""
        request = compositing_pb2.RenderUtteranceRequest(
            model_id=avatar_id,
            raw_audio=audio.data,
            sample_rate=audio.sample_rate,
            audio_encoding=audio.encoding,
            audio_channels=audio.channels,
            start_frame_idx=start_frame,
            output_format=output_format,
            jpeg_quality=jpeg_quality,
        )
        yield from self.stub.RenderUtterance(request, timeout=timeout_s)

    def render_to_mp4(
        self,
        avatar_id: str,
        audio: WavAudio,
        out: Path,
        *,
        start_frame: int = 0,
        jpeg_quality: int = 0,
        progress: bool = False,
    ) -> RenderStats:
        """Render a WAV and write an MP4 with the frames at 25 fps and the WAV as its audio."""
        stats = RenderStats()
        writer: Mp4Writer | None = None
        bar = None
        started = time.perf_counter()
        try:
            for response in self.render_utterance(
                avatar_id, audio, start_frame=start_frame, jpeg_quality=jpeg_quality
            ):
                if writer is None:
                    stats.first_frame_ms = (time.perf_counter() - started) * 1000
                    stats.total_frames = response.total_frames
                    writer = Mp4Writer(
                        out, width=response.width, height=response.height, audio=audio
                    )
                    if progress:
                        from tqdm import tqdm

                        bar = tqdm(total=response.total_frames, unit="frame", desc="rendering")
                for frame in response.frames:
                    if frame.index != stats.frames:
                        raise RuntimeError(f"frame {frame.index} arrived, expected {stats.frames}")
                    image = cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR)
                    if image is None:
                        raise RuntimeError(f"frame {frame.index} could not be decoded")
                    writer.add_frame(image)
                    stats.background_indices.append(frame.background_index)
                    stats.frames += 1
                stats.audio_ms += response.timings.audio_ms
                stats.inference_ms += response.timings.inference_ms
                stats.composite_ms += response.timings.composite_ms
                if bar is not None:
                    bar.update(len(response.frames))
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        stats.wall_s = time.perf_counter() - started
        if stats.frames != stats.total_frames:
            raise RuntimeError(f"received {stats.frames} of {stats.total_frames} frames")
        return stats

    def stream_render(
        self,
        avatar_id: str,
        audio: WavAudio,
        *,
        chunk_ms: float = 20.0,
        realtime: bool = True,
        paced: bool = False,
        lookahead_rows: int | None = None,
        start_frame: int = 0,
        output_format: int = compositing_pb2.JPEG,
        jpeg_quality: int = 0,
        stats: StreamStats | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[StreamedFrame]:
        """Stream a WAV through StreamRender in chunks of `chunk_ms`; yield frames as they arrive.

        With `realtime` the chunks are sent at the pace of the audio (chunk j at j x `chunk_ms`
        after the first), else all at once. `stats`, when given, is filled in as frames arrive.
        """
        frame_bytes = (2 if audio.encoding == 1 else 4) * audio.channels
        chunk_frames = max(1, round(audio.sample_rate * chunk_ms / 1000.0))
        chunk_bytes = chunk_frames * frame_bytes
        config = compositing_pb2.StreamConfig(
            model_id=avatar_id,
            sample_rate=audio.sample_rate,
            audio_encoding=audio.encoding,
            audio_channels=audio.channels,
            start_frame_idx=start_frame,
            output_format=output_format,
            jpeg_quality=jpeg_quality,
            paced=paced,
        )
        if lookahead_rows is not None:
            config.lookahead_rows = lookahead_rows
        lookahead = MAX_LOOKAHEAD_ROWS if lookahead_rows is None else lookahead_rows
        stats = stats if stats is not None else StreamStats()
        stats.audio_s = audio.duration_s

        send_times: list[float] = []
        clock_start: list[float] = []
        chunk_s = chunk_ms / 1000.0 if realtime else 0.0
        requests = _stream_requests(config, audio, chunk_bytes, chunk_s, send_times, clock_start)
        n_chunks = -(-len(audio.data) // chunk_bytes)
        for response in self.stub.StreamRender(requests, timeout=timeout_s):
            arrival = time.perf_counter() - clock_start[0]
            stats.session_id = response.session_id
            for frame in response.frames:
                # The input sample that completes the frame's audio, and the chunk that carried it.
                needed = frame_audio_samples(frame.index, lookahead)
                last_input = math.ceil(needed * audio.sample_rate / STREAM_SAMPLE_RATE) - 1
                chunk = min(last_input // chunk_frames, n_chunks)
                sent = send_times[min(chunk, len(send_times) - 1)]
                if stats.frames == 0:
                    stats.first_frame_ms = arrival * 1000
                # Filled silence shifts the frames against the WAV, so latency stops counting.
                stats.silence_filled += frame.silence_fill
                latency_ms = (arrival - sent) * 1000
                if not stats.silence_filled and chunk < n_chunks:
                    stats.latencies_ms.append(latency_ms)
                elif not stats.silence_filled:
                    stats.end_latencies_ms.append(latency_ms)
                stats.frames += 1
                stats.wall_s = arrival
                yield StreamedFrame(
                    index=frame.index,
                    pts_ms=frame.pts_ms,
                    background_index=frame.background_index,
                    image=frame.image,
                    silence_fill=frame.silence_fill,
                    arrival_s=arrival,
                    width=response.width,
                    height=response.height,
                )

    def close(self) -> None:
        self.channel.close()


# --- streaming ---------------------------------------------------------------------------------

STREAM_SAMPLE_RATE = 16000
MAX_LOOKAHEAD_ROWS = 8


def frame_audio_samples(frame: int, lookahead_rows: int = MAX_LOOKAHEAD_ROWS) -> int:
    """Return how many 16 kHz samples of a stream frame `frame` depends on (docs/streaming.md).

    Frame i reads the audio-encoder window ``max(i + lookahead_rows - 2, 0)``, whose 16 mel
    rows start at row ``int(80 * k / 25)``; mel row t needs the samples before ``200 t + 400``.
    """
    window = max(frame + lookahead_rows - 2, 0)
    last_row = int(80.0 * (window / 25.0)) + 15
    return 200 * last_row + 400


@dataclass
class StreamedFrame:
    """A frame of StreamRender as the client received it."""

    index: int
    pts_ms: int
    background_index: int
    image: bytes
    silence_fill: bool
    arrival_s: float  # seconds after the first audio chunk was sent
    width: int
    height: int


@dataclass
class StreamStats:
    """Latency and throughput of one StreamRender call, measured by the client.

    Frame latency is the arrival time of a frame minus the time the chunk that completed the
    audio the frame depends on (`frame_audio_samples`) was sent. The last frames of a stream
    read past the end of the WAV; their latency counts from the half-close and is kept apart,
    in `end_latencies_ms`. Once a paced stream has filled silence, its frames no longer line up
    with the WAV, so later frames get no latency. The first-frame latency counts from the first
    chunk. The real-time factor is the time from the first chunk to the last frame divided by
    the audio's duration.
    """

    frames: int = 0
    silence_filled: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    first_frame_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    end_latencies_ms: list[float] = field(default_factory=list)
    session_id: str = ""

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    @property
    def real_time_factor(self) -> float:
        return self.wall_s / self.audio_s if self.audio_s else 0.0

    def summary(self) -> str:
        return (
            f"{self.frames} frames ({self.silence_filled} silence-filled) for "
            f"{self.audio_s:.2f} s of audio; first frame after {self.first_frame_ms:.0f} ms; "
            f"frame latency p50 {self.percentile_ms(50):.0f} ms, p95 "
            f"{self.percentile_ms(95):.0f} ms; last frame "
            f"{max(self.end_latencies_ms, default=0.0):.0f} ms after the end of the audio "
            f"({len(self.end_latencies_ms)} frames waited for it); "
            f"real-time factor {self.real_time_factor:.3f}"
        )


def _stream_requests(
    config: compositing_pb2.StreamConfig,
    audio: WavAudio,
    chunk_bytes: int,
    chunk_s: float,
    send_times: list[float],
    clock_start: list[float],
) -> Iterator[compositing_pb2.StreamRenderRequest]:
    # Chunk j is sent at start + j x chunk_s, or at once when chunk_s is 0. send_times[j] is
    # when it was handed to gRPC, and the entry after the last chunk is the half-close.
    yield compositing_pb2.StreamRenderRequest(config=config)
    start = time.perf_counter()
    clock_start.append(start)
    for j, offset in enumerate(range(0, len(audio.data), chunk_bytes)):
        delay = start + j * chunk_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send_times.append(time.perf_counter() - start)
        chunk = audio.data[offset : offset + chunk_bytes]
        yield compositing_pb2.StreamRenderRequest(audio=compositing_pb2.AudioChunk(data=chunk))
    send_times.append(time.perf_counter() - start)
