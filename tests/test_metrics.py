"""Prometheus metrics of every deployment shape, scraped over HTTP from real processes."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lipsync.demo.run import (
    ServiceProcess,
    free_port,
    start_service,
    wait_serving,
    write_configs,
    write_monolithic_config,
)
from lipsync.errors import FailedPrecondition
from lipsync.metrics import MetricsConfig, ServiceMetrics, start_metrics_endpoint
from lipsync.protos import compositing_pb2, compositing_pb2_grpc

START_TIMEOUT_S = 120
BATCH_SIZE = 4

COMPOSITING = "compositing.CompositingService"
INFERENCE = "inference.InferenceService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class MeteredService:
    process: ServiceProcess
    metrics_port: int

    @property
    def address(self) -> str:
        return self.process.address


@dataclass
class MeteredDeployment:
    inference: MeteredService
    compositing: MeteredService
    monolithic: MeteredService
    avatar_id: str


def enable_metrics(config_path: Path, port: int) -> None:
    """Add a `metrics` section on a loopback port to a config file written by write_configs."""
    config = yaml.safe_load(config_path.read_text())
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def metered(demo_data, tmp_path_factory) -> Iterator[MeteredDeployment]:
    """Inference, compositing and monolithic services with metrics on, started together."""
    run_dir = tmp_path_factory.mktemp("metrics")
    inference_port, compositing_port, monolithic_port = free_port(), free_port(), free_port()
    metrics_ports = [free_port() for _ in range(3)]
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )
    monolithic_config = write_monolithic_config(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        port=monolithic_port,
    )
    for path, port in zip(
        (inference_config, compositing_config, monolithic_config), metrics_ports, strict=True
    ):
        enable_metrics(path, port)

    # The compositing service waits for the inference tier itself, so all three start at once.
    started: list[ServiceProcess] = []
    try:
        for name, config, port in (
            ("inference", inference_config, inference_port),
            ("compositing", compositing_config, compositing_port),
            ("monolithic", monolithic_config, monolithic_port),
        ):
            started.append(start_service(name, config, f"127.0.0.1:{port}", run_dir / "logs"))
        for service in started:
            wait_serving(service, START_TIMEOUT_S)
        services = [
            MeteredService(process, port)
            for process, port in zip(started, metrics_ports, strict=True)
        ]
        yield MeteredDeployment(*services, avatar_id=demo_data.avatar_id)
    finally:
        for service in reversed(started):
            code = service.stop()
            print(f"--- {service.name} log (exit code {code}) ---\n{service.log_tail(30)}")


def scrape(port: int) -> Samples:
    """Fetch /metrics and return every sample by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value, 0 when the series does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def speech_like_audio(seconds: float = 0.5) -> bytes:
    rng = np.random.default_rng(7)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32).tobytes()


def infer_batch(address: str, avatar_id: str) -> compositing_pb2.CompositeBatchResponse:
    with grpc.insecure_channel(address) as channel:
        stub = compositing_pb2_grpc.CompositingServiceStub(channel)
        request = compositing_pb2.CompositeBatchRequest(
            model_id=avatar_id,
            raw_audio=speech_like_audio(),
            sample_rate=16000,
            batch_size=BATCH_SIZE,
        )
        return stub.InferBatchComposite(request, timeout=60)


def handled(samples: Samples, service: str, method: str, kind: str, code: str) -> float:
    return value(
        samples,
        "grpc_server_handled_total",
        grpc_service=service,
        grpc_method=method,
        grpc_type=kind,
        grpc_code=code,
    )


def stage_count(samples: Samples, stage: str) -> float:
    return value(samples, "lipsync_stage_duration_seconds_count", stage=stage)


def test_split_request_moves_counters_on_both_tiers(metered):
    compositing_before = scrape(metered.compositing.metrics_port)
    inference_before = scrape(metered.inference.metrics_port)

    response = infer_batch(metered.compositing.address, metered.avatar_id)
    assert len(response.composited_frames) == BATCH_SIZE

    compositing = scrape(metered.compositing.metrics_port)
    inference = scrape(metered.inference.metrics_port)

    def moved(after: Samples, before: Samples, *args: str) -> float:
        return handled(after, *args) - handled(before, *args)

    assert (
        moved(compositing, compositing_before, COMPOSITING, "InferBatchComposite", "unary", "OK")
        == 1
    )
    assert moved(inference, inference_before, INFERENCE, "RenderMouths", "server_stream", "OK") == 1
    labels = {
        "grpc_method": "RenderMouths",
        "grpc_code": "OK",
        "replica": metered.inference.address,
    }
    calls = "lipsync_inference_client_calls_total"
    assert value(compositing, calls, **labels) - value(compositing_before, calls, **labels) == 1


def test_split_stage_histograms_move(metered):
    compositing_before = scrape(metered.compositing.metrics_port)
    inference_before = scrape(metered.inference.metrics_port)

    infer_batch(metered.compositing.address, metered.avatar_id)

    compositing = scrape(metered.compositing.metrics_port)
    inference = scrape(metered.inference.metrics_port)
    assert stage_count(inference, "audio") - stage_count(inference_before, "audio") == 1
    assert stage_count(inference, "inference") - stage_count(inference_before, "inference") >= 1
    assert stage_count(compositing, "composite") - stage_count(compositing_before, "composite") >= 1
    assert (
        stage_count(compositing, "inference_call")
        - stage_count(compositing_before, "inference_call")
        == 1
    )
    # In the split deployment audio and inference are the inference tier's to record.
    assert stage_count(compositing, "audio") == 0
    assert stage_count(compositing, "inference") == 0


def test_error_status_code_appears_as_label(metered):
    before = scrape(metered.compositing.metrics_port)

    with pytest.raises(grpc.RpcError) as not_found:
        infer_batch(metered.compositing.address, "no-such-avatar")
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(metered.compositing.address) as channel:
        stub = compositing_pb2_grpc.CompositingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as invalid:
            stub.InferBatchComposite(
                compositing_pb2.CompositeBatchRequest(model_id=metered.avatar_id, batch_size=0),
                timeout=30,
            )
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    after = scrape(metered.compositing.metrics_port)
    for code in ("NOT_FOUND", "INVALID_ARGUMENT"):
        count = handled(after, COMPOSITING, "InferBatchComposite", "unary", code)
        assert count - handled(before, COMPOSITING, "InferBatchComposite", "unary", code) == 1


def test_open_stream_counts_in_flight_then_cancelled(metered):
    labels = {"grpc_service": COMPOSITING, "grpc_method": "RenderUtterance"}
    in_flight = "lipsync_grpc_server_in_flight_calls"
    before = scrape(metered.compositing.metrics_port)

    with grpc.insecure_channel(metered.compositing.address) as channel:
        stub = compositing_pb2_grpc.CompositingServiceStub(channel)
        request = compositing_pb2.RenderUtteranceRequest(
            model_id=metered.avatar_id, raw_audio=speech_like_audio(4.0), sample_rate=16000
        )
        call = stub.RenderUtterance(request, timeout=60)
        first = next(call)
        assert len(first.frames) > 0
        during = scrape(metered.compositing.metrics_port)
        call.cancel()

    assert value(during, in_flight, **labels, grpc_type="server_stream") == 1
    # The server learns of the cancellation asynchronously: poll for a bounded time.
    deadline = time.monotonic() + 10
    after = scrape(metered.compositing.metrics_port)
    while value(after, in_flight, **labels, grpc_type="server_stream") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
        after = scrape(metered.compositing.metrics_port)
    assert value(after, in_flight, **labels, grpc_type="server_stream") == 0
    cancelled = handled(after, COMPOSITING, "RenderUtterance", "server_stream", "CANCELLED")
    assert cancelled - handled(before, COMPOSITING, "RenderUtterance", "server_stream", "CANCELLED")


def test_avatar_gauges_on_both_tiers(metered):
    inference = scrape(metered.inference.metrics_port)
    compositing = scrape(metered.compositing.metrics_port)
    avatar = metered.avatar_id

    assert value(inference, "lipsync_avatars_loaded", tier="inference") == 1
    assert value(compositing, "lipsync_avatars_loaded", tier="compositing") == 1
    assert value(inference, "lipsync_avatar_memory_bytes", tier="inference", avatar=avatar) > 0
    memory = value(compositing, "lipsync_avatar_memory_bytes", tier="compositing", avatar=avatar)
    # The demo avatar's 125 decoded 1280x720 BGR backgrounds alone are 345.6 MB.
    assert memory >= 125 * 1280 * 720 * 3


def test_monolithic_records_every_stage(metered):
    before = scrape(metered.monolithic.metrics_port)

    response = infer_batch(metered.monolithic.address, metered.avatar_id)
    assert len(response.composited_frames) == BATCH_SIZE

    after = scrape(metered.monolithic.metrics_port)
    count = handled(after, COMPOSITING, "InferBatchComposite", "unary", "OK")
    assert count - handled(before, COMPOSITING, "InferBatchComposite", "unary", "OK") == 1
    assert stage_count(after, "audio") - stage_count(before, "audio") == 1
    assert stage_count(after, "inference") - stage_count(before, "inference") >= 1
    assert stage_count(after, "composite") - stage_count(before, "composite") >= 1
    assert stage_count(after, "inference_call") == 0
    for tier in ("inference", "compositing"):
        assert value(after, "lipsync_avatars_loaded", tier=tier) == 1


def test_metrics_port_in_use_names_the_key():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = MetricsConfig(enabled=True, host="127.0.0.1", port=port)
        with pytest.raises(FailedPrecondition, match=rf"metrics\.port {port}: cannot listen"):
            start_metrics_endpoint(ServiceMetrics(), config)


def test_metrics_port_zero_picks_a_free_port():
    endpoint = start_metrics_endpoint(
        ServiceMetrics(), MetricsConfig(enabled=True, host="127.0.0.1", port=0)
    )
    assert endpoint is not None
    try:
        assert endpoint.port > 0
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        assert "# TYPE grpc_server_handled_total counter" in text
        assert "# TYPE lipsync_stage_duration_seconds histogram" in text
    finally:
        endpoint.stop()


def test_disabled_metrics_start_no_endpoint():
    assert start_metrics_endpoint(ServiceMetrics(), MetricsConfig(port=0)) is None
