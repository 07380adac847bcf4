"""docker-compose.yml, the Dockerfiles and configs/ parse and describe the split deployment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compositing_service.config import CompositingConfig
from inference_service.config import InferenceConfig
from lipsync.monolithic import MonolithicConfig
from lipsync.settings import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_inference_reserves_a_gpu(compose):
    inference = compose["services"]["inference"]
    devices = inference["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert "lipsync" in inference["healthcheck"]["test"]


def test_compose_compositing_waits_for_healthy_inference(compose):
    compositing = compose["services"]["compositing"]
    assert compositing["depends_on"]["inference"]["condition"] == "service_healthy"
    assert compositing["environment"]["LIPSYNC_INFERENCE_ADDRESS"] == "dns:///inference:50051"
    assert "50052-50055:50052" in compositing["ports"]


def test_compose_tiers_share_the_avatar_volume(compose):
    volumes = {
        name: [v.split(":")[0] for v in service.get("volumes", [])]
        for name, service in compose["services"].items()
    }
    assert "lipsync-data" in volumes["inference"]
    assert "lipsync-data" in volumes["compositing"]
    assert "lipsync-data" in compose["volumes"]


def test_compose_monolithic_profile_serves_port_50053(compose):
    monolithic = compose["services"]["monolithic"]
    assert monolithic["profiles"] == ["monolithic"]
    assert "50053:50053" in monolithic["ports"]
    assert "monolithic" in monolithic["command"]
    assert monolithic["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


@pytest.mark.parametrize("name", ["inference", "compositing", "monolithic", "demo-data"])
def test_compose_builds_from_existing_dockerfiles(compose, name):
    build = compose["services"][name]["build"]
    assert (REPO_ROOT / build["context"] / build["dockerfile"]).is_file()


def test_inference_image_uses_cuda_and_onnxruntime_gpu():
    text = (REPO_ROOT / "docker" / "inference.Dockerfile").read_text()
    assert text.splitlines()[1].startswith("FROM nvidia/cuda:")
    assert "onnxruntime-gpu" in text


def test_compositing_image_is_slim():
    text = (REPO_ROOT / "docker" / "compositing.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text


def test_shipped_configs_validate():
    monolithic = load_config(REPO_ROOT / "configs" / "monolithic.yaml", MonolithicConfig, env={})
    assert monolithic.server.port == 50053
    assert monolithic.inference_config().models.batch_size == 24
    inference = load_config(REPO_ROOT / "configs" / "inference.yaml", InferenceConfig, env={})
    compositing = load_config(REPO_ROOT / "configs" / "compositing.yaml", CompositingConfig, env={})
    assert inference.server.port == 50051
    assert compositing.server.port == 50052
    assert inference.avatars_dir == (REPO_ROOT / "data" / "avatars").resolve()
    assert compositing.output.jpeg_quality == 75


def test_unknown_config_key_names_the_key(tmp_path):
    path = tmp_path / "inference.yaml"
    path.write_text("avatars_dir: a\nmodels:\n  audio_encoder: e.onnx\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"models\.batchsize"):
        load_config(path, InferenceConfig, env={})


def test_out_of_range_config_value_names_the_key(tmp_path):
    path = tmp_path / "compositing.yaml"
    path.write_text("avatars_dir: a\noutput:\n  jpeg_quality: 101\n")
    with pytest.raises(ConfigError, match=r"output\.jpeg_quality"):
        load_config(path, CompositingConfig, env={})


def test_environment_overrides_address_and_port(tmp_path):
    path = tmp_path / "compositing.yaml"
    path.write_text("avatars_dir: a\n")
    env = {
        "LIPSYNC_PORT": "6000",
        "LIPSYNC_INFERENCE_ADDRESS": "inference:7000",
        "LIPSYNC_AVATARS_DIR": "/srv/avatars",
    }
    config = load_config(path, CompositingConfig, env=env)
    assert config.server.port == 6000
    assert config.inference.address == "inference:7000"
    assert config.avatars_dir == Path("/srv/avatars")


def test_compose_services_scale_without_fixed_names(compose):
    for name, service in compose["services"].items():
        assert "container_name" not in service, name
    assert "ports" not in compose["services"]["inference"]


def test_compose_compositing_publishes_a_port_range(compose):
    published = compose["services"]["compositing"]["ports"]
    host, container = published[0].split(":")
    first, last = (int(port) for port in host.split("-"))
    assert container == "50052"
    assert first == 50052
    assert last - first + 1 >= 2


def test_compose_compositing_round_robins_over_inference_dns(compose):
    address = compose["services"]["compositing"]["environment"]["LIPSYNC_INFERENCE_ADDRESS"]
    config = load_config(
        REPO_ROOT / "configs" / "compositing.yaml",
        CompositingConfig,
        env={"LIPSYNC_INFERENCE_ADDRESS": address},
    )
    assert config.inference.target == "dns:///inference:50051"
    assert config.inference.load_balancing == "round_robin"
    inference_port = load_config(
        REPO_ROOT / "configs" / "inference.yaml", InferenceConfig, env={}
    ).server.port
    assert address.endswith(f":{inference_port}")


def test_compose_exposes_the_metrics_ports(compose):
    inference = load_config(REPO_ROOT / "configs" / "inference.yaml", InferenceConfig, env={})
    compositing = load_config(REPO_ROOT / "configs" / "compositing.yaml", CompositingConfig, env={})
    assert inference.metrics.enabled
    assert compositing.metrics.enabled
    assert str(inference.metrics.port) in compose["services"]["inference"]["expose"]
    assert str(compositing.metrics.port) in compose["services"]["compositing"]["expose"]
