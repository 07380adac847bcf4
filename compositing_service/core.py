"""The compositing tier's work, free of gRPC: ask for mouth crops, composite, encode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from compositing_service.avatars import CompositingAvatar, CompositingAvatars
from compositing_service.backend import InferenceBackend
from compositing_service.compositor import JPEG, PNG, Compositor
from lipsync.avatar.spec import validate_avatar_id
from lipsync.errors import InvalidArgument
from lipsync.prefetch import prefetch
from lipsync.protos import inference_pb2

OUTPUT_FORMATS = (JPEG, PNG)


@dataclass(frozen=True)
class RenderJob:
    """A render request in the domain's own types, converted from either public request."""

    avatar_id: str
    raw_audio: bytes
    sample_rate: int
    audio_encoding: int
    audio_channels: int
    start_frame: int
    output_format: str
    jpeg_quality: int
    first_frame: int = 0
    frame_count: int = 0  # 0: to the end of the utterance
    pad_to_frames: int = 0
    face_inputs: bytes = b""  # legacy visual_frames, forwarded to the inference tier
    audio_features: bytes = b""  # legacy audio tensor, forwarded to the inference tier


@dataclass
class RenderedBatch:
    """Consecutive encoded frames and the time each stage took for them."""

    frame_indices: list[int]
    background_indices: list[int]
    images: list[bytes]
    utterance_frames: int
    width: int
    height: int
    audio_ms: float
    inference_ms: float
    composite_ms: float
    model_load_ms: float
    model_loaded: bool
    gpu_id: int


class CompositingCore:
    """Renders utterances: inference backend for the crops, the compositor for the frames."""

    def __init__(
        self,
        *,
        avatars: CompositingAvatars,
        backend: InferenceBackend,
        compositor: Compositor,
        default_jpeg_quality: int,
        max_audio_bytes: int,
    ) -> None:
        self.avatars = avatars
        self.backend = backend
        self.compositor = compositor
        self.default_jpeg_quality = default_jpeg_quality
        self.max_audio_bytes = max_audio_bytes

    def validate(self, job: RenderJob) -> None:
        validate_avatar_id(job.avatar_id)
        if job.output_format not in OUTPUT_FORMATS:
            raise InvalidArgument(
                f"output_format {job.output_format!r} is unknown: use JPEG or PNG"
            )
        if not 0 <= job.jpeg_quality <= 100:
            raise InvalidArgument(
                f"jpeg_quality {job.jpeg_quality} is out of range: use 1-100, or 0 for the "
                f"server default ({self.default_jpeg_quality})"
            )
        if len(job.raw_audio) > self.max_audio_bytes:
            raise InvalidArgument(
                f"raw_audio has {len(job.raw_audio)} bytes, more than the limit of "
                f"{self.max_audio_bytes} (limits.max_audio_bytes)"
            )
        if job.start_frame < 0:
            raise InvalidArgument(f"start_frame_idx {job.start_frame} is negative: use 0 or more")

    def render(self, job: RenderJob) -> Iterator[RenderedBatch]:
        """Render the job's frames in order, one batch per inference batch."""
        self.validate(job)
        with self.avatars.acquire(job.avatar_id) as (avatar, load_ms):
            yield from self._render(job, avatar, load_ms)

    def _render(
        self, job: RenderJob, avatar: CompositingAvatar, load_ms: float
    ) -> Iterator[RenderedBatch]:
        quality = job.jpeg_quality or self.default_jpeg_quality

        query = inference_pb2.RenderMouthsRequest(
            model_id=job.avatar_id,
            raw_audio=job.raw_audio,
            sample_rate=job.sample_rate,
            audio_encoding=job.audio_encoding,
            audio_channels=job.audio_channels,
            start_frame_idx=job.start_frame,
            first_frame=job.first_frame,
            frame_count=job.frame_count,
            pad_to_frames=job.pad_to_frames,
            face_inputs=job.face_inputs,
            audio_features=job.audio_features,
        )
        first = True
        # The next batch of crops is computed and transferred while this one is composited.
        for mouths in prefetch(self.backend.render_mouths(query), depth=2):
            started = time.perf_counter()
            images = self.compositor.render(
                avatar,
                mouths.background_indices,
                mouths.crops,
                output_format=job.output_format,
                jpeg_quality=quality,
            )
            total_load_ms = mouths.model_load_ms + (load_ms if first else 0.0)
            yield RenderedBatch(
                frame_indices=mouths.frame_indices.tolist(),
                background_indices=mouths.background_indices.tolist(),
                images=images,
                utterance_frames=mouths.utterance_frames,
                width=avatar.spec.width,
                height=avatar.spec.height,
                audio_ms=mouths.audio_ms,
                inference_ms=mouths.inference_ms,
                composite_ms=(time.perf_counter() - started) * 1000,
                model_load_ms=total_load_ms,
                model_loaded=total_load_ms > 0,
                gpu_id=mouths.gpu_id,
            )
            first = False
