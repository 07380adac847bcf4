"""Configuration of the inference tier (configs/inference.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from lipsync.metrics import MetricsConfig
from lipsync.settings import CapacityConfig, LogConfig, StrictModel
from lipsync.tls import ServerConfigWithTls


class ModelsConfig(StrictModel):
    """Model files and the ONNX Runtime settings that run them."""

    audio_encoder: Path = Field(..., description="audio encoder ONNX (wav2lip SyncNet audio tower)")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto uses CUDA when onnxruntime-gpu sees a GPU, else the CPU"
    )
    gpu_id: int = Field(0, ge=0, le=63)
    batch_size: int = Field(24, ge=1, le=256, description="frames per UNet run")
    response_frames: int = Field(
        4,
        ge=1,
        le=256,
        description=(
            "crops per RenderMouths response: small responses let the compositing tier start on "
            "the first crops while the rest are still being serialized and sent"
        ),
    )
    audio_encoder_batch_size: int = Field(64, ge=1, le=1024)
    intra_op_threads: int = Field(0, ge=0, le=256, description="0 lets ONNX Runtime choose")
    preload: list[str] = Field(default_factory=list, description="avatar ids loaded at start")


class LimitsConfig(StrictModel):
    max_audio_seconds: float = Field(
        300.0, gt=0, le=24 * 3600, description="maximum audio duration per request, in seconds"
    )
    max_concurrent_requests: int = Field(
        8,
        ge=0,
        le=10000,
        description=(
            "calls served at once, health checks and StreamMouths excepted; one more gets "
            "RESOURCE_EXHAUSTED. Keep it below server.max_workers. 0: no limit"
        ),
    )


class StreamsConfig(StrictModel):
    """Limits of StreamMouths sessions."""

    max_sessions: int = Field(64, ge=1, le=10000, description="open streams at once")
    idle_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a stream with no message for this long is closed"
    )


class GpusConfig(StrictModel):
    """Placement of avatars on several GPUs."""

    count: int = Field(
        0, ge=0, le=64, description="GPUs to spread avatars over; 0: only models.gpu_id"
    )
    policy: Literal["round-robin", "least-loaded"] = Field(
        "round-robin", description="how a new avatar's GPU is chosen"
    )
    preferred: dict[str, int] = Field(
        default_factory=dict, description="avatar id -> GPU, overriding the policy"
    )


class InferenceConfig(StrictModel):
    server: ServerConfigWithTls = ServerConfigWithTls(port=50051)
    avatars_dir: Path
    models: ModelsConfig
    limits: LimitsConfig = LimitsConfig()
    streams: StreamsConfig = StreamsConfig()
    capacity: CapacityConfig = CapacityConfig()
    gpus: GpusConfig = GpusConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig(port=9101)
