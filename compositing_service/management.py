"""gRPC handlers of the legacy management calls, acting on both tiers as the original API did."""

from __future__ import annotations

import grpc

from lipsync.avatar.spec import SPEC_FILE, resolve_avatar_dir, validate_avatar_id
from lipsync.errors import NotFound
from lipsync.logs import avatar_id_var
from lipsync.protos import compositing_pb2, inference_pb2
from lipsync.registry import Entry


def _stats(
    entry: Entry | None, inference: inference_pb2.ModelInfo | None
) -> compositing_pb2.ModelStats:
    """Merge one avatar's statistics from both tiers (memory is the sum of both)."""
    stats = compositing_pb2.ModelStats()
    if entry is not None:
        stats.usage_count = entry.usage_count
        stats.last_used_unix_ms = entry.last_used_unix_ms
        stats.memory_bytes = entry.item.memory_bytes
        stats.loaded_unix_ms = entry.loaded_unix_ms
    if inference is not None and inference.loaded:
        stats.total_inference_time_ms = inference.stats.total_inference_time_ms
        stats.memory_bytes += inference.stats.memory_bytes
    return stats


class ManagementHandlers:
    """Mixin of CompositingServicer: ListModels, LoadModel, UnloadModel, GetModelStats."""

    def _model_info(
        self, avatar_id: str, inference: inference_pb2.ModelInfo | None = None
    ) -> compositing_pb2.ModelInfo:
        avatars = self.core.avatars
        folder = avatars.avatars_dir / avatar_id
        entry = avatars.registry.get(avatar_id)
        spec = entry.item.spec if entry is not None else None
        return compositing_pb2.ModelInfo(
            model_id=avatar_id,
            loaded=entry is not None,
            model_path=str(folder / (spec.unet if spec else "unet.onnx")),
            background_dir=str(folder / (spec.backgrounds if spec else "frames")),
            crop_rects_path=str(folder / (spec.crop_rects if spec else "crop_rects.json")),
            stats=_stats(entry, inference),
        )

    def _inference_models(self, model_id: str = "") -> dict[str, inference_pb2.ModelInfo]:
        reply = self.core.backend.model_stats(model_id)
        return {info.model_id: info for info in reply.models}

    def ListModels(
        self, request: compositing_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> compositing_pb2.ListModelsResponse:
        avatars_dir = self.core.avatars.avatars_dir
        ids = (
            sorted(p.name for p in avatars_dir.iterdir() if (p / SPEC_FILE).is_file())
            if avatars_dir.is_dir()
            else []
        )
        inference = self._inference_models()
        return compositing_pb2.ListModelsResponse(
            models=[self._model_info(i, inference.get(i)) for i in ids]
        )

    def LoadModel(
        self, request: compositing_pb2.LoadModelRequest, context: grpc.ServicerContext
    ) -> compositing_pb2.LoadModelResponse:
        avatar_id_var.set(request.model_id)
        validate_avatar_id(request.model_id)
        resolve_avatar_dir(self.core.avatars.avatars_dir, request.model_id)
        inference = self.core.backend.load_model(request.model_id, request.force_reload)
        _, load_ms = self.core.avatars.registry.load(request.model_id, force=request.force_reload)
        info = self._model_info(request.model_id, inference.model)
        return compositing_pb2.LoadModelResponse(
            success=True, load_time_ms=load_ms + inference.load_time_ms, stats=info.stats
        )

    def UnloadModel(
        self, request: compositing_pb2.UnloadModelRequest, context: grpc.ServicerContext
    ) -> compositing_pb2.UnloadModelResponse:
        avatar_id_var.set(request.model_id)
        validate_avatar_id(request.model_id)
        resolve_avatar_dir(self.core.avatars.avatars_dir, request.model_id)
        self.core.backend.unload_model(request.model_id)
        self.core.avatars.registry.unload(request.model_id)
        return compositing_pb2.UnloadModelResponse(success=True)

    def GetModelStats(
        self, request: compositing_pb2.GetModelStatsRequest, context: grpc.ServicerContext
    ) -> compositing_pb2.GetModelStatsResponse:
        registry = self.core.avatars.registry
        entries = registry.entries()
        if request.model_id:
            validate_avatar_id(request.model_id)
            if request.model_id not in entries:
                raise NotFound(f"avatar {request.model_id!r} is not loaded")
            ids = [request.model_id]
        else:
            ids = sorted(entries)
        inference = self._inference_models()
        models = [self._model_info(i, inference.get(i)) for i in ids]
        sessions = getattr(self, "stream_sessions", None)
        return compositing_pb2.GetModelStatsResponse(
            models=models,
            max_models=registry.max_models,
            loaded_models=len(entries),
            total_memory_bytes=sum(m.stats.memory_bytes for m in models),
            max_memory_bytes=registry.max_memory_bytes,
            active_streams=sessions.count() if sessions is not None else 0,
        )
