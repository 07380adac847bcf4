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
    ) -> None:
        self.name = name
        self.requested_address = address
        self.grace_period_s = grace_period_s
        self.service_names = list(service_names)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name),
            interceptors=[StatusInterceptor()],
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
        self.port = self.server.add_insecure_port(self.requested_address)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot bind {self.requested_address}")
        self.server.start()
        host = self.requested_address.rsplit(":", 1)[0]
        logger.info("%s listening on %s:%d", self.name, host, self.port)
        return self.port

    def mark_serving(self) -> None:
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info("%s health: SERVING", self.name)

    def stop(self, grace_period_s: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, and let in-flight calls finish within the grace."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.grace_period_s if grace_period_s is None else grace_period_s
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        logger.info("%s stopping: waiting up to %.1f s for in-flight calls", self.name, grace)
        self.server.stop(grace).wait()
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
