"""Configuration of the compositing tier (configs/compositing.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from compositing_service.balancing import replica_source, replica_target
from lipsync.metrics import MetricsConfig
from lipsync.settings import CapacityConfig, LogConfig, MiB, StrictModel
from lipsync.tls import ClientTlsConfig, ServerConfigWithTls


class InferenceClientConfig(StrictModel):
    """Client settings of the compositing tier for calls to the inference tier."""

    address: str = Field(
        "127.0.0.1:50051",
        description="gRPC target of the inference tier: host:port, dns:///host:port (every "
        "address the name resolves to is a replica) or ipv4:ip:port,ip:port",
    )
    addresses: list[str] = Field(
        default_factory=list,
        description="inference replicas as IP:port, in place of address",
    )
    timeout_s: float = Field(
        120.0, gt=0, le=3600, description="deadline of each call to the inference tier"
    )
    max_message_bytes: int = Field(64 * MiB, ge=4 * MiB, le=1024 * MiB)
    wait_ready_s: float = Field(
        60.0, ge=0, le=3600, description="how long to wait at start for the inference tier"
    )
    load_balancing: Literal["round_robin", "pick_first"] = Field(
        "round_robin", description="gRPC client-side policy over the replicas of the target"
    )
    affinity: bool = Field(
        False, description="send each avatar's calls to one replica, chosen by a stable hash"
    )
    ejection_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="with affinity: how long a replica that returned UNAVAILABLE is skipped",
    )
    resolve_interval_s: float = Field(
        30.0, gt=0, le=3600, description="with affinity: how often a DNS target is resolved again"
    )
    tls: ClientTlsConfig | None = Field(None, description="call over TLS; unset: plaintext")

    @model_validator(mode="after")
    def _check_addresses(self) -> InferenceClientConfig:
        if self.addresses and "address" in self.model_fields_set:
            raise ValueError(
                "set inference.address or inference.addresses, not both (LIPSYNC_INFERENCE_ADDRESS "
                "sets inference.address)"
            )
        for entry in self.addresses:
            replica_target([entry])
        several = len(replica_source(self.target).static) > 1
        if several and self.tls is not None and not self.tls.server_name_override:
            raise ValueError(
                "inference.tls.server_name_override is required with several inference "
                "addresses: gRPC checks one host name against every replica's certificate, and a "
                "list of addresses has none; set the name the replicas' certificates carry"
            )
        return self

    @property
    def target(self) -> str:
        """The gRPC target the compositing tier dials: address, or addresses joined."""
        return replica_target(self.addresses) if self.addresses else self.address


class OutputConfig(StrictModel):
    jpeg_quality: int = Field(75, ge=1, le=100, description="default JPEG quality")
    jpeg_mode: Literal["splice", "full"] = Field(
        "splice",
        description=(
            "splice: re-encode only the MCU rows around the face box into each background's "
            "cached JPEG (needs backgrounds.storage decoded); full: encode every frame whole"
        ),
    )


class CompositorConfig(StrictModel):
    workers: int = Field(
        0, ge=0, le=256, description="threads compositing and encoding frames; 0: one per core"
    )


class LimitsConfig(StrictModel):
    max_batch_size: int = Field(256, ge=1, le=4096, description="largest batch_size accepted")
    max_audio_bytes: int = Field(
        64 * MiB, ge=1024, le=1024 * MiB, description="largest raw_audio accepted"
    )
    max_concurrent_requests: int = Field(
        8,
        ge=0,
        le=10000,
        description=(
            "calls served at once, health checks and StreamRender excepted; one more gets "
            "RESOURCE_EXHAUSTED. Keep it below server.max_workers. 0: no limit"
        ),
    )


class StreamsConfig(StrictModel):
    """Limits of StreamRender sessions."""

    max_streams: int = Field(64, ge=1, le=10000, description="open streams at once")
    idle_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a stream with no client message for this long is closed"
    )


class BackgroundsConfig(StrictModel):
    """In-memory storage of each avatar's background frames on the compositing tier."""

    storage: Literal["decoded", "encoded"] = Field(
        "decoded",
        description=(
            "decoded: BGR arrays, fastest per frame; encoded: the package's image files in "
            "memory, decoded for each output frame"
        ),
    )


class CompositingConfig(StrictModel):
    server: ServerConfigWithTls = ServerConfigWithTls(port=50052)
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
    metrics: MetricsConfig = MetricsConfig(port=9102)
