"""Spreading the compositing tier's calls over several inference replicas.

Without affinity, one gRPC channel dials the whole target and gRPC's `round_robin` policy picks
a replica per call (see `GrpcInferenceBackend`). With `inference.affinity`, `AffinityBalancer`
opens one channel per replica and sends every call for an avatar to the same replica, so each
avatar's UNet is loaded on one replica instead of all of them. The replica is chosen by
rendezvous hashing (highest score of a hash of avatar id and replica address): every
compositing process picks the same replica for an avatar, and when a replica joins or leaves
only the avatars whose top choice it is move. A replica that returns UNAVAILABLE is ejected for
`ejection_s` seconds, and its avatars go to their next choice meanwhile.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2_grpc

from lipsync.errors import Unavailable
from lipsync.protos import inference_pb2_grpc

logger = logging.getLogger(__name__)

DNS_DEFAULT_PORT = 443  # gRPC's default port for dns: targets without one


def _parse_ip_port(entry: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"inference replica {entry!r} is not IP:port (for IPv6: [IP]:port)")
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(
            f"inference replica {entry!r} is not an IP address; list IP:port entries, or put one "
            "DNS name that resolves to every replica in inference.address (dns:///name:port)"
        ) from None
    return address, int(port)


def replica_target(entries: Sequence[str]) -> str:
    """Join IP:port entries into one gRPC target (`ipv4:a:p,b:q` or `ipv6:[a]:p,[b]:q`).

    Raises
    ------
    ValueError
        An entry is not IP:port, or the list mixes IPv4 and IPv6 addresses.
    """
    if not entries:
        raise ValueError("inference.addresses is empty: list at least one IP:port")
    parsed = [_parse_ip_port(entry) for entry in entries]
    versions = {address.version for address, _ in parsed}
    if len(versions) > 1:
        raise ValueError(
            "inference.addresses mixes IPv4 and IPv6 addresses; gRPC's ipv4: and ipv6: targets "
            "take one family, so list one family or use a DNS name"
        )
    if versions == {4}:
        return "ipv4:" + ",".join(f"{address}:{port}" for address, port in parsed)
    return "ipv6:" + ",".join(f"[{address}]:{port}" for address, port in parsed)


@dataclass(frozen=True)
class ReplicaSource:
    """Source of a target's replicas: a fixed list, or a DNS name to resolve."""

    static: tuple[str, ...] = ()
    host: str = ""
    port: int = 0


# Schemes that gRPC resolves itself. gRPC prepends dns:/// to a target with any other prefix, so
# such a target is a DNS name.
_OTHER_SCHEMES = ("unix", "unix-abstract", "vsock", "xds", "google-c2p")


def replica_source(target: str) -> ReplicaSource:
    """Split a gRPC target into its replicas (ipv4:/ipv6: lists) or the DNS name to resolve.

    A target of another scheme (unix:, xds:, ...) is treated as one replica.
    """
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return ReplicaSource(static=tuple(entry for entry in rest.split(",") if entry))
    if scheme in _OTHER_SCHEMES:
        return ReplicaSource(static=(target,))
    name = target
    if scheme == "dns":
        # dns:[//authority/]host[:port]
        name = rest.split("/", 3)[3] if rest.startswith("//") else rest
    if name.startswith("["):
        host, _, port = name[1:].partition("]")
        port = port.removeprefix(":")
    elif name.count(":") == 1:
        host, _, port = name.partition(":")
    else:
        host, port = name, ""
    return ReplicaSource(host=host, port=int(port) if port.isdigit() else DNS_DEFAULT_PORT)


def resolve_replicas(host: str, port: int) -> list[str]:
    """Resolve a DNS name to one IP:port entry per address, sorted."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    entries = set()
    for family, _, _, _, sockaddr in infos:
        address = sockaddr[0]
        entries.add(f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}")
    return sorted(entries)


def rendezvous_score(avatar_id: str, replica: str) -> int:
    """Return the stable 64-bit score of a replica for an avatar (the highest score wins)."""
    digest = hashlib.blake2b(f"{avatar_id}\n{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class Replica:
    """One inference replica: its address, its own channel and stubs."""

    target: str
    channel: grpc.Channel
    stub: inference_pb2_grpc.InferenceServiceStub = field(init=False)
    health_stub: health_pb2_grpc.HealthStub = field(init=False)
    ejected_until: float = 0.0

    def __post_init__(self) -> None:
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)


class AffinityBalancer:
    """Per-avatar choice of an inference replica with failover; see the module docstring.

    Parameters
    ----------
    target : gRPC target whose replicas to balance over (ipv4:/ipv6: list, DNS name, ...)
    connect : opens a channel to one replica, given its IP:port and the host name that its
        TLS certificate must match ("" for an address given as an IP)
    ejection_s : seconds a replica is skipped after an UNAVAILABLE
    resolve_interval_s : seconds between resolutions of a DNS name
    retire_after_s : seconds a channel of a replica that left the DNS answer stays open, so
        calls still running on it can finish (the call deadline is enough)
    """

    def __init__(
        self,
        target: str,
        connect: Callable[[str, str], grpc.Channel],
        *,
        ejection_s: float,
        resolve_interval_s: float,
        retire_after_s: float,
    ) -> None:
        self.target = target
        self.source = replica_source(target)
        self._connect = connect
        self.ejection_s = ejection_s
        self.resolve_interval_s = resolve_interval_s
        self.retire_after_s = retire_after_s
        self._lock = threading.Lock()
        self._replicas: dict[str, Replica] = {}
        self._retiring: list[tuple[float, grpc.Channel]] = []
        self._resolved_at = float("-inf")
        self._refresh(force=True)

    def _refresh(self, *, force: bool = False) -> None:
        """Resolve a DNS source again when due, and open and retire channels to match."""
        now = time.monotonic()
        with self._lock:
            due = now - self._resolved_at >= self.resolve_interval_s
            if not (force or (due and not self.source.static)):
                return
            self._resolved_at = now
        if self.source.static:
            entries, server_name = list(self.source.static), ""
        else:
            server_name = self.source.host
            try:
                entries = resolve_replicas(self.source.host, self.source.port)
            except OSError as exc:
                logger.warning(
                    "cannot resolve inference replicas %s: %s; keeping %d known replicas",
                    self.target,
                    exc,
                    len(self._replicas),
                )
                return
        with self._lock:
            added = [entry for entry in entries if entry not in self._replicas]
            removed = [entry for entry in self._replicas if entry not in entries]
            for entry in added:
                self._replicas[entry] = Replica(entry, self._connect(entry, server_name))
            for entry in removed:
                replica = self._replicas.pop(entry)
                self._retiring.append((now + self.retire_after_s, replica.channel))
            expired = [channel for until, channel in self._retiring if until <= now]
            self._retiring = [(until, ch) for until, ch in self._retiring if until > now]
        for channel in expired:
            channel.close()
        if added or removed:
            logger.info(
                "inference replicas of %s: %s (added %s, removed %s)",
                self.target,
                ", ".join(entries) or "none",
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )

    def replicas(self) -> list[Replica]:
        """Return every known replica, sorted by address."""
        self._refresh()
        with self._lock:
            return [self._replicas[key] for key in sorted(self._replicas)]

    def candidates(self, avatar_id: str) -> list[Replica]:
        """Return the replicas to try for an avatar, in order.

        Replicas in service come first by rendezvous score, then the ejected ones by score, so a
        call is never rejected while any replica might respond.

        Raises
        ------
        Unavailable
            The target resolved to no replica.
        """
        replicas = self.replicas()
        if not replicas:
            raise Unavailable(
                f"inference target {self.target} resolved to no replica; check inference.address"
            )
        now = time.monotonic()
        ranked = sorted(replicas, key=lambda r: rendezvous_score(avatar_id, r.target), reverse=True)
        in_service = [replica for replica in ranked if replica.ejected_until <= now]
        ejected = [replica for replica in ranked if replica.ejected_until > now]
        return in_service + ejected

    def eject(self, replica: Replica) -> None:
        """Skip replica for ejection_s seconds."""
        replica.ejected_until = time.monotonic() + self.ejection_s

    def states(self) -> list[tuple[str, bool]]:
        """Return (address, in service) for every known replica, without resolving again."""
        now = time.monotonic()
        with self._lock:
            replicas = sorted(self._replicas.values(), key=lambda r: r.target)
        return [(replica.target, replica.ejected_until <= now) for replica in replicas]

    def close(self) -> None:
        with self._lock:
            channels = [replica.channel for replica in self._replicas.values()]
            channels += [channel for _, channel in self._retiring]
            self._replicas.clear()
            self._retiring.clear()
        for channel in channels:
            channel.close()
