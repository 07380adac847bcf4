"""A small client of the public API, used by `lipsync render` and `lipsync demo`."""

from __future__ import annotations

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

    def close(self) -> None:
        self.channel.close()
