"""gRPC front end of the compositing tier and its start-up (`lipsync serve compositing`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import numpy as np

from compositing_service.avatars import CompositingAvatars
from compositing_service.backend import GrpcInferenceBackend, InferenceBackend
from compositing_service.compositor import JPEG, PNG, Compositor
from compositing_service.config import CompositingConfig
from compositing_service.core import CompositingCore, RenderedBatch, RenderJob
from compositing_service.management import ManagementHandlers
from compositing_service.stream_server import StreamRenderHandler
from lipsync import __version__
from lipsync.errors import InvalidArgument
from lipsync.logs import avatar_id_var
from lipsync.metrics import ServiceMetrics, start_metrics_endpoint
from lipsync.protos import compositing_pb2, compositing_pb2_grpc
from lipsync.registry import IdleUnloader
from lipsync.serving import GrpcService

logger = logging.getLogger(__name__)

SERVICE_NAME = "compositing.CompositingService"
FRAME_MS = 40
# Bytes a Frame adds to a response beyond its own size: the field tag and the length prefix.
FRAME_FIELD_OVERHEAD = 16
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
    if request.visual_frames and not np.isfinite(np.frombuffer(request.visual_frames, "<f4")).all():
        raise InvalidArgument(
            "visual_frames contains NaN or Inf values: send finite float32 values in [0, 1]"
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


def check_response_size(
    response: compositing_pb2.CompositeBatchResponse,
    request: compositing_pb2.CompositeBatchRequest,
    max_message_bytes: int,
) -> None:
    """Raise InvalidArgument when the response is larger than the server may send."""
    size = response.ByteSize()
    if size > max_message_bytes:
        raise InvalidArgument(
            f"the {request.batch_size} frames requested (batch_size) encode to {size} bytes, "
            f"more than server.max_message_bytes ({max_message_bytes}): request fewer frames "
            "per call, use JPEG output, or use RenderUtterance"
        )


def split_response(
    response: compositing_pb2.RenderUtteranceResponse, max_message_bytes: int
) -> Iterator[compositing_pb2.RenderUtteranceResponse]:
    """Yield the response, or consecutive parts of its frames that each fit the message limit.

    The stage timings stay with the first part. A single frame larger than the limit raises
    InvalidArgument.
    """
    if response.ByteSize() <= max_message_bytes:
        yield response
        return

    header = compositing_pb2.RenderUtteranceResponse(
        total_frames=response.total_frames, width=response.width, height=response.height
    )
    part = compositing_pb2.RenderUtteranceResponse()
    part.CopyFrom(header)
    part.timings.CopyFrom(response.timings)
    for frame in response.frames:
        if header.ByteSize() + frame.ByteSize() + FRAME_FIELD_OVERHEAD > max_message_bytes:
            raise InvalidArgument(
                f"frame {frame.index} encodes to {len(frame.image)} bytes, more than "
                f"server.max_message_bytes ({max_message_bytes}) allows: use JPEG output"
            )
        if part.frames and part.ByteSize() + frame.ByteSize() + FRAME_FIELD_OVERHEAD > (
            max_message_bytes
        ):
            yield part
            part = compositing_pb2.RenderUtteranceResponse()
            part.CopyFrom(header)
        part.frames.append(frame)
    yield part


class CompositingServicer(
    StreamRenderHandler, ManagementHandlers, compositing_pb2_grpc.CompositingServiceServicer
):
    """Thin gRPC handlers over CompositingCore."""

    def __init__(
        self,
        core: CompositingCore,
        config: CompositingConfig,
        metrics: ServiceMetrics | None = None,
        *,
        in_process_inference: bool = False,
    ) -> None:
        self.core = core
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.in_process_inference = in_process_inference

    def _observe_stages(self, batch: RenderedBatch) -> None:
        """Record a batch's stage times in the metrics.

        Audio and inference are recorded only when the inference code runs in this process; in
        the split deployment the inference tier records them itself.
        """
        self.metrics.observe_stage("composite", batch.composite_ms)
        if self.in_process_inference:
            if batch.audio_ms > 0:  # reported on the first batch of a call only
                self.metrics.observe_stage("audio", batch.audio_ms)
            self.metrics.observe_stage("inference", batch.inference_ms)

    def InferBatchComposite(
        self, request: compositing_pb2.CompositeBatchRequest, context: grpc.ServicerContext
    ) -> compositing_pb2.CompositeBatchResponse:
        started = time.perf_counter()
        avatar_id_var.set(request.model_id)
        job = job_from_batch_request(request, self.config.limits.max_batch_size)
        response = compositing_pb2.CompositeBatchResponse(success=True, gpu_id=-1)
        for batch in self.core.render(job):
            self._observe_stages(batch)
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
        check_response_size(response, request, self.config.server.max_message_bytes)
        logger.debug(
            "InferBatchComposite done: avatar %s, %d frames, %.1f ms",
            request.model_id,
            len(response.composited_frames),
            response.total_time_ms,
        )
        return response

    def RenderUtterance(
        self, request: compositing_pb2.RenderUtteranceRequest, context: grpc.ServicerContext
    ) -> Iterator[compositing_pb2.RenderUtteranceResponse]:
        started = time.perf_counter()
        avatar_id_var.set(request.model_id)
        frames = 0
        for batch in self.core.render(job_from_render_request(request)):
            self._observe_stages(batch)
            response = compositing_pb2.RenderUtteranceResponse(
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
            frames += len(response.frames)
            yield from split_response(response, self.config.server.max_message_bytes)
        logger.debug(
            "RenderUtterance done: avatar %s, %d frames, %.1f ms",
            request.model_id,
            frames,
            (time.perf_counter() - started) * 1000,
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
            inference_server_url=self.config.inference.target,
        )


def create_service(
    config: CompositingConfig, backend: InferenceBackend | None = None
) -> tuple[GrpcService, CompositingCore]:
    """Start the compositing service; without a backend it connects to the inference tier."""
    metrics = ServiceMetrics()
    in_process_inference = backend is not None
    if backend is None:
        grpc_backend = GrpcInferenceBackend.from_config(config.inference, metrics)
        if not grpc_backend.wait_ready(config.inference.wait_ready_s):
            logger.warning(
                "inference tier at %s is not SERVING after %.0f s; starting anyway",
                config.inference.target,
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
        compositor=Compositor(config.compositor.workers, config.output.jpeg_mode),
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
        metrics=metrics,
        tls=config.server.tls,
        max_concurrent_requests=config.limits.max_concurrent_requests,
        max_concurrent_streams=config.streams.max_streams,
    )
    compositing_pb2_grpc.add_CompositingServiceServicer_to_server(
        CompositingServicer(core, config, metrics, in_process_inference=in_process_inference),
        service.server,
    )
    metrics.watch_avatars("compositing", core.avatars.registry)
    endpoint = start_metrics_endpoint(metrics, config.metrics)
    if endpoint is not None:
        service.on_stop(endpoint.stop)
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
        config.inference.target,
        config.inference.timeout_s,
        config.output.jpeg_quality,
        config.compositor.workers or "auto",
    )
    service, core = create_service(config)
    try:
        service.serve_until_signal()
    finally:
        core.backend.close()
