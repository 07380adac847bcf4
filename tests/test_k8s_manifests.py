"""deploy/kubernetes parses and describes a consistent split deployment (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compositing_service.balancing import replica_source
from compositing_service.config import CompositingConfig
from inference_service.config import InferenceConfig
from lipsync.settings import load_config

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
GiB = 1024**3

TIERS = {
    "inference": ("lipsync-inference", InferenceConfig, "inference.InferenceService"),
    "compositing": ("lipsync-compositing", CompositingConfig, "compositing.CompositingService"),
}


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict]:
    """Every object of the kustomization's files, by (kind, name)."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


@pytest.fixture(scope="module")
def configs(resources, tmp_path_factory) -> dict:
    """The ConfigMap's configs, validated by the services' own config models."""
    folder = tmp_path_factory.mktemp("k8s-configs")
    data = resources[("ConfigMap", "lipsync-config")]["data"]
    loaded = {}
    for tier, (_, model, _) in TIERS.items():
        path = folder / f"{tier}.yaml"
        path.write_text(data[f"{tier}.yaml"])
        loaded[tier] = load_config(path, model, env={})
    return loaded


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def port_named(container_spec: dict, name: str) -> int:
    return next(p["containerPort"] for p in container_spec["ports"] if p["name"] == name)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": GiB}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def test_kustomization_lists_every_manifest(resources):
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    kinds = sorted(kind for kind, _ in resources)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "Service",
    ]


@pytest.mark.parametrize("tier", TIERS)
def test_selectors_match_pod_labels(resources, tier):
    name = TIERS[tier][0]
    deployment = resources[("Deployment", name)]
    service = resources[("Service", name)]
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert labels[key] == value
    for key, value in service["spec"]["selector"].items():
        assert labels[key] == value
    assert labels["app.kubernetes.io/component"] == tier


@pytest.mark.parametrize("tier", TIERS)
def test_ports_match_the_configs(resources, configs, tier):
    name = TIERS[tier][0]
    spec = container(resources[("Deployment", name)])
    config = configs[tier]
    annotations = resources[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]

    assert port_named(spec, "grpc") == config.server.port
    assert config.metrics.enabled
    assert port_named(spec, "metrics") == config.metrics.port
    assert annotations["prometheus.io/port"] == str(config.metrics.port)
    service_port = resources[("Service", name)]["spec"]["ports"][0]
    assert service_port["port"] == config.server.port
    assert service_port["targetPort"] == "grpc"


@pytest.mark.parametrize("tier", TIERS)
def test_probes_use_grpc_health_on_the_service_port(resources, configs, tier):
    name, _, service_name = TIERS[tier]
    spec = container(resources[("Deployment", name)])
    port = configs[tier].server.port

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == port, probe
    assert spec["readinessProbe"]["grpc"]["service"] == service_name


@pytest.mark.parametrize("tier", TIERS)
def test_shutdown_grace_fits_the_pod(resources, configs, tier):
    pod = resources[("Deployment", TIERS[tier][0])]["spec"]["template"]["spec"]
    assert configs[tier].server.grace_period_s < pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("tier", TIERS)
def test_config_and_data_volumes_are_mounted(resources, configs, tier):
    deployment = resources[("Deployment", TIERS[tier][0])]
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in spec["volumeMounts"]}

    assert volumes["config"]["configMap"]["name"] == "lipsync-config"
    config_file = spec["args"][spec["args"].index("--config") + 1]
    assert Path(config_file).parent == Path(mounts["config"]["mountPath"])
    assert Path(config_file).name == f"{tier}.yaml"

    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in resources
    assert mounts["data"]["readOnly"] is True
    assert configs[tier].avatars_dir.is_relative_to(mounts["data"]["mountPath"])


def test_inference_service_is_headless(resources):
    assert resources[("Service", "lipsync-inference")]["spec"]["clusterIP"] == "None"


def test_compositing_dials_every_inference_pod(resources, configs):
    inference = configs["inference"]
    client = configs["compositing"].inference
    source = replica_source(client.target)

    assert client.target.startswith("dns:///")
    assert source.host == "lipsync-inference"
    assert source.port == inference.server.port
    assert client.load_balancing == "round_robin"


def test_inference_pods_get_one_gpu(resources):
    spec = container(resources[("Deployment", "lipsync-inference")])
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["resources"]["requests"]["nvidia.com/gpu"] == 1
    compositing = container(resources[("Deployment", "lipsync-compositing")])
    assert "nvidia.com/gpu" not in compositing["resources"]["limits"]


@pytest.mark.parametrize("tier", TIERS)
def test_containers_set_requests_and_limits(resources, tier):
    spec = container(resources[("Deployment", TIERS[tier][0])])
    requests, limits = spec["resources"]["requests"], spec["resources"]["limits"]
    assert {"cpu", "memory"} <= set(requests)
    assert "memory" in limits
    assert memory_bytes(requests["memory"]) <= memory_bytes(limits["memory"])


def test_compositing_avatar_memory_stays_below_its_limit(resources, configs):
    spec = container(resources[("Deployment", "lipsync-compositing")])
    limit = memory_bytes(spec["resources"]["limits"]["memory"])
    capacity = configs["compositing"].capacity.max_memory_bytes
    assert 0 < capacity < limit
