"""Management calls on both tiers: load, evict, unload, report, and GPU placement by policy."""

from __future__ import annotations

import json

import cv2
import grpc
import numpy as np
import pytest
import yaml

from lipsync.avatar.backgrounds import numbered_images
from lipsync.avatar.build import build_avatar
from lipsync.demo.run import free_port, start_service, wait_serving
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

AVATARS = ["alpha", "beta", "gamma"]
AUDIO = (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 200)).astype("<f4").tobytes()


@pytest.fixture(scope="module")
def small_avatars(demo_data, tmp_path_factory):
    """Three 10-frame avatars cut from the demo avatar, in an avatars folder of their own."""
    root = tmp_path_factory.mktemp("managed")
    frames = root / "frames"
    frames.mkdir()
    boxes = json.loads((demo_data.avatar_dir / "crop_rects.json").read_text())[:10]
    for i, path in enumerate(numbered_images(demo_data.avatar_dir / "frames")[:10]):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.imread(str(path)))
    for avatar_id in AVATARS:
        build_avatar(
            root / "avatars",
            avatar_id,
            backgrounds=frames,
            crop_rects=np.array(boxes),
            unet=demo_data.avatar_dir / "unet.onnx",
        )
    return root / "avatars"


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def managed(demo_data, small_avatars, tmp_path_factory):
    """Both tiers with room for two avatars, and the inference tier spreading them over 3 GPUs."""
    run = tmp_path_factory.mktemp("managed_run")
    inference_port, compositing_port = free_port(), free_port()
    inference = write_yaml(
        run / "inference.yaml",
        {
            "server": {"host": "127.0.0.1", "port": inference_port, "grace_period_s": 2},
            "avatars_dir": str(small_avatars),
            "models": {"audio_encoder": str(demo_data.audio_encoder)},
            "capacity": {"max_models": 2, "policy": "lru"},
            "gpus": {"count": 3, "policy": "round-robin", "preferred": {"gamma": 2}},
        },
    )
    compositing = write_yaml(
        run / "compositing.yaml",
        {
            "server": {"host": "127.0.0.1", "port": compositing_port, "grace_period_s": 2},
            "avatars_dir": str(small_avatars),
            "inference": {"address": f"127.0.0.1:{inference_port}"},
            "capacity": {"max_models": 2, "policy": "lru"},
            "backgrounds": {"storage": "encoded"},
        },
    )
    services = [start_service("inference", inference, f"127.0.0.1:{inference_port}", run)]
    try:
        wait_serving(services[0], 120)
        services.append(
            start_service("compositing", compositing, f"127.0.0.1:{compositing_port}", run)
        )
        wait_serving(services[1], 120)
        options = channel_options(64 * 1024 * 1024)
        with (
            grpc.insecure_channel(services[1].address, options=options) as public,
            grpc.insecure_channel(services[0].address, options=options) as internal,
        ):
            yield (
                compositing_pb2_grpc.CompositingServiceStub(public),
                inference_pb2_grpc.InferenceServiceStub(internal),
            )
    finally:
        for service in reversed(services):
            service.stop()
            print(f"--- {service.name} log ---\n{service.log_tail(40)}")


def loaded_on_both(public, internal) -> tuple[list[str], list[str]]:
    outer = public.GetModelStats(compositing_pb2.GetModelStatsRequest(), timeout=30)
    inner = internal.GetModelStats(inference_pb2.GetModelStatsRequest(), timeout=30)
    return [m.model_id for m in outer.models], [m.model_id for m in inner.models]


def test_list_models_shows_every_package(managed):
    public, _ = managed
    models = public.ListModels(compositing_pb2.ListModelsRequest(), timeout=30).models
    assert [m.model_id for m in models] == AVATARS
    assert all(m.crop_rects_path.endswith("crop_rects.json") for m in models)


def test_load_evicts_least_recently_used_on_both_tiers(managed):
    public, internal = managed
    for avatar_id in AVATARS:
        reply = public.LoadModel(compositing_pb2.LoadModelRequest(model_id=avatar_id), timeout=60)
        assert reply.success
    assert loaded_on_both(public, internal) == (["beta", "gamma"], ["beta", "gamma"])

    stats = public.GetModelStats(compositing_pb2.GetModelStatsRequest(), timeout=30)
    assert stats.max_models == 2
    assert stats.loaded_models == 2
    assert stats.total_memory_bytes == sum(m.stats.memory_bytes for m in stats.models)


def test_gpu_placement_follows_policy_and_preference(managed):
    public, internal = managed
    for avatar_id in ["alpha", "beta"]:
        public.UnloadModel(compositing_pb2.UnloadModelRequest(model_id=avatar_id), timeout=30)
    reply = internal.LoadModel(inference_pb2.LoadModelRequest(model_id="alpha"), timeout=60)
    gpus = {"alpha": reply.model.gpu_id}
    stats = internal.GetModelStats(inference_pb2.GetModelStatsRequest(), timeout=30)
    gpus.update({m.model_id: m.gpu_id for m in stats.models})
    assert gpus["gamma"] == 2
    assert gpus["alpha"] in (0, 1, 2)
    assert gpus["alpha"] != gpus.get("beta", -1)


def test_force_reload_loads_again(managed):
    public, _ = managed
    public.LoadModel(compositing_pb2.LoadModelRequest(model_id="beta"), timeout=60)
    again = public.LoadModel(compositing_pb2.LoadModelRequest(model_id="beta"), timeout=60)
    forced = public.LoadModel(
        compositing_pb2.LoadModelRequest(model_id="beta", force_reload=True), timeout=60
    )
    assert again.load_time_ms == 0
    assert forced.load_time_ms > 0
    assert forced.stats.memory_bytes > 0


def test_unload_removes_from_both_tiers_and_render_reloads(managed):
    public, internal = managed
    public.LoadModel(compositing_pb2.LoadModelRequest(model_id="alpha"), timeout=60)
    reply = public.UnloadModel(compositing_pb2.UnloadModelRequest(model_id="alpha"), timeout=30)
    assert reply.success
    outer, inner = loaded_on_both(public, internal)
    assert "alpha" not in outer
    assert "alpha" not in inner

    batch = public.InferBatchComposite(
        compositing_pb2.CompositeBatchRequest(model_id="alpha", raw_audio=AUDIO, batch_size=5),
        timeout=60,
    )
    assert len(batch.composited_frames) == 5
    assert batch.model_loaded
    assert batch.model_load_time_ms > 0


@pytest.mark.parametrize(
    "call, request_type, code",
    [
        ("LoadModel", "LoadModelRequest", "NOT_FOUND"),
        ("UnloadModel", "UnloadModelRequest", "NOT_FOUND"),
        ("GetModelStats", "GetModelStatsRequest", "NOT_FOUND"),
    ],
)
def test_unknown_avatar_is_not_found(managed, call, request_type, code):
    public, _ = managed
    request = getattr(compositing_pb2, request_type)(model_id="nobody")
    with pytest.raises(grpc.RpcError) as caught:
        getattr(public, call)(request, timeout=30)
    assert caught.value.code().name == code
    assert "nobody" in caught.value.details()


def test_path_in_model_id_is_invalid(managed):
    public, internal = managed
    for stub, module in ((public, compositing_pb2), (internal, inference_pb2)):
        with pytest.raises(grpc.RpcError) as caught:
            stub.LoadModel(module.LoadModelRequest(model_id="../alpha"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_reports_both_tiers(managed):
    public, _ = managed
    health = public.Health(compositing_pb2.HealthRequest(), timeout=30)
    assert health.healthy
    assert health.inference_server_healthy
    assert health.max_models == 2
    assert health.version


def test_load_over_memory_limit_is_resource_exhausted(demo_data, small_avatars, tmp_path):
    port = free_port()
    config = write_yaml(
        tmp_path / "inference.yaml",
        {
            "server": {"host": "127.0.0.1", "port": port, "grace_period_s": 1},
            "avatars_dir": str(small_avatars),
            "models": {"audio_encoder": str(demo_data.audio_encoder)},
            "capacity": {"max_memory_bytes": 1000},
        },
    )
    service = start_service("inference", config, f"127.0.0.1:{port}", tmp_path)
    try:
        wait_serving(service, 120)
        with grpc.insecure_channel(service.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.LoadModel(inference_pb2.LoadModelRequest(model_id="alpha"), timeout=60)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_memory_bytes=1000" in caught.value.details()
            stats = stub.GetModelStats(inference_pb2.GetModelStatsRequest(), timeout=30)
            assert stats.loaded_models == 0
    finally:
        service.stop()


def test_encoded_backgrounds_give_the_same_frames_as_decoded(managed, split_deployment):
    public, _ = managed
    request = dict(raw_audio=AUDIO, batch_size=6, output_format=compositing_pb2.PNG)
    encoded = public.InferBatchComposite(
        compositing_pb2.CompositeBatchRequest(model_id="alpha", **request), timeout=60
    )
    with grpc.insecure_channel(
        split_deployment.compositing.address, options=channel_options(64 * 1024 * 1024)
    ) as channel:
        decoded = compositing_pb2_grpc.CompositingServiceStub(channel).InferBatchComposite(
            compositing_pb2.CompositeBatchRequest(model_id="demo", **request), timeout=60
        )
    assert len(encoded.composited_frames) == 6
    assert list(encoded.composited_frames) == list(decoded.composited_frames)
