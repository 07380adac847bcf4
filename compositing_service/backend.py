"""How the compositing tier gets mouth crops: the inference tier over gRPC.

The compositing core depends only on `InferenceBackend`; the split deployment uses
`GrpcInferenceBackend`, and the monolithic deployment plugs in a backend that calls the inference
code in-process.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from compositing_service.balancing import AffinityBalancer, Replica
from lipsync.avatar.spec import FACE_SIZE
from lipsync.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LipsyncError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from lipsync.grpc_status import REQUEST_ID_KEY
from lipsync.logs import request_id_var
from lipsync.metrics import ServiceMetrics
from lipsync.protos import inference_pb2
from lipsync.serving import channel_options
from lipsync.tls import ClientTlsConfig, create_channel

if TYPE_CHECKING:
    from compositing_service.config import InferenceClientConfig

logger = logging.getLogger(__name__)

CROP_BYTES = FACE_SIZE * FACE_SIZE * 3

SESSION_ID_KEY = "x-session-id"
"""Metadata key of the stream id sent with StreamMouths (the same key in the inference tier)."""

# A call that gets UNAVAILABLE before its first response is retried, up to RETRY_ATTEMPTS
# attempts in all and within the call's one deadline. Each attempt is a new pick of the
# load-balancing policy, so with round_robin a retry goes to the next replica. The backend
# retries itself because gRPC's retryPolicy is unsafe here. With grpcio 1.85.3, a call that
# gRPC retries after the server died before its first response hangs past its deadline and
# ignores cancel(). tests/test_faults.py kills the inference tier at that moment.
RETRY_ATTEMPTS = 4
# Wait before the second attempt, doubled before each later one up to the maximum, in seconds.
# Each wait is drawn uniformly from [0, that value] ("full jitter").
RETRY_BACKOFF_S = (0.1, 2.0)

# First and largest wait between attempts to reconnect to the inference tier, in milliseconds.
RECONNECT_BACKOFF_MS = (100, 1000)


def service_config(load_balancing: str = "round_robin") -> str:
    """Return the channel's service config: the load-balancing policy."""
    return json.dumps({"loadBalancingConfig": [{load_balancing: {}}]})


def reconnect_options() -> list[tuple[str, int]]:
    """Return channel options that let calls recover soon after the inference tier restarts.

    gRPC's default reconnect backoff grows to 120 s, so a compositing tier that lost the
    inference tier for a minute would fail calls for up to two more minutes after it came back.
    """
    return [
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]


def retry_backoff_s(attempt: int) -> float:
    """Return a jittered wait in seconds before attempt number `attempt` (2 or more)."""
    ceiling = min(RETRY_BACKOFF_S[0] * 2 ** (attempt - 2), RETRY_BACKOFF_S[1])
    return random.uniform(0.0, ceiling)


@dataclass
class Mouths:
    """Consecutive mouth crops returned by the inference tier."""

    frame_indices: np.ndarray  # int [B]
    background_indices: np.ndarray  # int [B]
    crops: np.ndarray  # uint8 [B, 320, 320, 3] BGR
    utterance_frames: int
    audio_ms: float
    inference_ms: float
    model_load_ms: float
    gpu_id: int
    silence_fill: np.ndarray | None = None  # bool [B], streams only: filled-in silence
    session_id: str = ""  # streams only: the inference tier's id of the stream


class MouthStream(Protocol):
    """The crops of a stream, in frame order, with a way to end the stream early."""

    def __iter__(self) -> Iterator[Mouths]: ...

    def __next__(self) -> Mouths: ...

    def cancel(self) -> None:
        """End the stream on both tiers at once; safe from any thread."""


class InferenceBackend(Protocol):
    """Interface of the inference tier as the compositing tier uses it, over gRPC or in-process."""

    def render_mouths(self, request: inference_pb2.RenderMouthsRequest) -> Iterator[Mouths]: ...

    def stream_mouths(
        self, requests: Iterator[inference_pb2.StreamMouthsRequest], *, session_id: str = ""
    ) -> MouthStream: ...

    def load_model(self, model_id: str, force_reload: bool) -> inference_pb2.LoadModelResponse: ...

    def unload_model(self, model_id: str) -> bool: ...

    def model_stats(self, model_id: str) -> inference_pb2.GetModelStatsResponse: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


_CODE_TO_ERROR: dict[grpc.StatusCode, type[LipsyncError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def mouths_from_proto(response: inference_pb2.RenderMouthsResponse) -> Mouths:
    """Convert a response into arrays; the crops are copied once into one contiguous array."""
    crops = np.empty((len(response.crops), FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    for i, crop in enumerate(response.crops):
        if len(crop.pixels) != CROP_BYTES:
            raise Unavailable(
                f"inference tier returned a crop of {len(crop.pixels)} bytes, expected {CROP_BYTES}"
            )
        crops[i] = np.frombuffer(crop.pixels, dtype=np.uint8).reshape(FACE_SIZE, FACE_SIZE, 3)
    return Mouths(
        frame_indices=np.array([c.frame_index for c in response.crops], dtype=np.int64),
        background_indices=np.array([c.background_index for c in response.crops], dtype=np.int64),
        crops=crops,
        utterance_frames=response.utterance_frames,
        audio_ms=response.audio_ms,
        inference_ms=response.inference_ms,
        model_load_ms=response.model_load_ms,
        gpu_id=response.gpu_id,
    )


class _GrpcMouthStream:
    """A StreamMouths call as a MouthStream, with the backend's error mapping."""

    def __init__(self, call: grpc.Call, error: Callable[[grpc.RpcError], LipsyncError]) -> None:
        self._call = call
        self._error = error

    def __iter__(self) -> _GrpcMouthStream:
        return self

    def __next__(self) -> Mouths:
        try:
            response = next(self._call)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        mouths = mouths_from_proto(response)
        mouths.silence_fill = np.array([crop.silence_fill for crop in response.crops], dtype=bool)
        mouths.session_id = response.session_id
        return mouths

    def cancel(self) -> None:
        self._call.cancel()


class GrpcInferenceBackend:
    """Client of the inference tier: deadlines, retries on UNAVAILABLE, request ids, errors.

    One channel dials the whole target, and gRPC's load-balancing policy spreads calls over the
    addresses the target resolves to. With affinity, RenderMouths and LoadModel go instead to
    the avatar's replica chosen by an `AffinityBalancer`, and move to the next replica when it
    returns UNAVAILABLE before its first response.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float,
        max_message_bytes: int,
        load_balancing: str = "round_robin",
        affinity: bool = False,
        ejection_s: float = 5.0,
        resolve_interval_s: float = 30.0,
        tls: ClientTlsConfig | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.metrics = metrics
        options = [
            *channel_options(max_message_bytes),
            ("grpc.service_config", service_config(load_balancing)),
            ("grpc.enable_retries", 0),
            *reconnect_options(),
        ]

        def connect(target: str, server_name: str = "") -> grpc.Channel:
            return create_channel(
                target, tls, options, section="inference.tls", server_name=server_name
            )

        self._all = Replica(address, connect(address))
        self.channel = self._all.channel
        self.stub = self._all.stub
        self.health_stub = self._all.health_stub
        self.balancer: AffinityBalancer | None = None
        if affinity:
            self.balancer = AffinityBalancer(
                address,
                connect,
                ejection_s=ejection_s,
                resolve_interval_s=resolve_interval_s,
                retire_after_s=timeout_s,
            )
            if metrics is not None:
                metrics.watch_replicas(self.balancer.states)

    @classmethod
    def from_config(
        cls, config: InferenceClientConfig, metrics: ServiceMetrics | None = None
    ) -> GrpcInferenceBackend:
        """Create the backend from the compositing tier's `inference` config section."""
        return cls(
            config.target,
            timeout_s=config.timeout_s,
            max_message_bytes=config.max_message_bytes,
            load_balancing=config.load_balancing,
            affinity=config.affinity,
            ejection_s=config.ejection_s,
            resolve_interval_s=config.resolve_interval_s,
            tls=config.tls,
            metrics=metrics,
        )

    def _error(self, exc: grpc.RpcError, replica: str = "") -> LipsyncError:
        code, details = exc.code(), exc.details()
        where = replica or self.address
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"inference tier at {where} is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(
                f"inference tier at {where} did not answer within {self.timeout_s:g} s "
                "(inference.timeout_s)"
            )
        error = _CODE_TO_ERROR.get(code)
        if error is not None:
            return error(details)
        return Unavailable(f"inference tier at {where} failed: {code.name}: {details}")

    def _routes(self, avatar_id: str) -> list[Replica]:
        """Return the replica of each attempt of an avatar's call, in order.

        With affinity these are the avatar's replicas in failover order. Otherwise every
        attempt goes to the channel over the whole target, RETRY_ATTEMPTS times.
        """
        if self.balancer is None or not avatar_id:
            return [self._all] * RETRY_ATTEMPTS
        return self.balancer.candidates(avatar_id)

    def _before_retry(
        self, replica: Replica, avatar_id: str, exc: grpc.RpcError, attempt: int, deadline: float
    ) -> bool:
        """Prepare attempt number `attempt` after UNAVAILABLE; return False if no time is left.

        With affinity the next attempt goes to another replica at once. Otherwise it waits a
        jittered backoff, which gives a restarting inference tier time to come back.
        """
        if self.balancer is not None and avatar_id:
            self._fail_over(replica, avatar_id, exc)
            return time.monotonic() < deadline
        wait_s = retry_backoff_s(attempt)
        if time.monotonic() + wait_s >= deadline:
            return False
        logger.info(
            "inference tier at %s is unavailable (%s); attempt %d of %d in %.2f s",
            replica.target,
            exc.details(),
            attempt,
            RETRY_ATTEMPTS,
            wait_s,
        )
        time.sleep(wait_s)
        return True

    def _record_call(self, method: str, code: grpc.StatusCode, replica: Replica) -> None:
        if self.metrics is not None:
            self.metrics.record_client_call(method, code, replica.target)

    def _fail_over(self, replica: Replica, avatar_id: str, exc: grpc.RpcError) -> None:
        self.balancer.eject(replica)
        if self.metrics is not None:
            self.metrics.record_failover(replica.target)
        logger.warning(
            "inference replica %s is unavailable (%s); avatar %s moves to its next replica, and "
            "%s is skipped for %g s (inference.ejection_s)",
            replica.target,
            exc.details(),
            avatar_id,
            replica.target,
            self.balancer.ejection_s,
        )

    def render_mouths(self, request: inference_pb2.RenderMouthsRequest) -> Iterator[Mouths]:
        routes = self._routes(request.model_id)
        deadline = time.monotonic() + self.timeout_s
        for position, replica in enumerate(routes):
            delivered = False
            try:
                for mouths in self._render_on(replica, request, deadline - time.monotonic()):
                    delivered = True
                    yield mouths
                return
            except grpc.RpcError as exc:
                # Frames already passed on cannot be taken back, so only a call that returned
                # nothing is tried again.
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and not delivered
                if retry and position + 1 < len(routes):
                    if self._before_retry(replica, request.model_id, exc, position + 2, deadline):
                        continue
                raise self._error(exc, replica.target) from None

    def _render_on(
        self, replica: Replica, request: inference_pb2.RenderMouthsRequest, timeout_s: float
    ) -> Iterator[Mouths]:
        """Stream one RenderMouths call; record its status and the time spent waiting on it."""
        call = replica.stub.RenderMouths(
            request,
            timeout=timeout_s,
            metadata=((REQUEST_ID_KEY, request_id_var.get()),),
        )
        waited_s = 0.0
        # Stays CANCELLED when the caller stops reading before the end of the stream.
        code = grpc.StatusCode.CANCELLED
        try:
            responses = iter(call)
            while True:
                started = time.perf_counter()
                response = next(responses, None)
                waited_s += time.perf_counter() - started
                if response is None:
                    break
                yield mouths_from_proto(response)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            raise
        except LipsyncError as exc:
            code = exc.code
            raise
        finally:
            call.cancel()
            self._record_call("RenderMouths", code, replica)
            if self.metrics is not None:
                self.metrics.observe_stage("inference_call", waited_s * 1000)

    def _stream_error(self, exc: grpc.RpcError) -> LipsyncError:
        # A stream has no deadline, so DEADLINE_EXCEEDED is the inference tier's idle timeout,
        # whose message names its limit.
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"inference tier at {self.address}: {details}")
        if code == grpc.StatusCode.CANCELLED:
            return Unavailable(f"the stream to the inference tier at {self.address} was cancelled")
        return self._error(exc)

    def stream_mouths(
        self, requests: Iterator[inference_pb2.StreamMouthsRequest], *, session_id: str = ""
    ) -> MouthStream:
        """Open a StreamMouths call that sends `requests` and returns the crops as they come.

        The call has no deadline: the inference tier closes idle streams. The request id and
        `session_id` travel in the call's metadata.
        """
        metadata = [(REQUEST_ID_KEY, request_id_var.get())]
        if session_id:
            metadata.append((SESSION_ID_KEY, session_id))
        call = self.stub.StreamMouths(requests, metadata=tuple(metadata))
        return _GrpcMouthStream(call, self._stream_error)

    def _unary_on(
        self, replica: Replica, method: str, request: object, timeout_s: float | None = None
    ) -> object:
        try:
            reply = getattr(replica.stub, method)(
                request,
                timeout=self.timeout_s if timeout_s is None else timeout_s,
                metadata=((REQUEST_ID_KEY, request_id_var.get()),),
            )
        except grpc.RpcError as exc:
            self._record_call(method, exc.code(), replica)
            raise
        self._record_call(method, grpc.StatusCode.OK, replica)
        return reply

    def _unary(self, method: str, request: object, avatar_id: str = "") -> object:
        """Call a unary method on the avatar's replica, retrying or failing over on UNAVAILABLE."""
        routes = self._routes(avatar_id)
        deadline = time.monotonic() + self.timeout_s
        for position, replica in enumerate(routes):
            try:
                return self._unary_on(replica, method, request, deadline - time.monotonic())
            except grpc.RpcError as exc:
                unavailable = exc.code() == grpc.StatusCode.UNAVAILABLE
                if unavailable and position + 1 < len(routes):
                    if self._before_retry(replica, avatar_id, exc, position + 2, deadline):
                        continue
                raise self._error(exc, replica.target) from None
        raise AssertionError("unreachable: _routes returns at least one replica")

    # NOTE: without affinity, LoadModel, UnloadModel and GetModelStats reach the one replica
    # that round_robin picks for the call, not every replica of the target.
    def load_model(self, model_id: str, force_reload: bool) -> inference_pb2.LoadModelResponse:
        request = inference_pb2.LoadModelRequest(model_id=model_id, force_reload=force_reload)
        return self._unary("LoadModel", request, model_id)

    def unload_model(self, model_id: str) -> bool:
        request = inference_pb2.UnloadModelRequest(model_id=model_id)
        if self.balancer is None:
            return self._unary("UnloadModel", request).unloaded
        # After a failover an avatar may be loaded on more than one replica: unload it on all.
        unloaded = False
        for replica in self.balancer.replicas():
            try:
                unloaded |= self._unary_on(replica, "UnloadModel", request).unloaded
            except grpc.RpcError as exc:
                logger.warning(
                    "cannot unload avatar %s on inference replica %s: %s: %s",
                    model_id,
                    replica.target,
                    exc.code().name,
                    exc.details(),
                )
        return unloaded

    def model_stats(self, model_id: str) -> inference_pb2.GetModelStatsResponse:
        request = inference_pb2.GetModelStatsRequest(model_id=model_id)
        return self._unary("GetModelStats", request, model_id)

    def healthy(self, timeout_s: float = 1.0) -> bool:
        """Return whether the inference tier (with affinity: any of its replicas) is SERVING."""
        replicas = self.balancer.replicas() if self.balancer is not None else [self._all]
        for replica in replicas:
            try:
                reply = replica.health_stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s
                )
            except grpc.RpcError:
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return True
        return False

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the inference tier reports SERVING or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.healthy():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def close(self) -> None:
        self.channel.close()
        if self.balancer is not None:
            self.balancer.close()
