"""Logs of a service started with `log.format: json` and `log.level: debug`.

Every line is one JSON object. Each finished request has a DEBUG line with its frames and
milliseconds, and each failed one a WARNING line. Both carry the request id and the avatar id.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import yaml

from lipsync.demo.run import ServiceProcess, free_port, start_service, wait_serving, write_configs
from lipsync.protos import inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

START_TIMEOUT_S = 120
POLL_LIMIT = 500


@pytest.fixture(scope="module")
def json_inference(demo_data, tmp_path_factory) -> Iterator[ServiceProcess]:
    """The inference tier logging JSON at DEBUG, with no avatar preloaded."""
    run_dir = tmp_path_factory.mktemp("logs")
    port = free_port()
    config_path, _ = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=port,
        compositing_port=free_port(),
    )
    config = yaml.safe_load(config_path.read_text())
    config["models"]["preload"] = []
    config["log"] = {"level": "debug", "format": "json"}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    service = start_service("inference", config_path, f"127.0.0.1:{port}", run_dir / "logs")
    try:
        wait_serving(service, START_TIMEOUT_S)
        yield service
    finally:
        code = service.stop()
        print(f"--- inference log (exit code {code}) ---\n{service.log_tail(30)}")


def read_entries(service: ServiceProcess) -> list[dict]:
    """Parse every line of the service's log file; fail on the first line that is not JSON."""
    entries = []
    for number, line in enumerate(service.log_path.read_text().splitlines(), start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line[:200]}")
    return entries


def wait_for_entry(service: ServiceProcess, request_id: str, text: str) -> dict | None:
    for _ in range(POLL_LIMIT):
        for entry in read_entries(service):
            if entry["request_id"] == request_id and text in entry["message"]:
                return entry
        threading.Event().wait(0.01)
    return None


def render(service: ServiceProcess, avatar_id: str, request_id: str) -> int:
    rng = np.random.default_rng(7)
    audio = (rng.standard_normal(16000) * 0.1).astype("<f4").tobytes()
    request = inference_pb2.RenderMouthsRequest(model_id=avatar_id, raw_audio=audio)
    with grpc.insecure_channel(
        service.address, options=channel_options(64 * 1024 * 1024)
    ) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        responses = stub.RenderMouths(request, timeout=60, metadata=(("x-request-id", request_id),))
        return sum(len(response.crops) for response in responses)


def test_request_timing_line_is_json(json_inference):
    request_id = f"logs-{uuid.uuid4().hex[:12]}"
    assert render(json_inference, "demo", request_id) == 24

    entry = wait_for_entry(json_inference, request_id, "RenderMouths done")
    assert entry is not None
    assert entry["level"] == "debug"
    assert entry["avatar_id"] == "demo"
    assert "24 frames" in entry["message"]
    assert entry["message"].endswith(" ms")


def test_failed_request_logged_with_ids(json_inference):
    request_id = f"logs-{uuid.uuid4().hex[:12]}"
    with pytest.raises(grpc.RpcError) as caught:
        render(json_inference, "nobody", request_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    entry = wait_for_entry(json_inference, request_id, "RenderMouths failed")
    assert entry is not None
    assert entry["level"] == "warning"
    assert entry["avatar_id"] == "nobody"
    assert "NOT_FOUND" in entry["message"]


def test_audio_encoder_warmed_without_preload(json_inference):
    messages = [entry["message"] for entry in read_entries(json_inference)]
    warmed = next(i for i, m in enumerate(messages) if "warmed up the audio encoder" in m)
    serving = next(i for i, m in enumerate(messages) if "health: SERVING" in m)
    assert warmed < serving
    assert not any("warmed up avatar" in m for m in messages[:serving])
