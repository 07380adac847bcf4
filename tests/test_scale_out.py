"""Two inference replicas behind one compositing process: balancing, affinity and failover."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import yaml

from compositing_service.backend import GrpcInferenceBackend
from compositing_service.balancing import (
    AffinityBalancer,
    rendezvous_score,
    replica_source,
    replica_target,
)
from compositing_service.config import CompositingConfig
from lipsync.demo.run import ServiceProcess, free_port, start_service, wait_serving, write_configs
from lipsync.metrics import ServiceMetrics
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.settings import ConfigError, load_config

START_TIMEOUT_S = 120
REQUESTS = 6


@dataclass
class ScaleOut:
    replicas: list[ServiceProcess]
    compositing: ServiceProcess
    avatar_id: str


@pytest.fixture(scope="module")
def scale_out(demo_data, tmp_path_factory) -> Iterator[ScaleOut]:
    """Two inference processes and a compositing process that lists both as inference.addresses."""
    run_dir = tmp_path_factory.mktemp("scale-out")
    ports = [free_port(), free_port()]
    compositing_port = free_port()
    configs = []
    for index, port in enumerate(ports):
        inference_config, compositing_config = write_configs(
            run_dir / f"replica-{index}",
            encoder=demo_data.audio_encoder,
            avatars_dir=demo_data.avatars_dir,
            inference_port=port,
            compositing_port=compositing_port,
        )
        configs.append(inference_config)
    compositing = yaml.safe_load(compositing_config.read_text())
    compositing["inference"] = {"addresses": [f"127.0.0.1:{port}" for port in ports]}
    compositing_config.write_text(yaml.safe_dump(compositing))

    started: list[ServiceProcess] = []
    try:
        for index, (config, port) in enumerate(zip(configs, ports, strict=True)):
            started.append(
                start_service("inference", config, f"127.0.0.1:{port}", run_dir / f"logs-{index}")
            )
        for replica in started:
            wait_serving(replica, START_TIMEOUT_S)
        started.append(
            start_service(
                "compositing", compositing_config, f"127.0.0.1:{compositing_port}", run_dir / "logs"
            )
        )
        wait_serving(started[-1], START_TIMEOUT_S)
        yield ScaleOut(started[:2], started[2], demo_data.avatar_id)
    finally:
        for service in reversed(started):
            code = service.stop()
            print(f"--- {service.name} log (exit code {code}) ---\n{service.log_tail(30)}")


def audio(seconds: float = 0.3) -> bytes:
    rng = np.random.default_rng(5)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32).tobytes()


def usage_count(replica: ServiceProcess, avatar_id: str) -> int:
    """Return how many requests the replica has served for the avatar (GetModelStats)."""
    with grpc.insecure_channel(replica.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = stub.GetModelStats(
            inference_pb2.GetModelStatsRequest(model_id=avatar_id), timeout=5
        )
    return reply.models[0].stats.usage_count


def infer_batch(address: str, avatar_id: str) -> compositing_pb2.CompositeBatchResponse:
    with grpc.insecure_channel(address) as channel:
        stub = compositing_pb2_grpc.CompositingServiceStub(channel)
        request = compositing_pb2.CompositeBatchRequest(
            model_id=avatar_id, raw_audio=audio(), sample_rate=16000, batch_size=2
        )
        return stub.InferBatchComposite(request, timeout=60)


def affinity_backend(scale_out: ScaleOut, metrics: ServiceMetrics) -> GrpcInferenceBackend:
    target = replica_target([replica.address for replica in scale_out.replicas])
    return GrpcInferenceBackend(
        target, timeout_s=30, max_message_bytes=64 << 20, affinity=True, metrics=metrics
    )


def render(backend: GrpcInferenceBackend, avatar_id: str) -> int:
    """Render a short utterance through the backend and return the number of crops."""
    request = inference_pb2.RenderMouthsRequest(
        model_id=avatar_id, raw_audio=audio(), sample_rate=16000
    )
    return sum(len(mouths.crops) for mouths in backend.render_mouths(request))


def test_round_robin_reaches_both_replicas(scale_out):
    avatar = scale_out.avatar_id
    before = [usage_count(replica, avatar) for replica in scale_out.replicas]

    for _ in range(REQUESTS):
        assert len(infer_batch(scale_out.compositing.address, avatar).composited_frames) == 2

    after = [usage_count(replica, avatar) for replica in scale_out.replicas]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == REQUESTS
    assert served[0] >= 1
    assert served[1] >= 1


def test_affinity_keeps_avatar_on_one_replica(scale_out):
    avatar = scale_out.avatar_id
    before = [usage_count(replica, avatar) for replica in scale_out.replicas]
    backend = affinity_backend(scale_out, ServiceMetrics())
    try:
        for _ in range(REQUESTS):
            assert render(backend, avatar) > 0
        chosen = backend.balancer.candidates(avatar)[0].target
    finally:
        backend.close()

    after = [usage_count(replica, avatar) for replica in scale_out.replicas]
    served = {
        replica.address: a - b
        for replica, a, b in zip(scale_out.replicas, after, before, strict=True)
    }
    assert served[chosen] == REQUESTS
    assert sum(served.values()) == REQUESTS


def test_killed_replica_fails_over(scale_out):
    avatar = scale_out.avatar_id
    metrics = ServiceMetrics()
    backend = affinity_backend(scale_out, metrics)
    try:
        assert render(backend, avatar) > 0
        chosen = backend.balancer.candidates(avatar)[0].target
        victim = next(r for r in scale_out.replicas if r.address == chosen)
        survivor = next(r for r in scale_out.replicas if r.address != chosen)
        victim.process.kill()
        victim.process.wait(timeout=10)
        survivor_before = usage_count(survivor, avatar)

        # Affinity: the avatar's replica is gone, so the call moves to the other one.
        for _ in range(3):
            assert render(backend, avatar) > 0
        failovers = metrics.registry.get_sample_value(
            "lipsync_inference_client_failovers_total", {"replica": chosen}
        )
        assert failovers == 1
        states = dict(backend.balancer.states())
        assert states == {chosen: False, survivor.address: True}
    finally:
        backend.close()

    # Round robin in the compositing process: the first call after the kill may still be routed
    # to the dead replica, but every call after it must succeed.
    try:
        infer_batch(scale_out.compositing.address, avatar)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
    for _ in range(REQUESTS):
        assert len(infer_batch(scale_out.compositing.address, avatar).composited_frames) == 2
    assert usage_count(survivor, avatar) - survivor_before >= 3 + REQUESTS


@pytest.mark.parametrize(
    ("target", "static", "host", "port"),
    [
        ("ipv4:10.0.0.1:5,10.0.0.2:6", ("10.0.0.1:5", "10.0.0.2:6"), "", 0),
        ("ipv6:[::1]:5,[::2]:6", ("[::1]:5", "[::2]:6"), "", 0),
        ("dns:///inference:50051", (), "inference", 50051),
        ("dns://10.0.0.53/inference:50051", (), "inference", 50051),
        ("inference:50051", (), "inference", 50051),
        ("[::1]:50051", (), "::1", 50051),
        ("inference", (), "inference", 443),
        ("unix:/run/inference.sock", ("unix:/run/inference.sock",), "", 0),
    ],
)
def test_replica_source_of_targets(target, static, host, port):
    source = replica_source(target)
    assert source.static == static
    assert source.host == host
    assert source.port == port


def test_replica_target_joins_addresses():
    assert replica_target(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert replica_target(["[::1]:1", "[fe80::1]:2"]) == "ipv6:[::1]:1,[fe80::1]:2"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["inference-0:50051"], "is not an IP address"),
        (["127.0.0.1"], "is not IP:port"),
        (["127.0.0.1:1", "[::1]:2"], "mixes IPv4 and IPv6"),
    ],
)
def test_replica_target_rejects_bad_entries(entries, message):
    with pytest.raises(ValueError, match=message):
        replica_target(entries)


def test_address_and_addresses_together_is_a_config_error(tmp_path):
    path = tmp_path / "compositing.yaml"
    path.write_text(
        "avatars_dir: a\ninference:\n  address: 127.0.0.1:1\n  addresses: [127.0.0.1:2]\n"
    )
    with pytest.raises(ConfigError, match=r"inference\.address or inference\.addresses"):
        load_config(path, CompositingConfig, env={})


def test_rendezvous_moves_only_the_removed_replicas_avatars():
    replicas = [f"10.0.0.{i}:50051" for i in range(1, 5)]
    avatars = [f"avatar-{i}" for i in range(200)]

    def owner(avatar: str, pool: list[str]) -> str:
        return max(pool, key=lambda replica: rendezvous_score(avatar, replica))

    before = {avatar: owner(avatar, replicas) for avatar in avatars}
    after = {avatar: owner(avatar, replicas[:-1]) for avatar in avatars}

    moved = {avatar for avatar in avatars if before[avatar] != after[avatar]}
    assert moved == {avatar for avatar in avatars if before[avatar] == replicas[-1]}
    counts = [list(before.values()).count(replica) for replica in replicas]
    assert min(counts) > 0


def test_ejected_replica_goes_last_until_ejection_ends():
    channels: list[grpc.Channel] = []

    def connect(target: str, server_name: str) -> grpc.Channel:
        channels.append(grpc.insecure_channel(target))
        return channels[-1]

    balancer = AffinityBalancer(
        "ipv4:127.0.0.1:1,127.0.0.1:2",
        connect,
        ejection_s=60,
        resolve_interval_s=30,
        retire_after_s=1,
    )
    try:
        first, second = balancer.candidates("demo")
        balancer.eject(first)
        assert [r.target for r in balancer.candidates("demo")] == [second.target, first.target]
        first.ejected_until = 0.0
        assert [r.target for r in balancer.candidates("demo")] == [first.target, second.target]
    finally:
        balancer.close()
    assert len(channels) == 2
