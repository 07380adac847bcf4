"""Monolithic mode: the compositing service with the inference code linked in-process.

The compositing tier's code is unchanged; only its inference backend differs. The in-process
backend calls `InferenceCore` directly and hands its numpy crops to the compositor, with no
gRPC and no serialisation between the stages. This module is the only place that imports both
tiers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from compositing_service import config as compositing_config
from compositing_service.backend import Mouths
from compositing_service.config import CompositingConfig
from compositing_service.server import create_service as create_compositing_service
from inference_service import config as inference_config
from inference_service.config import InferenceConfig
from inference_service.core import InferenceCore, MouthBatch
from inference_service.management import model_info
from inference_service.server import build_core, request_from_proto
from inference_service.stream_runner import StreamRunner
from lipsync.avatar.spec import validate_avatar_id
from lipsync.metrics import MetricsConfig
from lipsync.protos import inference_pb2
from lipsync.registry import IdleUnloader
from lipsync.serving import GrpcService
from lipsync.settings import CapacityConfig, LogConfig, StrictModel
from lipsync.streams import StreamTracker
from lipsync.tls import ServerConfigWithTls

logger = logging.getLogger(__name__)


class InferenceSection(StrictModel):
    """The inference tier's settings, as in configs/inference.yaml."""

    models: inference_config.ModelsConfig
    limits: inference_config.LimitsConfig = inference_config.LimitsConfig()
    streams: inference_config.StreamsConfig = inference_config.StreamsConfig()
    capacity: CapacityConfig = CapacityConfig()
    gpus: inference_config.GpusConfig = inference_config.GpusConfig()


class CompositingSection(StrictModel):
    """The compositing tier's settings, as in configs/compositing.yaml."""

    output: compositing_config.OutputConfig = compositing_config.OutputConfig()
    compositor: compositing_config.CompositorConfig = compositing_config.CompositorConfig()
    limits: compositing_config.LimitsConfig = compositing_config.LimitsConfig()
    streams: compositing_config.StreamsConfig = compositing_config.StreamsConfig()
    capacity: CapacityConfig = CapacityConfig()
    backgrounds: compositing_config.BackgroundsConfig = compositing_config.BackgroundsConfig()
    preload: list[str] = Field(default_factory=list, description="avatar ids loaded at start")


class MonolithicConfig(StrictModel):
    """configs/monolithic.yaml: one process serving the public API."""

    server: ServerConfigWithTls = ServerConfigWithTls(port=50053)
    avatars_dir: Path
    inference: InferenceSection
    compositing: CompositingSection = CompositingSection()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig(port=9103)

    def inference_config(self) -> InferenceConfig:
        return InferenceConfig(
            server=ServerConfigWithTls(port=0),
            avatars_dir=self.avatars_dir,
            log=self.log,
            **self.inference.model_dump(),
        )

    def compositing_config(self) -> CompositingConfig:
        return CompositingConfig(
            server=self.server,
            avatars_dir=self.avatars_dir,
            log=self.log,
            inference=compositing_config.InferenceClientConfig(address="in-process"),
            metrics=self.metrics,
            **self.compositing.model_dump(),
        )


def _mouths(batch: MouthBatch) -> Mouths:
    """Hand an inference batch to the compositing tier as is: the same arrays, no copies."""
    return Mouths(
        frame_indices=batch.frame_indices,
        background_indices=batch.background_indices,
        crops=batch.crops,
        utterance_frames=batch.utterance_frames,
        audio_ms=batch.audio_ms,
        inference_ms=batch.inference_ms,
        model_load_ms=batch.model_load_ms,
        gpu_id=batch.gpu_id,
    )


class InProcessMouthStream:
    """A StreamRunner driven in-process, as the compositing tier's MouthStream."""

    def __init__(self, runner: StreamRunner) -> None:
        self._runner = runner
        self._batches = runner.run()

    def __iter__(self) -> InProcessMouthStream:
        return self

    def __next__(self) -> Mouths:
        batch = next(self._batches)
        mouths = _mouths(batch)
        mouths.silence_fill = batch.silence_fill
        mouths.session_id = self._runner.session_id
        return mouths

    def cancel(self) -> None:
        self._runner.cancel()


class InProcessInferenceBackend:
    """The compositing tier's inference backend as direct calls into InferenceCore."""

    def __init__(
        self, core: InferenceCore, streams: inference_config.StreamsConfig | None = None
    ) -> None:
        self.core = core
        self.stream_limits = streams or inference_config.StreamsConfig()
        self.stream_sessions = StreamTracker()

    def stream_mouths(
        self, requests: Iterator[inference_pb2.StreamMouthsRequest], *, session_id: str = ""
    ) -> InProcessMouthStream:
        runner = StreamRunner(
            self.core,
            requests,
            session_id=session_id or uuid.uuid4().hex[:16],
            tracker=self.stream_sessions,
            limits=self.stream_limits,
        )
        return InProcessMouthStream(runner)

    def render_mouths(self, request: inference_pb2.RenderMouthsRequest) -> Iterator[Mouths]:
        for batch in self.core.render_mouths(request_from_proto(request)):
            yield _mouths(batch)

    def load_model(self, model_id: str, force_reload: bool) -> inference_pb2.LoadModelResponse:
        validate_avatar_id(model_id)
        _, load_ms = self.core.avatars.registry.load(model_id, force=force_reload)
        return inference_pb2.LoadModelResponse(
            load_time_ms=load_ms, model=model_info(self.core.avatars, model_id)
        )

    def unload_model(self, model_id: str) -> bool:
        return self.core.avatars.registry.unload(model_id)

    def model_stats(self, model_id: str) -> inference_pb2.GetModelStatsResponse:
        ids = [model_id] if model_id else sorted(self.core.avatars.registry.entries())
        return inference_pb2.GetModelStatsResponse(
            models=[model_info(self.core.avatars, i) for i in ids]
        )

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


def create_service(config: MonolithicConfig) -> tuple[GrpcService, InferenceCore]:
    """Build the inference core, warm it up, and serve the public API on top of it."""
    inference = config.inference_config()
    core = build_core(inference)
    for avatar_id in inference.models.preload:
        core.warm_up(avatar_id)
    service, _ = create_compositing_service(
        config.compositing_config(),
        backend=InProcessInferenceBackend(core, inference.streams),
    )
    service.metrics.watch_avatars("inference", core.avatars.registry)
    if inference.capacity.idle_unload_s > 0:
        unloader = IdleUnloader(core.avatars.registry, inference.capacity.idle_unload_s).start()
        service.on_stop(unloader.stop)
    return service, core


def serve(config: MonolithicConfig) -> None:
    """Run the monolithic service until SIGTERM or SIGINT."""
    logger.info(
        "starting monolithic service: avatars %s, audio encoder %s, batch %d",
        config.avatars_dir,
        config.inference.models.audio_encoder,
        config.inference.models.batch_size,
    )
    service, _ = create_service(config)
    service.serve_until_signal()
