"""gRPC front end of the inference tier and its start-up (`lipsync serve inference`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np

from inference_service.audio import AudioEncoding
from inference_service.avatars import AvatarRegistry
from inference_service.config import InferenceConfig
from inference_service.core import InferenceCore, MouthBatch, MouthRequest
from inference_service.features import MEL_WINDOW_ROWS
from inference_service.management import ManagementHandlers
from inference_service.mel import N_MELS
from inference_service.models import (
    AudioEncoder,
    UNet,
    create_session,
    describe_providers,
    providers_for_device,
    select_providers,
)
from inference_service.placement import GpuPlacement
from inference_service.stream_server import StreamMouthsHandler
from lipsync.avatar.spec import FACE_SIZE
from lipsync.errors import FailedPrecondition, InvalidArgument
from lipsync.logs import avatar_id_var
from lipsync.metrics import ServiceMetrics, start_metrics_endpoint
from lipsync.protos import inference_pb2, inference_pb2_grpc
from lipsync.registry import IdleUnloader
from lipsync.serving import GrpcService

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.InferenceService"
CROP_BYTES = FACE_SIZE * FACE_SIZE * 3
# Field tags, lengths and the timing fields of a RenderMouthsResponse, with a wide margin.
RESPONSE_OVERHEAD_BYTES = 64 * 1024


def audio_encoding_from_proto(value: int) -> AudioEncoding:
    if value == inference_pb2.AUDIO_ENCODING_UNSPECIFIED:
        return AudioEncoding.PCM_F32LE
    try:
        return AudioEncoding(value)
    except ValueError:
        raise InvalidArgument(
            f"audio_encoding {value} is unknown: use PCM_S16LE (1) or PCM_F32LE (2)"
        ) from None


def request_from_proto(request: inference_pb2.RenderMouthsRequest) -> MouthRequest:
    return MouthRequest(
        avatar_id=request.model_id,
        raw_audio=request.raw_audio,
        sample_rate=request.sample_rate,
        encoding=audio_encoding_from_proto(request.audio_encoding),
        channels=request.audio_channels,
        start_frame=request.start_frame_idx,
        first_frame=request.first_frame,
        frame_count=request.frame_count,
        pad_to_frames=request.pad_to_frames,
        face_inputs=request.face_inputs,
        audio_features=request.audio_features,
    )


def split_batch(batch: MouthBatch, frames: int) -> Iterator[MouthBatch]:
    """Split a batch into consecutive parts of at most `frames` crops, sharing its arrays.

    The timings stay with the first part, so sums over the parts equal the batch's.
    """
    for start in range(0, len(batch.frame_indices), frames):
        stop = start + frames
        first = start == 0
        yield replace(
            batch,
            frame_indices=batch.frame_indices[start:stop],
            background_indices=batch.background_indices[start:stop],
            crops=batch.crops[start:stop],
            audio_ms=batch.audio_ms if first else 0.0,
            inference_ms=batch.inference_ms if first else 0.0,
            model_load_ms=batch.model_load_ms if first else 0.0,
        )


def batch_to_proto(batch: MouthBatch) -> inference_pb2.RenderMouthsResponse:
    crops = [
        inference_pb2.MouthCrop(frame_index=int(f), background_index=int(b), pixels=c.tobytes())
        for f, b, c in zip(batch.frame_indices, batch.background_indices, batch.crops, strict=True)
    ]
    return inference_pb2.RenderMouthsResponse(
        crops=crops,
        utterance_frames=batch.utterance_frames,
        audio_ms=batch.audio_ms,
        inference_ms=batch.inference_ms,
        model_load_ms=batch.model_load_ms,
        gpu_id=batch.gpu_id,
    )


class InferenceServicer(
    StreamMouthsHandler, ManagementHandlers, inference_pb2_grpc.InferenceServiceServicer
):
    """Thin gRPC handlers over InferenceCore."""

    def __init__(
        self,
        core: InferenceCore,
        metrics: ServiceMetrics | None = None,
        *,
        response_frames: int = 4,
    ) -> None:
        self.core = core
        self.metrics = metrics or ServiceMetrics()
        self.response_frames = response_frames

    def RenderMouths(
        self, request: inference_pb2.RenderMouthsRequest, context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.RenderMouthsResponse]:
        started = time.perf_counter()
        avatar_id_var.set(request.model_id)
        frames = 0
        for position, batch in enumerate(self.core.render_mouths(request_from_proto(request))):
            if position == 0:
                self.metrics.observe_stage("audio", batch.audio_ms)
            self.metrics.observe_stage("inference", batch.inference_ms)
            frames += len(batch.frame_indices)
            for part in split_batch(batch, self.response_frames):
                yield batch_to_proto(part)
        logger.debug(
            "RenderMouths done: avatar %s, %d frames, %.1f ms",
            request.model_id,
            frames,
            (time.perf_counter() - started) * 1000,
        )

    def DescribeAvatar(
        self, request: inference_pb2.DescribeAvatarRequest, context: grpc.ServicerContext
    ) -> inference_pb2.DescribeAvatarResponse:
        avatar_id_var.set(request.model_id)
        avatar, _ = self.core.avatars.get(request.model_id)
        return inference_pb2.DescribeAvatarResponse(
            model_id=avatar.spec.id,
            frame_count=avatar.spec.frame_count,
            crop_size=avatar.face_inputs.shape[1],
            gpu_id=avatar.gpu_id,
        )


def warm_up_audio_encoder(encoder: AudioEncoder) -> None:
    """Run the audio encoder on silent mel windows at batch 1 and at its full batch size."""
    for batch in sorted({1, encoder.batch_size}):
        encoder.encode(np.zeros((batch, 1, N_MELS, MEL_WINDOW_ROWS), dtype=np.float32))
    logger.info("warmed up the audio encoder at batch sizes 1 and %d", encoder.batch_size)


def check_message_size(config: InferenceConfig) -> None:
    """Check that one response of models.batch_size crops fits in server.max_message_bytes."""
    needed = config.models.batch_size * CROP_BYTES + RESPONSE_OVERHEAD_BYTES
    if needed > config.server.max_message_bytes:
        raise FailedPrecondition(
            f"server.max_message_bytes {config.server.max_message_bytes} cannot hold one response "
            f"of models.batch_size {config.models.batch_size} crops ({needed} bytes): raise it "
            "or lower the batch size"
        )


def build_core(config: InferenceConfig) -> InferenceCore:
    """Create the ONNX Runtime sessions (the audio encoder warmed up) and the avatar registry."""
    models = config.models
    providers = select_providers(models.device, models.gpu_id)
    on_gpu = isinstance(providers[0], tuple)
    logger.info("ONNX Runtime execution provider: %s", describe_providers(providers))
    if config.gpus.count and not on_gpu:
        logger.warning(
            "gpus.count is %d but the models run on the CPU provider: GPU ids are assigned and "
            "reported for placement only",
            config.gpus.count,
        )

    encoder = AudioEncoder(
        create_session(models.audio_encoder, providers, intra_op_threads=models.intra_op_threads),
        batch_size=models.audio_encoder_batch_size,
    )
    warm_up_audio_encoder(encoder)

    def create_unet(avatar_id: str, path: Path) -> tuple[UNet, int]:
        gpu = placement.choose(avatar_id)
        session = create_session(
            path, providers_for_device(providers, gpu), intra_op_threads=models.intra_op_threads
        )
        unet = UNet(session, path)
        unet.check_features(encoder.feature_dim, path)
        return unet, gpu

    capacity = config.capacity
    avatars = AvatarRegistry(
        config.avatars_dir,
        create_unet,
        max_models=capacity.max_models,
        max_memory_bytes=capacity.max_memory_bytes,
        policy=capacity.policy,
    )
    placement = GpuPlacement(
        count=config.gpus.count,
        policy=config.gpus.policy,
        preferred=config.gpus.preferred,
        default_gpu=models.gpu_id if on_gpu else -1,
        loaded_devices=lambda: [avatar.gpu_id for avatar in avatars.loaded()],
    )
    return InferenceCore(
        audio_encoder=encoder,
        avatars=avatars,
        batch_size=models.batch_size,
        max_audio_seconds=config.limits.max_audio_seconds,
    )


def create_service(config: InferenceConfig) -> tuple[GrpcService, InferenceCore]:
    """Build the core, start the gRPC server, preload and warm up, then report SERVING."""
    check_message_size(config)
    core = build_core(config)
    metrics = ServiceMetrics()
    metrics.watch_avatars("inference", core.avatars.registry)
    service = GrpcService(
        name="inference",
        address=config.server.address,
        max_workers=config.server.max_workers,
        max_message_bytes=config.server.max_message_bytes,
        grace_period_s=config.server.grace_period_s,
        service_names=[SERVICE_NAME],
        metrics=metrics,
        tls=config.server.tls,
        max_concurrent_requests=config.limits.max_concurrent_requests,
        max_concurrent_streams=config.streams.max_sessions,
    )
    servicer = InferenceServicer(core, metrics, response_frames=config.models.response_frames)
    servicer.configure_streams(config.streams)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, service.server)
    endpoint = start_metrics_endpoint(metrics, config.metrics)
    if endpoint is not None:
        service.on_stop(endpoint.stop)
    service.start()
    if config.capacity.idle_unload_s > 0:
        unloader = IdleUnloader(core.avatars.registry, config.capacity.idle_unload_s).start()
        service.on_stop(unloader.stop)
    for avatar_id in config.models.preload:
        core.warm_up(avatar_id)
    service.mark_serving()
    return service, core


def serve(config: InferenceConfig) -> None:
    """Run the inference service until SIGTERM or SIGINT."""
    logger.info(
        "starting inference service: avatars %s, audio encoder %s, batch %d, max audio %.0f s",
        config.avatars_dir,
        config.models.audio_encoder,
        config.models.batch_size,
        config.limits.max_audio_seconds,
    )
    service, _ = create_service(config)
    service.serve_until_signal()
