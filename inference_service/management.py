"""gRPC handlers that list, load, unload and report the inference tier's avatars."""

from __future__ import annotations

import grpc

from inference_service.avatars import AvatarRegistry
from lipsync.avatar.spec import SPEC_FILE, validate_avatar_id
from lipsync.errors import NotFound
from lipsync.logs import avatar_id_var
from lipsync.protos import inference_pb2
from lipsync.registry import Entry


def model_info(avatars: AvatarRegistry, avatar_id: str) -> inference_pb2.ModelInfo:
    """Describe one avatar of the registry, loaded or not."""
    entry: Entry | None = avatars.registry.get(avatar_id)
    folder = str(avatars.avatars_dir / avatar_id)
    info = inference_pb2.ModelInfo(model_id=avatar_id, loaded=entry is not None, model_path=folder)
    if entry is not None:
        info.gpu_id = entry.item.gpu_id
        info.stats.CopyFrom(
            inference_pb2.ModelStats(
                usage_count=entry.usage_count,
                last_used_unix_ms=entry.last_used_unix_ms,
                total_inference_time_ms=entry.total_inference_time_ms,
                memory_bytes=entry.item.memory_bytes,
                loaded_unix_ms=entry.loaded_unix_ms,
                active_users=entry.active_users,
            )
        )
    return info


class ManagementHandlers:
    """Mixin of InferenceServicer serving ListModels, LoadModel, UnloadModel and GetModelStats."""

    def _info(self, avatar_id: str) -> inference_pb2.ModelInfo:
        return model_info(self.core.avatars, avatar_id)

    def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        avatars_dir = self.core.avatars.avatars_dir
        ids = (
            sorted(p.name for p in avatars_dir.iterdir() if (p / SPEC_FILE).is_file())
            if avatars_dir.is_dir()
            else []
        )
        return inference_pb2.ListModelsResponse(models=[self._info(i) for i in ids])

    def LoadModel(
        self, request: inference_pb2.LoadModelRequest, context: grpc.ServicerContext
    ) -> inference_pb2.LoadModelResponse:
        avatar_id_var.set(request.model_id)
        validate_avatar_id(request.model_id)
        _, load_ms = self.core.avatars.registry.load(request.model_id, force=request.force_reload)
        return inference_pb2.LoadModelResponse(
            load_time_ms=load_ms, model=self._info(request.model_id)
        )

    def UnloadModel(
        self, request: inference_pb2.UnloadModelRequest, context: grpc.ServicerContext
    ) -> inference_pb2.UnloadModelResponse:
        avatar_id_var.set(request.model_id)
        validate_avatar_id(request.model_id)
        return inference_pb2.UnloadModelResponse(
            unloaded=self.core.avatars.registry.unload(request.model_id)
        )

    def GetModelStats(
        self, request: inference_pb2.GetModelStatsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.GetModelStatsResponse:
        registry = self.core.avatars.registry
        entries = registry.entries()
        if request.model_id:
            validate_avatar_id(request.model_id)
            if request.model_id not in entries:
                raise NotFound(f"avatar {request.model_id!r} is not loaded on the inference tier")
            ids = [request.model_id]
        else:
            ids = sorted(entries)
        sessions = getattr(self, "stream_sessions", None)
        return inference_pb2.GetModelStatsResponse(
            models=[self._info(i) for i in ids],
            max_models=registry.max_models,
            loaded_models=len(entries),
            total_memory_bytes=registry.total_memory_bytes(),
            max_memory_bytes=registry.max_memory_bytes,
            active_streams=sessions.count() if sessions is not None else 0,
        )
