"""Shared fixtures: the demo models and avatar, and both services as real processes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lipsync.demo.run import (
    DEMO_AVATAR_ID,
    ServiceProcess,
    ensure_demo_data,
    free_port,
    start_service,
    wait_serving,
    write_configs,
    write_monolithic_config,
)

SERVICE_START_TIMEOUT_S = 120


@dataclass
class DemoData:
    data_dir: Path
    audio_encoder: Path
    avatars_dir: Path
    avatar_id: str = DEMO_AVATAR_ID

    @property
    def avatar_dir(self) -> Path:
        return self.avatars_dir / self.avatar_id


@dataclass
class SplitDeployment:
    inference: ServiceProcess
    compositing: ServiceProcess
    demo: DemoData


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> DemoData:
    """The demo audio encoder and avatar, built once per test session."""
    data_dir = tmp_path_factory.mktemp("data")
    encoder, avatars_dir = ensure_demo_data(data_dir)
    return DemoData(data_dir, encoder, avatars_dir)


@pytest.fixture(scope="session")
def split_deployment(demo_data, tmp_path_factory) -> Iterator[SplitDeployment]:
    """Both tiers started as separate processes on loopback ports, SERVING."""
    run_dir = tmp_path_factory.mktemp("split")
    inference_port, compositing_port = free_port(), free_port()
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )
    inference = start_service(
        "inference", inference_config, f"127.0.0.1:{inference_port}", run_dir / "logs"
    )
    compositing = None
    try:
        wait_serving(inference, SERVICE_START_TIMEOUT_S)
        compositing = start_service(
            "compositing", compositing_config, f"127.0.0.1:{compositing_port}", run_dir / "logs"
        )
        wait_serving(compositing, SERVICE_START_TIMEOUT_S)
        yield SplitDeployment(inference, compositing, demo_data)
    finally:
        for service in (compositing, inference):
            if service is not None:
                code = service.stop()
                print(f"--- {service.name} log (exit code {code}) ---\n{service.log_tail(60)}")


@pytest.fixture(scope="session")
def monolithic_deployment(demo_data, tmp_path_factory) -> Iterator[ServiceProcess]:
    """`lipsync serve monolithic` started as a process on a loopback port, SERVING."""
    run_dir = tmp_path_factory.mktemp("monolithic")
    port = free_port()
    config = write_monolithic_config(
        run_dir, encoder=demo_data.audio_encoder, avatars_dir=demo_data.avatars_dir, port=port
    )
    service = start_service("monolithic", config, f"127.0.0.1:{port}", run_dir / "logs")
    try:
        wait_serving(service, SERVICE_START_TIMEOUT_S)
        yield service
    finally:
        code = service.stop()
        print(f"--- monolithic log (exit code {code}) ---\n{service.log_tail(60)}")


@pytest.fixture(scope="module", params=["split", "monolithic"])
def public_address(request) -> str:
    """The public API's address in each deployment shape."""
    if request.param == "split":
        return request.getfixturevalue("split_deployment").compositing.address
    return request.getfixturevalue("monolithic_deployment").address
