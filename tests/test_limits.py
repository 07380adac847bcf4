"""Configured limits of both tiers, each enforced on real processes started with small values.

A call over a concurrency or message-size limit gets RESOURCE_EXHAUSTED and the service keeps
serving. A request that can never fit (too much audio, too many frames, a response larger than
the message limit) gets INVALID_ARGUMENT. Every message names the limit's config key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lipsync.demo.run import ServiceProcess, free_port, start_service, wait_serving, write_configs
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

START_TIMEOUT_S = 120
MiB = 1024 * 1024
INFERENCE_MESSAGE_BYTES = 8 * MiB  # fits one response of 24 crops (7.4 MB)
COMPOSITING_MESSAGE_BYTES = 4 * MiB
MAX_AUDIO_SECONDS = 3.5
MAX_AUDIO_BYTES = 3 * 16000 * 4  # 3 s of float32 mono at 16 kHz
MAX_BATCH_SIZE = 30
# The compositing tier's threads for calls, and its open streams at most: streams held open
# must not take the threads that health checks and unary calls need.
COMPOSITING_WORKERS = 3
MAX_STREAMS = 2
CLIENT_OPTIONS = channel_options(64 * MiB)


def speech(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype("<f4").tobytes()


def update_yaml(path: Path, changes: dict) -> None:
    config = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class Limited:
    inference: ServiceProcess
    compositing: ServiceProcess


@pytest.fixture(scope="module")
def limited(demo_data, tmp_path_factory) -> Iterator[Limited]:
    """Both tiers with every limit small: one request at a time, little audio, 4-8 MiB messages."""
    run_dir = tmp_path_factory.mktemp("limits")
    inference_port, compositing_port = free_port(), free_port()
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )
    update_yaml(
        inference_config,
        {
            "server": {"max_message_bytes": INFERENCE_MESSAGE_BYTES},
            "limits": {"max_audio_seconds": MAX_AUDIO_SECONDS, "max_concurrent_requests": 1},
        },
    )
    update_yaml(
        compositing_config,
        {
            "server": {
                "max_message_bytes": COMPOSITING_MESSAGE_BYTES,
                "max_workers": COMPOSITING_WORKERS,
            },
            "streams": {"max_streams": MAX_STREAMS},
            "inference": {"max_message_bytes": INFERENCE_MESSAGE_BYTES},
            "limits": {
                "max_batch_size": MAX_BATCH_SIZE,
                "max_audio_bytes": MAX_AUDIO_BYTES,
                "max_concurrent_requests": 1,
            },
        },
    )
    services: list[ServiceProcess] = []
    try:
        services.append(
            start_service(
                "inference", inference_config, f"127.0.0.1:{inference_port}", run_dir / "logs"
            )
        )
        wait_serving(services[-1], START_TIMEOUT_S)
        services.append(
            start_service(
                "compositing",
                compositing_config,
                f"127.0.0.1:{compositing_port}",
                run_dir / "logs",
            )
        )
        wait_serving(services[-1], START_TIMEOUT_S)
        yield Limited(*services)
    finally:
        for service in reversed(services):
            code = service.stop()
            print(f"--- {service.name} log (exit code {code}) ---\n{service.log_tail(30)}")


@pytest.fixture
def public(limited) -> Iterator[compositing_pb2_grpc.CompositingServiceStub]:
    with grpc.insecure_channel(limited.compositing.address, options=CLIENT_OPTIONS) as channel:
        yield compositing_pb2_grpc.CompositingServiceStub(channel)


@pytest.fixture
def internal(limited) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(limited.inference.address, options=CLIENT_OPTIONS) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def batch(stub, seconds: float = 1.0, **fields) -> compositing_pb2.CompositeBatchResponse:
    fields = {"batch_size": 4, **fields}
    request = compositing_pb2.CompositeBatchRequest(
        model_id="demo", raw_audio=speech(seconds, seed=1), **fields
    )
    return stub.InferBatchComposite(request, timeout=60)


def mouths(stub, seconds: float = 1.0) -> list[inference_pb2.MouthCrop]:
    request = inference_pb2.RenderMouthsRequest(model_id="demo", raw_audio=speech(seconds, seed=2))
    return [crop for response in stub.RenderMouths(request, timeout=60) for crop in response.crops]


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return reply.status


def test_compositing_rejects_request_over_concurrency(limited, public):
    request = compositing_pb2.RenderUtteranceRequest(model_id="demo", raw_audio=speech(2.9, 3))
    # The call stays in progress while its responses are not read, because flow control stops
    # the server from sending more.
    in_flight = public.RenderUtterance(request, timeout=60)
    first = next(in_flight)

    with pytest.raises(grpc.RpcError) as caught:
        batch(public)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_concurrent_requests (1)" in caught.value.details()
    assert "InferBatchComposite" in caught.value.details()
    assert health_status(limited.compositing.address) == health_pb2.HealthCheckResponse.SERVING

    frames = len(first.frames) + sum(len(r.frames) for r in in_flight)
    assert frames == 71
    assert len(batch(public).composited_frames) == 4


def test_inference_rejects_request_over_concurrency(limited, internal):
    request = inference_pb2.RenderMouthsRequest(model_id="demo", raw_audio=speech(2.9, seed=4))
    in_flight = internal.RenderMouths(request, timeout=60)
    first = next(in_flight)

    with pytest.raises(grpc.RpcError) as caught:
        mouths(internal)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_concurrent_requests (1)" in caught.value.details()
    assert health_status(limited.inference.address) == health_pb2.HealthCheckResponse.SERVING

    crops = len(first.crops) + sum(len(r.crops) for r in in_flight)
    assert crops == 71
    assert len(mouths(internal)) == 24


def test_stream_does_not_count_as_request(public):
    def requests() -> Iterator[compositing_pb2.StreamRenderRequest]:
        config = compositing_pb2.StreamConfig(model_id="demo", sample_rate=16000)
        yield compositing_pb2.StreamRenderRequest(config=config)
        yield compositing_pb2.StreamRenderRequest(
            audio=compositing_pb2.AudioChunk(data=speech(1.0, seed=5))
        )

    stream = public.StreamRender(requests(), timeout=60)
    first = next(stream)
    assert len(batch(public).composited_frames) == 4
    frames = len(first.frames) + sum(len(r.frames) for r in stream)
    assert frames == 24


def test_open_streams_leave_threads_for_calls(limited, public):
    release = threading.Event()

    def held_open() -> Iterator[compositing_pb2.StreamRenderRequest]:
        config = compositing_pb2.StreamConfig(model_id="demo", sample_rate=16000)
        yield compositing_pb2.StreamRenderRequest(config=config)
        yield compositing_pb2.StreamRenderRequest(
            audio=compositing_pb2.AudioChunk(data=speech(1.0, seed=7))
        )
        release.wait(60)

    streams = [public.StreamRender(held_open(), timeout=60) for _ in range(MAX_STREAMS)]
    try:
        first_frames = [len(next(stream).frames) for stream in streams]
        # Opened only once the others hold their slots, so it is the one over the limit.
        streams.append(public.StreamRender(held_open(), timeout=60))
        with pytest.raises(grpc.RpcError) as caught:
            next(streams[MAX_STREAMS])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"streams.max_streams ({MAX_STREAMS})" in caught.value.details()

        # More streams are open than server.max_workers leaves free, yet calls get a thread.
        assert health_status(limited.compositing.address) == health_pb2.HealthCheckResponse.SERVING
        assert len(batch(public).composited_frames) == 4
    finally:
        release.set()
    for first, stream in zip(first_frames, streams[:MAX_STREAMS], strict=True):
        assert first + sum(len(response.frames) for response in stream) == 24


def test_batch_size_over_limit(public):
    with pytest.raises(grpc.RpcError) as caught:
        batch(public, batch_size=MAX_BATCH_SIZE + 1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"batch_size {MAX_BATCH_SIZE + 1}" in caught.value.details()
    assert "limits.max_batch_size" in caught.value.details()
    assert len(batch(public, batch_size=MAX_BATCH_SIZE).composited_frames) == MAX_BATCH_SIZE


def test_compositing_audio_over_limit(public):
    with pytest.raises(grpc.RpcError) as caught:
        batch(public, seconds=3.5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limits.max_audio_bytes" in caught.value.details()
    assert str(MAX_AUDIO_BYTES) in caught.value.details()


def test_inference_audio_over_limit(internal):
    with pytest.raises(grpc.RpcError) as caught:
        mouths(internal, seconds=4.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_audio" in caught.value.details()
    assert "3.5 s" in caught.value.details()


def test_compositing_message_over_limit(public):
    with pytest.raises(grpc.RpcError) as caught:
        public.InferBatchComposite(
            compositing_pb2.CompositeBatchRequest(
                model_id="demo", raw_audio=bytes(5 * MiB), batch_size=4
            ),
            timeout=60,
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(batch(public).composited_frames) == 4


def test_inference_message_over_limit(internal):
    request = inference_pb2.RenderMouthsRequest(model_id="demo", raw_audio=bytes(9 * MiB))
    with pytest.raises(grpc.RpcError) as caught:
        list(internal.RenderMouths(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(mouths(internal)) == 24


def test_response_over_message_limit(public):
    with pytest.raises(grpc.RpcError) as caught:
        batch(public, batch_size=10, output_format=compositing_pb2.PNG)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "server.max_message_bytes" in caught.value.details()
    assert "batch_size" in caught.value.details()


def test_render_utterance_splits_large_responses(public):
    request = compositing_pb2.RenderUtteranceRequest(
        model_id="demo", raw_audio=speech(1.0, seed=6), output_format=compositing_pb2.PNG
    )
    responses = list(public.RenderUtterance(request, timeout=60))
    frames = [frame for response in responses for frame in response.frames]

    assert [frame.index for frame in frames] == list(range(24))
    assert len(responses) > 1
    assert all(r.ByteSize() <= COMPOSITING_MESSAGE_BYTES for r in responses)
    assert all(frame.image.startswith(b"\x89PNG") for frame in frames)
