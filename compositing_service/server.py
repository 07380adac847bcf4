"""gRPC front end of the compositing tier and its start-up (`lipsync serve compositing`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from compositing_service.avatars import CompositingAvatars
from compositing_service.backend import GrpcInferenceBackend, InferenceBackend
from compositing_service.compositor import JPEG, PNG, Compositor
from compositing_service.config import CompositingConfig
from compositing_service.core import CompositingCore, RenderJob
from compositing_service.management import ManagementHandlers
from compositing_service.stream_server import StreamRenderHandler
from lipsync import __version__
from lipsync.errors import InvalidArgument
from lipsync.logs import avatar_id_var
from lipsync.protos import compositing_pb2, compositing_pb2_grpc
from lipsync.registry import IdleUnloader
from lipsync.serving import GrpcService

logger = logging.getLogger(__name__)

SERVICE_NAME = "compositing.CompositingService"
FRAME_MS = 40
LEGACY_FACE_INPUT_BYTES = 6 * 320 * 320 * 4

_OUTPUT_FORMATS = {
    compositing_pb2.OUTPUT_FORMAT_UNSPECIFIED: JPEG,
    compositing_pb2.JPEG: JPEG,
    compositing_pb2.PNG: PNG,
}


def output_format_from_proto(value: int) -> str:
    try:
        return _OUTPUT_FORMATS[value]
    except KeyError:
        raise InvalidArgument(
            f"output_format {value} is unknown: use JPEG (1) or PNG (2)"
        ) from None


def job_from_render_request(request: compositing_pb2.RenderUtteranceRequest) -> RenderJob:
    return RenderJob(
        avatar_id=request.model_id,
        raw_audio=request.raw_audio,
        sample_rate=request.sample_rate,
        audio_encoding=request.audio_encoding,
        audio_channels=request.audio_channels,
        start_frame=request.start_frame_idx,
        output_format=output_format_from_proto(request.output_format),
        jpeg_quality=request.jpeg_quality,
    )


def job_from_batch_request(
    request: compositing_pb2.CompositeBatchRequest, max_batch: int
) -> RenderJob:
    if not 1 <= request.batch_size <= max_batch:
        raise InvalidArgument(
            f"batch_size {request.batch_size} is out of range: use 1-{max_batch} "
            "(limits.max_batch_size)"
        )
    face_bytes = request.batch_size * LEGACY_FACE_INPUT_BYTES
    if request.visual_frames and len(request.visual_frames) != face_bytes:
        raise InvalidArgument(
            f"visual_frames has {len(request.visual_frames)} bytes; batch_size "
            f"{request.batch_size} frames of 6x320x320 float32 need {face_bytes} bytes"
        )
    if request.audio_features and len(request.audio_features) % 4:
        raise InvalidArgument(
            f"audio_features has {len(request.audio_features)} bytes, not a whole number of "
            "float32 values; send one 32x16x16 float32 tensor (32768 bytes)"
        )
    # The batch is the first batch_size frames of the utterance; shorter audio is padded with
    # trailing silence so exactly batch_size frames come back.
    return RenderJob(
        avatar_id=request.model_id,
        raw_audio=request.raw_audio,
        sample_rate=request.sample_rate,
        audio_encoding=request.audio_encoding,
        audio_channels=request.audio_channels,
        start_frame=request.start_frame_idx,
        output_format=output_format_from_proto(request.output_format),
        jpeg_quality=request.jpeg_quality,
        frame_count=request.batch_size,
        pad_to_frames=request.batch_size,
        face_inputs=request.visual_frames,
        audio_features=request.audio_features,
    )


class CompositingServicer(
    StreamRenderHandler, ManagementHandlers, compositing_pb2_grpc.CompositingServiceServicer
):
    """Thin gRPC handlers over CompositingCore."""

    def __init__(self, core: CompositingCore, config: CompositingConfig) -> None:
        self.core = core
        self.config = config

    def InferBatchComposite(
        self, request: compositing_pb2.CompositeBatchRequest, context: grpc.ServicerContext
    ) -> compositing_pb2.CompositeBatchResponse:
        started = time.perf_counter()
        avatar_id_var.set(request.model_id)
        job = job_from_batch_request(request, self.config.limits.max_batch_size)
        response = compositing_pb2.CompositeBatchResponse(success=True, gpu_id=-1)
        for batch in self.core.render(job):
            response.composited_frames.extend(batch.images)
            response.background_indices.extend(batch.background_indices)
            response.inference_time_ms += batch.inference_ms
            response.audio_processing_ms += batch.audio_ms
            response.composite_time_ms += batch.composite_ms
            response.model_load_time_ms += batch.model_load_ms
            response.model_loaded |= batch.model_loaded
            response.utterance_frames = batch.utterance_frames
            response.gpu_id = batch.gpu_id
        response.total_time_ms = (time.perf_counter() - started) * 1000
        return response

    def RenderUtterance(
        self, request: compositing_pb2.RenderUtteranceRequest, context: grpc.ServicerContext
    ) -> Iterator[compositing_pb2.RenderUtteranceResponse]:
        avatar_id_var.set(request.model_id)
        for batch in self.core.render(job_from_render_request(request)):
            yield compositing_pb2.RenderUtteranceResponse(
                frames=[
                    compositing_pb2.Frame(
                        index=index,
                        pts_ms=index * FRAME_MS,
                        background_index=background,
                        image=image,
                    )
                    for index, background, image in zip(
                        batch.frame_indices, batch.background_indices, batch.images, strict=True
                    )
                ],
                total_frames=batch.utterance_frames,
                width=batch.width,
                height=batch.height,
                timings=compositing_pb2.StageTimings(
                    audio_ms=batch.audio_ms,
                    inference_ms=batch.inference_ms,
                    composite_ms=batch.composite_ms,
                ),
            )

    def Health(
        self, request: compositing_pb2.HealthRequest, context: grpc.ServicerContext
    ) -> compositing_pb2.HealthResponse:
        loaded = len(self.core.avatars.loaded())
        return compositing_pb2.HealthResponse(
            healthy=True,
            inference_server_healthy=self.core.backend.healthy(),
            loaded_models=loaded,
            max_models=self.core.avatars.registry.max_models,
            version=__version__,
            inference_server_url=self.config.inference.address,
        )


def create_service(
    config: CompositingConfig, backend: InferenceBackend | None = None
) -> tuple[GrpcService, CompositingCore]:
    """Start the compositing service; without a backend it connects to the inference tier."""
    if backend is None:
        grpc_backend = GrpcInferenceBackend(
            config.inference.address,
            timeout_s=config.inference.timeout_s,
            max_message_bytes=config.inference.max_message_bytes,
        )
        if not grpc_backend.wait_ready(config.inference.wait_ready_s):
            logger.warning(
                "inference tier at %s is not SERVING after %.0f s; starting anyway",
                config.inference.address,
                config.inference.wait_ready_s,
            )
        backend = grpc_backend

    core = CompositingCore(
        avatars=CompositingAvatars(
            config.avatars_dir,
            max_models=config.capacity.max_models,
            max_memory_bytes=config.capacity.max_memory_bytes,
            policy=config.capacity.policy,
            storage=config.backgrounds.storage,
        ),
        backend=backend,
        compositor=Compositor(config.compositor.workers),
        default_jpeg_quality=config.output.jpeg_quality,
        max_audio_bytes=config.limits.max_audio_bytes,
    )
    for avatar_id in config.preload:
        core.avatars.get(avatar_id)

    service = GrpcService(
        name="compositing",
        address=config.server.address,
        max_workers=config.server.max_workers,
        max_message_bytes=config.server.max_message_bytes,
        grace_period_s=config.server.grace_period_s,
        service_names=[SERVICE_NAME],
    )
    compositing_pb2_grpc.add_CompositingServiceServicer_to_server(
        CompositingServicer(core, config), service.server
    )
    service.start()
    if config.capacity.idle_unload_s > 0:
        unloader = IdleUnloader(core.avatars.registry, config.capacity.idle_unload_s).start()
        service.on_stop(unloader.stop)
    service.on_stop(core.compositor.close)
    service.mark_serving()
    return service, core


def serve(config: CompositingConfig) -> None:
    """Run the compositing service until SIGTERM or SIGINT."""
    logger.info(
        "starting compositing service: avatars %s, inference %s (deadline %.0f s), "
        "JPEG quality %d, %s compositor threads",
        config.avatars_dir,
        config.inference.address,
        config.inference.timeout_s,
        config.output.jpeg_quality,
        config.compositor.workers or "auto",
    )
    service, core = create_service(config)
    try:
        service.serve_until_signal()
    finally:
        core.backend.close()
