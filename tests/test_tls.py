"""TLS between the tiers and on the public API, with certificates made in the test."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from compositing_service.config import CompositingConfig
from lipsync.demo.run import ServiceProcess, free_port, start_service, write_configs
from lipsync.errors import FailedPrecondition
from lipsync.protos import compositing_pb2, compositing_pb2_grpc
from lipsync.settings import ConfigError, load_config
from lipsync.tls import ClientTlsConfig, ServerTlsConfig, create_channel, server_credentials

START_TIMEOUT_S = 120
BATCH_SIZE = 3


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _issue(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return certificate, key


def make_certificates(folder: Path) -> Certificates:
    """Write a CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("lipsync test CA"))
        .issuer_name(_name("lipsync test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    server, server_key = _issue(
        "inference",
        ca_key,
        ca.subject,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("inference"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    client, client_key = _issue(
        "compositing",
        ca_key,
        ca.subject,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [x509.DNSName("compositing")],
    )

    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "client.pem").write_bytes(client.public_bytes(pem))
    return Certificates(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=_write_key(server_key, folder / "server.key"),
        client_cert=folder / "client.pem",
        client_key=_write_key(client_key, folder / "client.key"),
    )


@dataclass
class TlsDeployment:
    inference: ServiceProcess
    compositing: ServiceProcess
    certs: Certificates
    avatar_id: str


def _wait_serving_over_tls(service: ServiceProcess, tls: ClientTlsConfig) -> None:
    from lipsync.tls import wait_for_serving_over_tls

    if not wait_for_serving_over_tls(service.address, tls, START_TIMEOUT_S):
        raise RuntimeError(f"{service.name} not SERVING over TLS:\n{service.log_tail()}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_deployment(demo_data, certs, tmp_path_factory) -> Iterator[TlsDeployment]:
    """Inference with mutual TLS, compositing with TLS on its public port and to inference."""
    run_dir = tmp_path_factory.mktemp("tls")
    inference_port, compositing_port = free_port(), free_port()
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )
    server_tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    inference = yaml.safe_load(inference_config.read_text())
    inference["server"]["tls"] = {**server_tls, "client_ca_file": str(certs.ca)}
    inference_config.write_text(yaml.safe_dump(inference))
    compositing = yaml.safe_load(compositing_config.read_text())
    compositing["server"]["tls"] = server_tls
    compositing["inference"]["tls"] = {
        "ca_file": str(certs.ca),
        "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key),
    }
    compositing_config.write_text(yaml.safe_dump(compositing))

    started: list[ServiceProcess] = []
    try:
        for name, config, port in (
            ("inference", inference_config, inference_port),
            ("compositing", compositing_config, compositing_port),
        ):
            started.append(start_service(name, config, f"127.0.0.1:{port}", run_dir / "logs"))
        client_tls = ClientTlsConfig(
            ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key
        )
        for service in started:
            _wait_serving_over_tls(service, client_tls)
        yield TlsDeployment(*started, certs=certs, avatar_id=demo_data.avatar_id)
    finally:
        for service in reversed(started):
            code = service.stop()
            print(f"--- {service.name} log (exit code {code}) ---\n{service.log_tail(30)}")


def health_status(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_render_through_both_tiers_over_tls(tls_deployment):
    rng = np.random.default_rng(11)
    audio = (rng.standard_normal(8000) * 0.1).astype(np.float32).tobytes()
    tls = ClientTlsConfig(ca_file=tls_deployment.certs.ca)

    with create_channel(tls_deployment.compositing.address, tls) as channel:
        stub = compositing_pb2_grpc.CompositingServiceStub(channel)
        response = stub.InferBatchComposite(
            compositing_pb2.CompositeBatchRequest(
                model_id=tls_deployment.avatar_id,
                raw_audio=audio,
                sample_rate=16000,
                batch_size=BATCH_SIZE,
            ),
            timeout=60,
        )

    assert response.success
    assert len(response.composited_frames) == BATCH_SIZE
    for image in response.composited_frames:
        frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        assert frame is not None
        assert frame.shape == (720, 1280, 3)


def test_plaintext_client_to_tls_server_fails(tls_deployment):
    with grpc.insecure_channel(tls_deployment.compositing.address) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            health_status(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_without_client_certificate_fails(tls_deployment):
    tls = ClientTlsConfig(ca_file=tls_deployment.certs.ca)
    with create_channel(tls_deployment.inference.address, tls) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            health_status(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_client_certificate_serves(tls_deployment):
    certs = tls_deployment.certs
    tls = ClientTlsConfig(ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)
    with create_channel(tls_deployment.inference.address, tls) as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING


def test_untrusted_server_certificate_fails(tls_deployment, tmp_path):
    other = make_certificates(tmp_path / "other")
    with create_channel(
        tls_deployment.compositing.address, ClientTlsConfig(ca_file=other.ca)
    ) as ch:
        with pytest.raises(grpc.RpcError) as failure:
            health_status(ch)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def run_health_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lipsync", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_health_cli_with_tls_options(tls_deployment):
    certs = tls_deployment.certs
    address = tls_deployment.inference.address

    serving = run_health_cli(
        address,
        "--ca-file",
        str(certs.ca),
        "--cert-file",
        str(certs.client_cert),
        "--key-file",
        str(certs.client_key),
    )
    assert serving.returncode == 0, serving.stderr
    assert f"{address}: SERVING" in serving.stdout

    without_certificate = run_health_cli(address, "--ca-file", str(certs.ca), "--timeout", "1")
    assert without_certificate.returncode == 1
    assert "NOT SERVING" in without_certificate.stdout


def test_health_cli_names_a_missing_file(tmp_path):
    missing = tmp_path / "missing-ca.pem"
    result = run_health_cli("127.0.0.1:1", "--ca-file", str(missing), "--timeout", "1")
    assert result.returncode == 1
    assert f"--ca-file {missing} cannot be read" in result.stderr


def test_key_of_another_certificate_is_rejected(certs):
    tls = ServerTlsConfig(cert_file=certs.server_cert, key_file=certs.client_key)
    with pytest.raises(FailedPrecondition, match=r"server\.tls\.cert_file .* not a matching"):
        server_credentials(tls)


def test_server_key_that_is_not_pem_is_rejected(certs, tmp_path):
    key = tmp_path / "server.key"
    key.write_text("not a key\n")
    tls = ServerTlsConfig(cert_file=certs.server_cert, key_file=key)
    with pytest.raises(FailedPrecondition, match=r"server\.tls\.key_file .* is not a PEM file"):
        server_credentials(tls)


def test_client_certificate_without_key_is_a_config_error(tmp_path):
    path = tmp_path / "compositing.yaml"
    path.write_text("avatars_dir: a\ninference:\n  tls:\n    cert_file: client.pem\n")
    with pytest.raises(ConfigError, match=r"inference\.tls.*cert_file and key_file"):
        load_config(path, CompositingConfig, env={})


def test_relative_certificate_paths_resolve_against_the_config(tmp_path):
    path = tmp_path / "compositing.yaml"
    path.write_text(
        "avatars_dir: a\nserver:\n  port: 1\n  tls:\n    cert_file: certs/s.pem\n"
        "    key_file: certs/s.key\ninference:\n  tls:\n    ca_file: certs/ca.pem\n"
    )
    config = load_config(path, CompositingConfig, env={})
    assert config.server.tls.cert_file == tmp_path / "certs" / "s.pem"
    assert config.inference.tls.ca_file == tmp_path / "certs" / "ca.pem"


def test_several_addresses_over_tls_need_a_server_name(tmp_path):
    path = tmp_path / "compositing.yaml"
    path.write_text(
        "avatars_dir: a\ninference:\n  addresses: [127.0.0.1:1, 127.0.0.1:2]\n"
        "  tls:\n    ca_file: ca.pem\n"
    )
    with pytest.raises(ConfigError, match=r"server_name_override is required"):
        load_config(path, CompositingConfig, env={})

    path.write_text(path.read_text() + "    server_name_override: inference\n")
    config = load_config(path, CompositingConfig, env={})
    assert config.inference.target == "ipv4:127.0.0.1:1,127.0.0.1:2"
