"""A client of the original API, run as its own process with stubs generated from the original
.proto (so the product's own stubs are never imported here). Prints one JSON line of results."""

import json
import sys

import grpc
import numpy as np
from compositing_pb2 import (
    CompositeBatchRequest,
    GetModelStatsRequest,
    HealthRequest,
    ListModelsRequest,
    LoadModelRequest,
    UnloadModelRequest,
)
from compositing_pb2_grpc import CompositingServiceStub

address, avatar = sys.argv[1], sys.argv[2]
options = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
stub = CompositingServiceStub(grpc.insecure_channel(address, options=options))
rng = np.random.default_rng(0)
t = np.arange(15360) / 16000
speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype("<f4")
results = {}

reply = stub.InferBatchComposite(
    CompositeBatchRequest(
        model_id=avatar, raw_audio=speech.tobytes(), batch_size=24, start_frame_idx=7, sample_rate=0
    ),
    timeout=120,
)
results["batch"] = {
    "frames": len(reply.composited_frames),
    "jpeg": all(f[:3] == b"\xff\xd8\xff" for f in reply.composited_frames),
    "success": reply.success,
    "error": reply.error,
    "timings": [
        reply.inference_time_ms,
        reply.composite_time_ms,
        reply.total_time_ms,
        reply.audio_processing_ms,
    ],
    "gpu_id": reply.gpu_id,
}

faces = rng.random((4, 6, 320, 320), dtype=np.float32)
reply = stub.InferBatchComposite(
    CompositeBatchRequest(
        model_id=avatar, raw_audio=speech.tobytes(), batch_size=4, visual_frames=faces.tobytes()
    ),
    timeout=120,
)
results["visual_frames"] = len(reply.composited_frames)

tensor = rng.random((32, 16, 16), dtype=np.float32)
reply = stub.InferBatchComposite(
    CompositeBatchRequest(model_id=avatar, batch_size=3, audio_features=tensor.tobytes()),
    timeout=120,
)
results["audio_features"] = len(reply.composited_frames)

try:
    stub.InferBatchComposite(
        CompositeBatchRequest(
            model_id=avatar,
            raw_audio=speech.tobytes(),
            batch_size=4,
            visual_frames=faces[:2].tobytes(),
        ),
        timeout=60,
    )
    results["short_visual_frames"] = "OK"
except grpc.RpcError as error:
    results["short_visual_frames"] = [error.code().name, error.details()]

models = stub.ListModels(ListModelsRequest(), timeout=60).models
results["list"] = {m.model_id: m.loaded for m in models}
load = stub.LoadModel(LoadModelRequest(model_id=avatar, force_reload=True), timeout=120)
results["load"] = [load.success, load.load_time_ms, load.stats.memory_bytes]
stats = stub.GetModelStats(GetModelStatsRequest(), timeout=60)
results["stats"] = [
    stats.loaded_models,
    stats.total_memory_bytes,
    [m.model_id for m in stats.models],
]
health = stub.Health(HealthRequest(), timeout=60)
results["health"] = [health.healthy, health.inference_server_healthy, health.version]
results["unload"] = stub.UnloadModel(UnloadModelRequest(model_id=avatar), timeout=60).success
after = stub.GetModelStats(GetModelStatsRequest(), timeout=60)
results["after_unload"] = [m.model_id for m in after.models]
print(json.dumps(results))
