"""Configuration of the compositing tier (configs/compositing.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from lipsync.settings import CapacityConfig, LogConfig, MiB, ServerConfig, StrictModel


class InferenceClientConfig(StrictModel):
    """How the compositing tier reaches the inference tier."""

    address: str = Field("127.0.0.1:50051", description="host:port of the inference service")
    timeout_s: float = Field(
        120.0, gt=0, le=3600, description="deadline of each call to the inference tier"
    )
    max_message_bytes: int = Field(64 * MiB, ge=4 * MiB, le=1024 * MiB)
    wait_ready_s: float = Field(
        60.0, ge=0, le=3600, description="how long to wait at start for the inference tier"
    )


class OutputConfig(StrictModel):
    jpeg_quality: int = Field(75, ge=1, le=100, description="default JPEG quality")


class CompositorConfig(StrictModel):
    workers: int = Field(
        0, ge=0, le=256, description="threads compositing and encoding frames; 0: one per core"
    )


class LimitsConfig(StrictModel):
    max_batch_size: int = Field(256, ge=1, le=4096, description="largest batch_size accepted")
    max_audio_bytes: int = Field(
        64 * MiB, ge=1024, le=1024 * MiB, description="largest raw_audio accepted"
    )


class StreamsConfig(StrictModel):
    """Limits of StreamRender sessions."""

    max_streams: int = Field(64, ge=1, le=10000, description="open streams at once")
    idle_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a stream with no client message for this long is closed"
    )


class BackgroundsConfig(StrictModel):
    """How the compositing tier holds each avatar's background frames in memory."""

    storage: Literal["decoded", "encoded"] = Field(
        "decoded",
        description=(
            "decoded: BGR arrays, fastest per frame; encoded: the package's image files in "
            "memory, decoded for each output frame"
        ),
    )


class CompositingConfig(StrictModel):
    server: ServerConfig = ServerConfig(port=50052)
    avatars_dir: Path
    inference: InferenceClientConfig = InferenceClientConfig()
    output: OutputConfig = OutputConfig()
    compositor: CompositorConfig = CompositorConfig()
    limits: LimitsConfig = LimitsConfig()
    streams: StreamsConfig = StreamsConfig()
    capacity: CapacityConfig = CapacityConfig()
    backgrounds: BackgroundsConfig = BackgroundsConfig()
    preload: list[str] = Field(default_factory=list, description="avatar ids loaded at start")
    log: LogConfig = LogConfig()
