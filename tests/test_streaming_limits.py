"""Stream limits: the idle timeout and the open-stream limit on both tiers.

The compositing tier runs with its own short limits in a separate pair of services. The
inference tier's handler runs in a gRPC server in the test process, where `configure_streams`
sets its limits.
"""

from __future__ import annotations

import queue
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import yaml

from inference_service.config import InferenceConfig, StreamsConfig
from inference_service.server import InferenceServicer, build_core
from lipsync.demo.run import free_port, speech_wav, start_service, wait_serving, write_configs
from lipsync.grpc_status import StatusInterceptor
from lipsync.media import read_wav
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

IDLE_TIMEOUT_S = 1.0
POLL_TIMEOUT_S = 15.0
OPTIONS = channel_options(64 * 1024 * 1024)


@pytest.fixture(scope="module")
def speech_bytes() -> bytes:
    return read_wav(speech_wav()).data[64000:96000]  # 1 s of 16-bit speech


@pytest.fixture(scope="module")
def limited_pair(demo_data, tmp_path_factory):
    """Both tiers as processes; the compositing tier allows 1 stream and 1 s of idle time."""
    run_dir = tmp_path_factory.mktemp("stream-limits")
    inference_port, compositing_port = free_port(), free_port()
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )
    config = yaml.safe_load(compositing_config.read_text())
    config["streams"] = {"max_streams": 1, "idle_timeout_s": IDLE_TIMEOUT_S}
    compositing_config.write_text(yaml.safe_dump(config))

    services = []
    try:
        for name, path, port in (
            ("inference", inference_config, inference_port),
            ("compositing", compositing_config, compositing_port),
        ):
            services.append(start_service(name, path, f"127.0.0.1:{port}", run_dir / "logs"))
            wait_serving(services[-1], 120)
        with grpc.insecure_channel(services[1].address, options=OPTIONS) as channel:
            yield compositing_pb2_grpc.CompositingServiceStub(channel)
    finally:
        for service in reversed(services):
            service.stop()


class QueuedRequests:
    """A request iterator fed from a queue; None ends it."""

    def __init__(self, *messages) -> None:
        self.queue: queue.Queue = queue.Queue()
        for message in messages:
            self.queue.put(message)

    def __iter__(self):
        return iter(self.queue.get, None)


def render_config() -> compositing_pb2.StreamRenderRequest:
    return compositing_pb2.StreamRenderRequest(
        config=compositing_pb2.StreamConfig(
            model_id="demo", audio_encoding=compositing_pb2.PCM_S16LE
        )
    )


def render_audio(data: bytes) -> compositing_pb2.StreamRenderRequest:
    return compositing_pb2.StreamRenderRequest(audio=compositing_pb2.AudioChunk(data=data))


def wait_until(predicate) -> bool:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def public_streams(stub) -> int:
    return stub.GetModelStats(compositing_pb2.GetModelStatsRequest(), timeout=10).active_streams


def test_compositing_closes_idle_stream(limited_pair, speech_bytes):
    requests = QueuedRequests(render_config(), render_audio(speech_bytes[:16000]))
    call = limited_pair.StreamRender(iter(requests), timeout=60)

    with pytest.raises(grpc.RpcError) as caught:
        for _ in call:
            pass

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "streams.idle_timeout_s" in caught.value.details()
    assert f"{IDLE_TIMEOUT_S:g} s" in caught.value.details()
    assert wait_until(lambda: public_streams(limited_pair) == 0)


def test_compositing_closes_stream_idle_before_config(limited_pair):
    with pytest.raises(grpc.RpcError) as caught:
        for _ in limited_pair.StreamRender(iter(QueuedRequests()), timeout=60):
            pass

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "streams.idle_timeout_s" in caught.value.details()


def test_compositing_keeps_stream_that_sends(limited_pair, speech_bytes):
    # Chunks every 0.4 s for 2 s: longer than the idle timeout in all, shorter between chunks.
    requests = QueuedRequests(render_config())
    call = limited_pair.StreamRender(iter(requests), timeout=60)
    for offset in range(0, 32000, 6400):
        requests.queue.put(render_audio(speech_bytes[offset : offset + 6400]))
        time.sleep(0.4)
    requests.queue.put(None)

    frames = [f for response in call for f in response.frames]

    assert [f.index for f in frames] == list(range(len(frames)))
    assert len(frames) > 20


def test_compositing_rejects_stream_over_limit(limited_pair, speech_bytes):
    assert wait_until(lambda: public_streams(limited_pair) == 0)
    first_requests = QueuedRequests(render_config(), render_audio(speech_bytes))
    first = limited_pair.StreamRender(iter(first_requests), timeout=60)
    next(first)

    with pytest.raises(grpc.RpcError) as caught:
        for _ in limited_pair.StreamRender(iter(QueuedRequests(render_config())), timeout=60):
            pass

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "streams.max_streams (1)" in caught.value.details()
    first_requests.queue.put(None)
    assert len([f for response in first for f in response.frames]) > 0
    assert wait_until(lambda: public_streams(limited_pair) == 0)


# --- the inference tier's handler in this process ---------------------------------------------


@pytest.fixture(scope="module")
def inference_server(demo_data):
    """InferenceServicer on a loopback port with 1 stream and 1 s of idle time at most."""
    config = InferenceConfig.model_validate(
        {
            "server": {"port": 0},
            "avatars_dir": str(demo_data.avatars_dir),
            "models": {"audio_encoder": str(demo_data.audio_encoder), "device": "cpu"},
        }
    )
    servicer = InferenceServicer(build_core(config))
    servicer.configure_streams(StreamsConfig(max_sessions=1, idle_timeout_s=IDLE_TIMEOUT_S))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[StatusInterceptor()],
        options=OPTIONS,
    )
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
            yield servicer, inference_pb2_grpc.InferenceServiceStub(channel)
    finally:
        server.stop(grace=None)


def mouths_start() -> inference_pb2.StreamMouthsRequest:
    return inference_pb2.StreamMouthsRequest(
        start=inference_pb2.StreamStart(model_id="demo", audio_encoding=inference_pb2.PCM_S16LE)
    )


def mouths_audio(data: bytes) -> inference_pb2.StreamMouthsRequest:
    return inference_pb2.StreamMouthsRequest(audio=inference_pb2.StreamAudio(data=data))


def test_inference_closes_idle_stream(inference_server, speech_bytes):
    servicer, stub = inference_server
    requests = QueuedRequests(mouths_start(), mouths_audio(speech_bytes[:16000]))

    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.StreamMouths(iter(requests), timeout=60):
            pass

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "streams.idle_timeout_s" in caught.value.details()
    assert wait_until(lambda: servicer.stream_sessions.count() == 0)


def test_inference_rejects_stream_over_limit(inference_server, speech_bytes):
    servicer, stub = inference_server
    first_requests = QueuedRequests(mouths_start(), mouths_audio(speech_bytes))
    first = stub.StreamMouths(iter(first_requests), timeout=60)
    next(first)
    assert servicer.stream_sessions.count() == 1

    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.StreamMouths(iter(QueuedRequests(mouths_start())), timeout=60):
            pass

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "streams.max_sessions (1)" in caught.value.details()
    first.cancel()
    assert wait_until(lambda: servicer.stream_sessions.count() == 0)


def test_inference_paced_stream_kept_open_by_empty_chunks(inference_server, speech_bytes):
    servicer, stub = inference_server
    start = mouths_start()
    start.start.paced = True
    requests = QueuedRequests(start, mouths_audio(speech_bytes[:8000]))
    call = stub.StreamMouths(iter(requests), timeout=60)
    # 2 s with an empty chunk every 0.5 s: the stream stays open and fills the gap.
    for _ in range(4):
        time.sleep(0.5)
        requests.queue.put(mouths_audio(b""))
    requests.queue.put(None)

    crops = [c for response in call for c in response.crops]

    filled = np.array([c.silence_fill for c in crops])
    assert [c.frame_index for c in crops] == list(range(len(crops)))
    assert filled.sum() >= 25
    assert not filled[:3].any()
