"""Prometheus metrics of one service, on a registry of its own, served over HTTP.

Each service process creates one `ServiceMetrics`. Its registry is not prometheus_client's
global one, so several services can run in one process (the monolithic mode does, and tests
may) without their series mixing. The metric names and labels are listed in
docs/operations.md:

- gRPC server calls, as the go-grpc-prometheus names: `grpc_server_started_total`,
  `grpc_server_handled_total` (with `grpc_code`), `grpc_server_handling_seconds`, plus
  `lipsync_grpc_server_in_flight_calls` and `lipsync_grpc_server_retried_calls_total`.
- `lipsync_stage_duration_seconds{stage}`: audio, inference, composite, inference_call.
- `lipsync_avatars_loaded{tier}` and `lipsync_avatar_memory_bytes{tier,avatar}`, read from the
  avatar registries at scrape time.
- Calls from the compositing tier to the inference tier: `lipsync_inference_client_calls_total`
  by method, code and replica, `lipsync_inference_client_failovers_total` and
  `lipsync_inference_replica_up`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import Field

from lipsync.errors import FailedPrecondition
from lipsync.interceptors import rewrap_handler
from lipsync.registry import ModelRegistry
from lipsync.settings import StrictModel

logger = logging.getLogger(__name__)

# gRPC sends this header on the second and later attempts of a call retried by its retry policy.
PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts"
HEALTH_WATCH_METHOD = "/grpc.health.v1.Health/Watch"

CALL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

STAGES = ("audio", "inference", "composite", "inference_call")


class MetricsConfig(StrictModel):
    """`metrics`: where the Prometheus endpoint listens (HTTP, path /metrics)."""

    enabled: bool = Field(False, description="serve the Prometheus endpoint")
    host: str = Field("0.0.0.0", description="address the HTTP endpoint binds")
    port: int = Field(..., ge=0, le=65535, description="HTTP port; 0 picks a free port")


def _call_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _final_code(context: grpc.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """Return the status a call ended with, as far as the server side can tell."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, GeneratorExit):
        # The response stream was closed before its end: the client cancelled or timed out.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _AvatarCollector(Collector):
    """Gauges read from avatar registries at scrape time."""

    def __init__(self) -> None:
        self.registries: list[tuple[str, ModelRegistry]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily(
            "lipsync_avatars_loaded", "Avatars loaded in this tier's registry", labels=["tier"]
        )
        memory = GaugeMetricFamily(
            "lipsync_avatar_memory_bytes",
            "Measured memory of each loaded avatar on this tier, in bytes",
            labels=["tier", "avatar"],
        )
        users = GaugeMetricFamily(
            "lipsync_avatar_active_users",
            "Requests and streams using each loaded avatar right now",
            labels=["tier", "avatar"],
        )
        for tier, registry in self.registries:
            entries = registry.entries()
            loaded.add_metric([tier], len(entries))
            for avatar_id, entry in sorted(entries.items()):
                memory.add_metric([tier, avatar_id], entry.item.memory_bytes)
                users.add_metric([tier, avatar_id], entry.active_users)
        yield loaded
        yield memory
        yield users


class _ReplicaCollector(Collector):
    """`lipsync_inference_replica_up`: 1 for each replica the balancer routes to, 0 if ejected."""

    def __init__(self, states: Callable[[], Iterable[tuple[str, bool]]]) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "lipsync_inference_replica_up",
            "1 if avatar affinity routes to the inference replica, 0 while it is ejected",
            labels=["replica"],
        )
        for replica, up in self.states():
            family.add_metric([replica], 1 if up else 0)
        yield family


class ServiceMetrics:
    """The metrics of one service and the interceptor that records its gRPC calls."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        call_labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.started = Counter(
            "grpc_server_started_total",
            "gRPC calls started on the server",
            call_labels,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "gRPC calls completed on the server, by status code",
            [*call_labels, "grpc_code"],
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start to the end of a gRPC call on the server (a whole stream for "
            "streaming calls), in seconds",
            call_labels,
            buckets=CALL_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "lipsync_grpc_server_in_flight_calls",
            "gRPC calls running on the server now; the streaming types are the open streams",
            call_labels,
            registry=self.registry,
        )
        self.retried = Counter(
            "lipsync_grpc_server_retried_calls_total",
            "gRPC calls that arrived as a retry attempt of the caller's retry policy",
            ["grpc_service", "grpc_method"],
            registry=self.registry,
        )

        self.stage_seconds = Histogram(
            "lipsync_stage_duration_seconds",
            "Time of one pipeline stage: audio per request, inference and composite per batch, "
            "inference_call per call to the inference tier, in seconds",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )

        self.client_calls = Counter(
            "lipsync_inference_client_calls_total",
            "Calls from the compositing tier to the inference tier, by status code",
            ["grpc_method", "grpc_code", "replica"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "lipsync_inference_client_failovers_total",
            "Calls moved to another inference replica after the first returned UNAVAILABLE",
            ["replica"],
            registry=self.registry,
        )

        self._avatars = _AvatarCollector()
        self.registry.register(self._avatars)

    def watch_avatars(self, tier: str, registry: ModelRegistry) -> None:
        """Report the avatars of registry under the label tier="<tier>"."""
        self._avatars.registries.append((tier, registry))

    def watch_replicas(self, states: Callable[[], Iterable[tuple[str, bool]]]) -> None:
        """Report `lipsync_inference_replica_up` from states(), called at each scrape."""
        self.registry.register(_ReplicaCollector(states))

    def observe_stage(self, stage: str, milliseconds: float) -> None:
        """Record one duration of a pipeline stage (one of STAGES)."""
        self.stage_seconds.labels(stage).observe(milliseconds / 1000.0)

    def record_client_call(self, method: str, code: grpc.StatusCode, replica: str) -> None:
        self.client_calls.labels(method, code.name, replica).inc()

    def record_failover(self, replica: str) -> None:
        self.failovers.labels(replica).inc()

    def interceptor(self) -> grpc.ServerInterceptor:
        """Return a server interceptor that records every call in these metrics."""
        return _MetricsInterceptor(self)


class _MetricsInterceptor(grpc.ServerInterceptor):
    """Count calls by method and status code, and time them. It is the outermost interceptor."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler_call_details.method == HEALTH_WATCH_METHOD:
            # Wrapping turns the non-blocking Watch into a generator that holds a server thread
            # for as long as the client watches.
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        labels = (service, method, _call_type(handler))

        return rewrap_handler(
            handler,
            lambda behavior: self._wrap_unary(behavior, labels),
            lambda behavior: self._wrap_stream(behavior, labels),
        )

    def _begin(self, context: grpc.ServicerContext, labels: tuple[str, str, str]) -> float:
        metrics = self.metrics
        metrics.started.labels(*labels).inc()
        metrics.in_flight.labels(*labels).inc()
        for key, _ in context.invocation_metadata() or ():
            if key == PREVIOUS_ATTEMPTS_KEY:
                metrics.retried.labels(labels[0], labels[1]).inc()
                break
        return time.perf_counter()

    def _end(
        self,
        context: grpc.ServicerContext,
        labels: tuple[str, str, str],
        started: float,
        exc: BaseException | None,
    ) -> None:
        metrics = self.metrics
        metrics.in_flight.labels(*labels).dec()
        metrics.handling_seconds.labels(*labels).observe(time.perf_counter() - started)
        metrics.handled.labels(*labels, _final_code(context, exc).name).inc()

    def _wrap_unary(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(context, labels)
            failure: BaseException | None = None
            try:
                return behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._end(context, labels, started, failure)

        return wrapper

    def _wrap_stream(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = self._begin(context, labels)
            failure: BaseException | None = None
            try:
                yield from behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._end(context, labels, started, failure)

        return wrapper


class MetricsEndpoint:
    """The HTTP server of a ServiceMetrics registry, in a daemon thread."""

    def __init__(self, metrics: ServiceMetrics, config: MetricsConfig, *, section: str) -> None:
        try:
            self._server, self._thread = start_http_server(
                config.port, addr=config.host, registry=metrics.registry
            )
        except OSError as exc:
            raise FailedPrecondition(
                f"{section}.port {config.port}: cannot listen on {config.host}:{config.port}: "
                f"{exc.strerror}; choose another port, or 0 for a free one"
            ) from exc
        self.port = self._server.server_port
        logger.info("metrics on http://%s:%d/metrics", config.host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_endpoint(
    metrics: ServiceMetrics, config: MetricsConfig, *, section: str = "metrics"
) -> MetricsEndpoint | None:
    """Serve metrics over HTTP when config.enabled, and return the endpoint (None if disabled)."""
    if not config.enabled:
        return None
    return MetricsEndpoint(metrics, config, section=section)
