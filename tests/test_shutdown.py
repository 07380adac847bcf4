"""Start-up and SIGTERM of all three shapes as real processes.

Health reports SERVING only after the models are loaded and warmed up, so the first request
loads nothing. On SIGTERM, health turns NOT_SERVING, new calls are rejected, the calls in
flight finish within `server.grace_period_s`, and `lipsync serve` exits with status 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lipsync.demo.run import (
    ServiceProcess,
    free_port,
    start_service,
    wait_serving,
    write_configs,
    write_monolithic_config,
)
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

START_TIMEOUT_S = 120
# Far longer than any call in flight here takes, so a call cut short shows up as missing frames.
GRACE_PERIOD_S = 30
EXIT_TIMEOUT_S = 60
MESSAGE_BYTES = 64 * 1024 * 1024
POLL_LIMIT = 2000
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STOPPING_LINE = "new calls are rejected"


def speech(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype("<f4").tobytes()


def set_grace_period(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    config["server"]["grace_period_s"] = GRACE_PERIOD_S
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class Started:
    """A service process and the health statuses seen while it started."""

    service: ServiceProcess
    statuses: list[str] = field(default_factory=list)


def start_watched(name: str, config: Path, port: int, log_dir: Path) -> Started:
    """Start a service and record its health status (or UNAVAILABLE) until it is SERVING."""
    address = f"127.0.0.1:{port}"
    started = Started(start_service(name, config, address, log_dir))
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(POLL_LIMIT):
            if started.service.process.poll() is not None:
                break
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                status = exc.code().name
            if not started.statuses or started.statuses[-1] != status:
                started.statuses.append(status)
            if status == "SERVING":
                break
            threading.Event().wait(0.01)
    wait_serving(started.service, START_TIMEOUT_S)
    return started


def log_lines(service: ServiceProcess) -> list[str]:
    return service.log_path.read_text().splitlines()


def first_line_with(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


def wait_for_log(service: ServiceProcess, text: str) -> bool:
    for _ in range(POLL_LIMIT):
        if any(text in line for line in log_lines(service)):
            return True
        threading.Event().wait(0.01)
    return False


def stop_in_flight(
    service: ServiceProcess,
    responses: Iterator,
    count: Callable[[object], int],
    new_call: Callable[[grpc.Channel], object],
) -> tuple[int, int | None]:
    """SIGTERM a service while `responses` streams; return the items received and exit code.

    Checks on the way that health turns NOT_SERVING and that a call made after the stop began
    is rejected with UNAVAILABLE.
    """
    with grpc.insecure_channel(service.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == SERVING
        received = count(next(responses))

        service.process.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        watch.cancel()

    assert wait_for_log(service, STOPPING_LINE)
    with grpc.insecure_channel(service.address) as fresh:
        with pytest.raises(grpc.RpcError) as rejected:
            new_call(fresh)
    assert rejected.value.code() == grpc.StatusCode.UNAVAILABLE

    received += sum(count(response) for response in responses)
    return received, service.process.wait(EXIT_TIMEOUT_S)


def render_utterance(stub, audio: bytes) -> Iterator[compositing_pb2.RenderUtteranceResponse]:
    request = compositing_pb2.RenderUtteranceRequest(model_id="demo", raw_audio=audio)
    return stub.RenderUtterance(request, timeout=120)


def infer_batch(channel: grpc.Channel) -> compositing_pb2.CompositeBatchResponse:
    request = compositing_pb2.CompositeBatchRequest(
        model_id="demo", raw_audio=speech(1.0, seed=9), batch_size=4
    )
    return compositing_pb2_grpc.CompositingServiceStub(channel).InferBatchComposite(
        request, timeout=30
    )


@pytest.fixture(scope="module")
def split(demo_data, tmp_path_factory) -> Iterator[tuple[Started, Started]]:
    """Both tiers, each started while its health was watched; the tests stop them."""
    run_dir = tmp_path_factory.mktemp("shutdown-split")
    inference_port, compositing_port = free_port(), free_port()
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )
    set_grace_period(inference_config)
    set_grace_period(compositing_config)
    services: list[ServiceProcess] = []
    try:
        inference = start_watched("inference", inference_config, inference_port, run_dir)
        services.append(inference.service)
        compositing = start_watched("compositing", compositing_config, compositing_port, run_dir)
        services.append(compositing.service)
        yield inference, compositing
    finally:
        for service in reversed(services):
            code = service.stop()
            print(f"--- {service.name} log (exit code {code}) ---\n{service.log_tail(30)}")


def test_inference_serving_only_after_warm_up(split):
    inference, _ = split
    assert inference.statuses[0] != "SERVING"
    assert inference.statuses[-1] == "SERVING"
    assert inference.statuses.count("SERVING") == 1

    lines = log_lines(inference.service)
    serving = first_line_with(lines, "health: SERVING")
    assert first_line_with(lines, "warmed up the audio encoder") < serving
    # Health is served (NOT_SERVING) from "listening" on, and the warm-up happens after it.
    assert first_line_with(lines, "listening on") < first_line_with(lines, "warmed up avatar demo")
    assert first_line_with(lines, "warmed up avatar demo") < serving


def test_first_request_loads_nothing(split):
    inference, compositing = split
    assert compositing.statuses[-1] == "SERVING"

    with grpc.insecure_channel(compositing.service.address) as channel:
        reply = infer_batch(channel)
    assert len(reply.composited_frames) == 4
    assert not reply.model_loaded
    assert reply.model_load_time_ms == 0
    inference_lines = log_lines(inference.service)
    assert sum("loaded avatar demo" in line for line in inference_lines) == 1


def test_compositing_sigterm_lets_render_finish(split):
    _, compositing = split
    with grpc.insecure_channel(
        compositing.service.address, options=channel_options(MESSAGE_BYTES)
    ) as channel:
        responses = render_utterance(
            compositing_pb2_grpc.CompositingServiceStub(channel), speech(3.0, seed=10)
        )
        frames, code = stop_in_flight(
            compositing.service, responses, lambda r: len(r.frames), infer_batch
        )
    assert frames == 74
    assert code == 0


def test_inference_sigterm_lets_render_finish(split):
    inference, _ = split
    request = inference_pb2.RenderMouthsRequest(model_id="demo", raw_audio=speech(3.0, seed=11))

    def list_models(channel: grpc.Channel) -> object:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return stub.ListModels(inference_pb2.ListModelsRequest(), timeout=30)

    with grpc.insecure_channel(
        inference.service.address, options=channel_options(MESSAGE_BYTES)
    ) as channel:
        responses = inference_pb2_grpc.InferenceServiceStub(channel).RenderMouths(
            request, timeout=120
        )
        crops, code = stop_in_flight(
            inference.service, responses, lambda r: len(r.crops), list_models
        )
    assert crops == 74
    assert code == 0


def test_monolithic_start_and_sigterm(demo_data, tmp_path):
    port = free_port()
    config = write_monolithic_config(
        tmp_path, encoder=demo_data.audio_encoder, avatars_dir=demo_data.avatars_dir, port=port
    )
    set_grace_period(config)
    started = start_watched("monolithic", config, port, tmp_path / "logs")
    service = started.service
    try:
        assert started.statuses[0] != "SERVING"
        assert started.statuses[-1] == "SERVING"
        lines = log_lines(service)
        assert first_line_with(lines, "warmed up avatar demo") < first_line_with(
            lines, "health: SERVING"
        )
        with grpc.insecure_channel(service.address) as channel:
            reply = infer_batch(channel)
        assert not reply.model_loaded

        with grpc.insecure_channel(service.address, options=channel_options(MESSAGE_BYTES)) as ch:
            responses = render_utterance(
                compositing_pb2_grpc.CompositingServiceStub(ch), speech(3.0, seed=12)
            )
            frames, code = stop_in_flight(service, responses, lambda r: len(r.frames), infer_batch)
        assert frames == 74
        assert code == 0
    finally:
        code = service.stop()
        print(f"--- monolithic log (exit code {code}) ---\n{service.log_tail(30)}")
