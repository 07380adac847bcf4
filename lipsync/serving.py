"""Server lifecycle shared by both services: options, health, signals and graceful stop."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lipsync.grpc_status import StatusInterceptor
from lipsync.limits import ConcurrencyLimiter, RequestLimitInterceptor
from lipsync.metrics import ServiceMetrics
from lipsync.tls import ServerTlsConfig, describe_server_tls, server_credentials

logger = logging.getLogger(__name__)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Return gRPC options that set both message size limits explicitly."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class GrpcService:
    """A gRPC server with the standard health service, started and stopped as a pair.

    Health reports NOT_SERVING until `mark_serving` is called, which the services do only once
    their models are loaded and warmed up.
    """

    def __init__(
        self,
        *,
        name: str,
        address: str,
        max_workers: int,
        max_message_bytes: int,
        grace_period_s: float,
        service_names: Sequence[str],
        metrics: ServiceMetrics | None = None,
        tls: ServerTlsConfig | None = None,
        max_concurrent_requests: int = 0,
        max_concurrent_streams: int = 0,
    ) -> None:
        self.name = name
        self.requested_address = address
        self.grace_period_s = grace_period_s
        self.service_names = list(service_names)
        self.metrics = metrics
        self.tls = tls
        self.request_limiter = ConcurrencyLimiter(
            max_concurrent_requests, "limits.max_concurrent_requests"
        )
        if max_concurrent_requests >= max_workers:
            logger.warning(
                "%s: limits.max_concurrent_requests (%d) is not below server.max_workers (%d), "
                "so calls over the thread count wait in a queue instead of being rejected",
                name,
                max_concurrent_requests,
                max_workers,
            )
        # A sync gRPC server runs each call on a pool thread for the call's whole length, and a
        # call that finds no free thread waits in a queue, health checks included. Open streams
        # get threads of their own, so that they cannot starve health checks and the request
        # limiter, which runs on a pool thread too.
        threads = max_workers + max_concurrent_streams
        interceptors = [StatusInterceptor(), RequestLimitInterceptor(self.request_limiter)]
        if metrics is not None:
            interceptors.insert(0, metrics.interceptor())
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name),
            interceptors=interceptors,
            options=channel_options(max_message_bytes),
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = 0
        self._stopped = threading.Event()
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run callback after the server has stopped (release threads, pools, channels)."""
        self._on_stop.append(callback)

    def _set_health(self, status: int) -> None:
        for service in ["", *self.service_names]:
            self.health.set(service, status)

    def start(self) -> int:
        """Bind and start serving; return the bound port."""
        if self.tls is None:
            self.port = self.server.add_insecure_port(self.requested_address)
        else:
            credentials = server_credentials(self.tls)
            self.port = self.server.add_secure_port(self.requested_address, credentials)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot bind {self.requested_address}")
        self.server.start()
        host = self.requested_address.rsplit(":", 1)[0]
        logger.info(
            "%s listening on %s:%d (%s)", self.name, host, self.port, describe_server_tls(self.tls)
        )
        return self.port

    def mark_serving(self) -> None:
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info("%s health: SERVING", self.name)

    def stop(self, grace_period_s: float | None = None) -> None:
        """Report NOT_SERVING, reject new calls, and let in-flight calls finish within the grace.

        Calls still running when the grace period ends are cancelled. An open health Watch is
        such a call: it receives NOT_SERVING first.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.grace_period_s if grace_period_s is None else grace_period_s
        # Health changes are ignored from here on, so a late mark_serving cannot undo this.
        self.health.enter_graceful_shutdown()
        logger.info("%s health: NOT_SERVING", self.name)
        stopped = self.server.stop(grace)
        logger.info(
            "%s stopping: new calls are rejected, in-flight calls have up to %.1f s to finish",
            self.name,
            grace,
        )
        stopped.wait()
        for callback in self._on_stop:
            callback()
        logger.info("%s stopped", self.name)

    def serve_until_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        received = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            logger.info("%s received %s", self.name, signal.Signals(signum).name)
            received.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not received.wait(timeout=1.0):
            pass
        self.stop()
