"""TLS and mutual TLS for gRPC: config sections, credentials and channels.

A server with `server.tls` listens with TLS; with `server.tls.client_ca_file` it also requires
every client to present a certificate signed by that CA (mutual TLS). A client with a TLS
section (`inference.tls` on the compositing tier, or `lipsync health --ca-file ...`) verifies
the server against `ca_file` and presents `cert_file`/`key_file` when the server requests them.

Every file is read and checked with Python's `ssl` module before gRPC sees it, so a missing file,
a file that is not PEM or a key that does not match its certificate stops the service at start
with a message naming the config key and the path.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field, model_validator

from lipsync.errors import FailedPrecondition
from lipsync.settings import ServerConfig, StrictModel

# gRPC channel argument that replaces the host name checked against the server's certificate.
TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"


class ServerTlsConfig(StrictModel):
    """`server.tls`: the certificate a server presents, and the CA its clients must use."""

    cert_file: Path = Field(..., description="PEM certificate chain of this server")
    key_file: Path = Field(..., description="PEM private key of cert_file")
    client_ca_file: Path | None = Field(
        None,
        description="PEM CA certificates; when set, clients must present a certificate signed "
        "by one of them (mutual TLS)",
    )


class ClientTlsConfig(StrictModel):
    """A client's TLS settings: the CA it trusts and the certificate it presents."""

    ca_file: Path | None = Field(
        None, description="PEM CA certificates to verify the server; unset: gRPC's default roots"
    )
    cert_file: Path | None = Field(None, description="PEM client certificate, for mutual TLS")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    server_name_override: str = Field(
        "", description="host name to check the server's certificate against instead of the target"
    )

    @model_validator(mode="after")
    def _check_key_pair(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file must be set together (the client certificate and its "
                "key, for mutual TLS), or both left unset"
            )
        return self


class ServerConfigWithTls(ServerConfig):
    """`server`: the listening address and limits, plus the optional `tls` section."""

    tls: ServerTlsConfig | None = Field(None, description="serve over TLS; unset: plaintext")


# Section name under which the keys are command-line options (`--ca-file`) instead of config keys.
CLI_SECTION = "cli"


def _key(section: str, field_name: str) -> str:
    """Return how a user wrote a TLS setting: config key `server.tls.ca_file` or `--ca-file`."""
    if section == CLI_SECTION:
        return "--" + field_name.replace("_", "-")
    return f"{section}.{field_name}"


def _read_pem(path: Path, key: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition(f"{key} {path} cannot be read: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise FailedPrecondition(f"{key} {path} is not a PEM file (no -----BEGIN line)")
    return data


def _check_key_pair(cert_file: Path, key_file: Path, section: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise FailedPrecondition(
            f"{_key(section, 'cert_file')} {cert_file} and {_key(section, 'key_file')} {key_file} "
            f"are not a matching PEM certificate and private key: {exc.reason or exc}"
        ) from exc


def _check_ca(ca_file: Path, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise FailedPrecondition(
            f"{key} {ca_file} contains no valid PEM CA certificate: {exc.reason or exc}"
        ) from exc


def server_credentials(tls: ServerTlsConfig, section: str = "server.tls") -> grpc.ServerCredentials:
    """Read and check the server's PEM files and return gRPC server credentials.

    Raises
    ------
    FailedPrecondition
        A file is missing or unreadable, is not PEM, or the key does not match the certificate.
    """
    cert = _read_pem(tls.cert_file, _key(section, "cert_file"))
    key = _read_pem(tls.key_file, _key(section, "key_file"))
    _check_key_pair(tls.cert_file, tls.key_file, section)
    client_ca = None
    if tls.client_ca_file is not None:
        client_ca = _read_pem(tls.client_ca_file, _key(section, "client_ca_file"))
        _check_ca(tls.client_ca_file, _key(section, "client_ca_file"))
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(tls: ClientTlsConfig, section: str) -> grpc.ChannelCredentials:
    """Read and check a client's PEM files and return gRPC channel credentials.

    Raises
    ------
    FailedPrecondition
        A file is missing or unreadable, is not PEM, or the key does not match the certificate.
    """
    ca = None
    if tls.ca_file is not None:
        ca = _read_pem(tls.ca_file, _key(section, "ca_file"))
        _check_ca(tls.ca_file, _key(section, "ca_file"))
    cert = key = None
    if tls.cert_file is not None and tls.key_file is not None:
        cert = _read_pem(tls.cert_file, _key(section, "cert_file"))
        key = _read_pem(tls.key_file, _key(section, "key_file"))
        _check_key_pair(tls.cert_file, tls.key_file, section)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def create_channel(
    target: str,
    tls: ClientTlsConfig | None,
    options: Sequence[tuple[str, Any]] = (),
    *,
    section: str = "tls",
    server_name: str = "",
) -> grpc.Channel:
    """Open a plaintext channel, or a TLS channel when tls is set.

    Parameters
    ----------
    target : gRPC target (host:port, dns:///host:port, ipv4:a:port,b:port, ...)
    tls : the client's TLS settings; None for plaintext
    options : further gRPC channel arguments
    section : config key of tls, named in error messages (CLI_SECTION for command-line options)
    server_name : host name to verify the certificate against when tls.server_name_override is
        empty. Callers that dial a resolved IP address pass the name they resolved.
    """
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    name = tls.server_name_override or server_name
    all_options = [*options, (TARGET_NAME_OVERRIDE, name)] if name else list(options)
    return grpc.secure_channel(target, channel_credentials(tls, section), options=all_options)


def describe_server_tls(tls: ServerTlsConfig | None) -> str:
    """Return "plaintext", "TLS" or "mutual TLS" for log lines."""
    if tls is None:
        return "plaintext"
    return "mutual TLS" if tls.client_ca_file is not None else "TLS"


def wait_for_serving_over_tls(
    address: str, tls: ClientTlsConfig, timeout_s: float, service: str = ""
) -> bool:
    """Poll grpc.health.v1 over TLS until it reports SERVING or the timeout passes.

    The plaintext twin is `lipsync.client.wait_for_serving`.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with create_channel(address, tls, section=CLI_SECTION) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False
