"""gRPC front end of the inference tier and its start-up (`lipsync serve inference`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc

from inference_service.audio import AudioEncoding
from inference_service.avatars import AvatarRegistry
from inference_service.config import InferenceConfig
from inference_service.core import InferenceCore, MouthBatch, MouthRequest
from inference_service.management import ManagementHandlers
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
from lipsync.errors import InvalidArgument
from lipsync.logs import avatar_id_var
from lipsync.protos import inference_pb2, inference_pb2_grpc
from lipsync.registry import IdleUnloader
from lipsync.serving import GrpcService

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.InferenceService"


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

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def RenderMouths(
        self, request: inference_pb2.RenderMouthsRequest, context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.RenderMouthsResponse]:
        avatar_id_var.set(request.model_id)
        for batch in self.core.render_mouths(request_from_proto(request)):
            yield batch_to_proto(batch)

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


def build_core(config: InferenceConfig) -> InferenceCore:
    """Create the ONNX Runtime sessions and the avatar registry from the config."""
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
    core = build_core(config)
    service = GrpcService(
        name="inference",
        address=config.server.address,
        max_workers=config.server.max_workers,
        max_message_bytes=config.server.max_message_bytes,
        grace_period_s=config.server.grace_period_s,
        service_names=[SERVICE_NAME],
    )
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(
        InferenceServicer(core), service.server
    )
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
