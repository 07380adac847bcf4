"""Faults between the tiers, with real processes: the inference tier killed or stalled mid-call.

A client of the compositing tier must get UNAVAILABLE or DEADLINE_EXCEEDED with a message that
names the inference tier, never a hang and never a cut-short video that ends with OK. Once the
inference tier is back on the same port, the next call succeeds without restarting the
compositing tier.
"""

from __future__ import annotations

import queue
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from lipsync.demo.run import (
    ServiceProcess,
    free_port,
    start_service,
    wait_serving,
    write_configs,
)
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

START_TIMEOUT_S = 120
# Deadline of each call from the compositing tier to the inference tier in this module. The
# stalled-tier test waits this long, and every other call here finishes well within it.
INFERENCE_TIMEOUT_S = 6.0
# Client deadline, far above INFERENCE_TIMEOUT_S: a call that reaches it has hung.
CLIENT_TIMEOUT_S = 60.0
INFERENCE_BATCH = 8
MESSAGE_BYTES = 64 * 1024 * 1024
POLL_LIMIT = 500


def speech(seconds: float, seed: int) -> bytes:
    """Return seeded Gaussian noise (standard deviation 0.1): float32 little-endian, 16 kHz."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype("<f4").tobytes()


def update_yaml(path: Path, changes: dict) -> None:
    """Merge `changes` into the YAML mapping stored at path, one level of sections deep."""
    config = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class Tiers:
    """Both tiers as processes; the inference tier can be killed and started again."""

    def __init__(self, run_dir: Path, demo_data) -> None:
        self.run_dir = run_dir
        self.inference_port = free_port()
        self.compositing_port = free_port()
        self.inference_config, self.compositing_config = write_configs(
            run_dir,
            encoder=demo_data.audio_encoder,
            avatars_dir=demo_data.avatars_dir,
            inference_port=self.inference_port,
            compositing_port=self.compositing_port,
        )
        update_yaml(
            self.inference_config,
            {"models": {"batch_size": INFERENCE_BATCH}, "log": {"level": "debug"}},
        )
        update_yaml(
            self.compositing_config,
            {"inference": {"timeout_s": INFERENCE_TIMEOUT_S}, "log": {"level": "debug"}},
        )
        self.starts = 0
        self.inference: ServiceProcess | None = None
        self.compositing: ServiceProcess | None = None

    def start_inference(self) -> ServiceProcess:
        self.starts += 1
        self.inference = start_service(
            "inference",
            self.inference_config,
            f"127.0.0.1:{self.inference_port}",
            self.run_dir / f"logs-{self.starts}",
        )
        wait_serving(self.inference, START_TIMEOUT_S)
        return self.inference

    def kill_inference(self) -> None:
        self.inference.process.send_signal(signal.SIGKILL)
        self.inference.process.wait(30)

    def restart_inference(self) -> ServiceProcess:
        if self.inference.process.poll() is None:
            self.kill_inference()
        return self.start_inference()

    def stop(self) -> None:
        for service in (self.compositing, self.inference):
            if service is not None:
                code = service.stop()
                print(f"--- {service.name} log (exit code {code}) ---\n{service.log_tail(40)}")


@pytest.fixture(scope="module")
def tiers(demo_data, tmp_path_factory) -> Iterator[Tiers]:
    tiers = Tiers(tmp_path_factory.mktemp("faults"), demo_data)
    try:
        tiers.start_inference()
        tiers.compositing = start_service(
            "compositing",
            tiers.compositing_config,
            f"127.0.0.1:{tiers.compositing_port}",
            tiers.run_dir / "logs-compositing",
        )
        wait_serving(tiers.compositing, START_TIMEOUT_S)
        yield tiers
    finally:
        tiers.stop()


@pytest.fixture
def public(tiers) -> Iterator[compositing_pb2_grpc.CompositingServiceStub]:
    with grpc.insecure_channel(
        tiers.compositing.address, options=channel_options(MESSAGE_BYTES)
    ) as channel:
        yield compositing_pb2_grpc.CompositingServiceStub(channel)


@pytest.fixture(autouse=True)
def inference_running(tiers) -> None:
    """Start the inference tier again when a test left it killed or stopped."""
    if tiers.inference.process.poll() is not None:
        tiers.start_inference()


def inference_busy(address: str) -> bool:
    """Return whether the inference tier is rendering for the demo avatar right now."""
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for _ in range(POLL_LIMIT):
            stats = stub.GetModelStats(inference_pb2.GetModelStatsRequest(), timeout=10)
            if any(m.stats.active_users > 0 for m in stats.models):
                return True
            threading.Event().wait(0.01)
    return False


def render_all(stub, audio: bytes, **metadata) -> list[compositing_pb2.Frame]:
    request = compositing_pb2.RenderUtteranceRequest(model_id="demo", raw_audio=audio)
    frames = []
    for response in stub.RenderUtterance(
        request, timeout=CLIENT_TIMEOUT_S, metadata=tuple(metadata.items())
    ):
        frames.extend(response.frames)
    return frames


def assert_inference_failure(error: grpc.RpcError) -> None:
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "inference tier" in error.details()
    assert "Traceback" not in error.details()


def test_kill_mid_render_utterance_ends_in_error(tiers, public):
    request = compositing_pb2.RenderUtteranceRequest(model_id="demo", raw_audio=speech(3.0, seed=1))
    frames = []
    total = 0
    with pytest.raises(grpc.RpcError) as caught:
        for response in public.RenderUtterance(request, timeout=CLIENT_TIMEOUT_S):
            if not frames:
                tiers.kill_inference()
            frames.extend(response.frames)
            total = response.total_frames

    assert_inference_failure(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert total == 74
    assert 0 < len(frames) < total
    assert [f.index for f in frames] == list(range(len(frames)))


def test_next_render_after_restart_succeeds(tiers, public):
    tiers.kill_inference()
    with pytest.raises(grpc.RpcError) as caught:
        render_all(public, speech(1.0, seed=2))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "inference tier" in caught.value.details()

    tiers.restart_inference()
    frames = render_all(public, speech(1.0, seed=2))
    assert [f.index for f in frames] == list(range(24))


def test_kill_mid_infer_batch_composite(tiers, public):
    request = compositing_pb2.CompositeBatchRequest(
        model_id="demo", raw_audio=speech(2.0, seed=3), batch_size=48
    )
    outcome: queue.Queue = queue.Queue()

    def call() -> None:
        try:
            outcome.put(public.InferBatchComposite(request, timeout=CLIENT_TIMEOUT_S))
        except grpc.RpcError as exc:
            outcome.put(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert inference_busy(tiers.inference.address)
    tiers.kill_inference()
    caller.join(CLIENT_TIMEOUT_S)
    result = outcome.get_nowait()

    assert isinstance(result, grpc.RpcError), "a call cut short by the kill returned OK"
    assert_inference_failure(result)
    assert result.code() == grpc.StatusCode.UNAVAILABLE

    tiers.restart_inference()
    reply = public.InferBatchComposite(request, timeout=CLIENT_TIMEOUT_S)
    assert len(reply.composited_frames) == 48
    assert reply.success
    assert not reply.model_loaded


def stream_requests(
    audio: bytes, chunk_bytes: int
) -> Iterator[compositing_pb2.StreamRenderRequest]:
    yield compositing_pb2.StreamRenderRequest(
        config=compositing_pb2.StreamConfig(model_id="demo", sample_rate=16000)
    )
    for offset in range(0, len(audio), chunk_bytes):
        chunk = compositing_pb2.AudioChunk(data=audio[offset : offset + chunk_bytes])
        yield compositing_pb2.StreamRenderRequest(audio=chunk)


def test_kill_mid_stream_render_ends_in_error(tiers, public):
    audio = speech(3.0, seed=6)
    frames = []
    with pytest.raises(grpc.RpcError) as caught:
        for response in public.StreamRender(
            stream_requests(audio, chunk_bytes=6400), timeout=CLIENT_TIMEOUT_S
        ):
            if not frames:
                tiers.kill_inference()
            frames.extend(response.frames)

    assert_inference_failure(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 0 < len(frames) < 74
    assert [f.index for f in frames] == list(range(len(frames)))

    tiers.restart_inference()
    frames = [
        frame
        for response in public.StreamRender(
            stream_requests(speech(1.0, seed=6), chunk_bytes=6400), timeout=CLIENT_TIMEOUT_S
        )
        for frame in response.frames
    ]
    assert [f.index for f in frames] == list(range(24))


def test_stalled_inference_gives_deadline_exceeded(tiers, public):
    process = tiers.inference.process
    process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            render_all(public, speech(1.0, seed=4))
    finally:
        process.send_signal(signal.SIGCONT)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "inference.timeout_s" in caught.value.details()
    frames = render_all(public, speech(1.0, seed=4))
    assert len(frames) == 24


def test_request_id_in_both_tiers_logs(tiers, public):
    request_id = f"faults-{uuid.uuid4().hex[:12]}"
    frames = render_all(public, speech(1.0, seed=5), **{"x-request-id": request_id})
    assert len(frames) == 24

    # Both services log each finished request at DEBUG. The compositing tier logs after its last
    # response, so its file is polled until the line is written.
    compositing_lines: list[str] = []
    for _ in range(POLL_LIMIT):
        compositing_lines = [
            line
            for line in tiers.compositing.log_path.read_text().splitlines()
            if request_id in line
        ]
        if compositing_lines:
            break
        threading.Event().wait(0.01)
    inference_lines = [
        line for line in tiers.inference.log_path.read_text().splitlines() if request_id in line
    ]
    assert any("RenderUtterance done" in line and "24 frames" in line for line in compositing_lines)
    assert any("RenderMouths done" in line and "24 frames" in line for line in inference_lines)
    assert all("avatar=demo" in line for line in compositing_lines + inference_lines)
