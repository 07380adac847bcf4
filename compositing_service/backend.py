"""How the compositing tier gets mouth crops: the inference tier over gRPC.

The compositing core depends only on `InferenceBackend`; the split deployment uses
`GrpcInferenceBackend`, and the monolithic deployment plugs in a backend that calls the inference
code in-process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
from lipsync.protos import inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

logger = logging.getLogger(__name__)

CROP_BYTES = FACE_SIZE * FACE_SIZE * 3

# Retries happen only on UNAVAILABLE, with exponential backoff, and (as gRPC retries always
# do) only before the first response of a call has arrived.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "inference.InferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


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


class InferenceBackend(Protocol):
    """What the compositing tier needs from the inference tier, over gRPC or in-process."""

    def render_mouths(self, request: inference_pb2.RenderMouthsRequest) -> Iterator[Mouths]: ...

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


class GrpcInferenceBackend:
    """Client of the inference tier: deadlines, retries on UNAVAILABLE, request ids, errors."""

    def __init__(self, address: str, *, timeout_s: float, max_message_bytes: int) -> None:
        self.address = address
        self.timeout_s = timeout_s
        options = [
            *channel_options(max_message_bytes),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
        ]
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def _error(self, exc: grpc.RpcError) -> LipsyncError:
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"inference tier at {self.address} is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(
                f"inference tier at {self.address} did not answer within {self.timeout_s:g} s "
                "(inference.timeout_s)"
            )
        error = _CODE_TO_ERROR.get(code)
        if error is not None:
            return error(details)
        return Unavailable(f"inference tier at {self.address} failed: {code.name}: {details}")

    def render_mouths(self, request: inference_pb2.RenderMouthsRequest) -> Iterator[Mouths]:
        call = self.stub.RenderMouths(
            request,
            timeout=self.timeout_s,
            metadata=((REQUEST_ID_KEY, request_id_var.get()),),
        )
        try:
            for response in call:
                yield mouths_from_proto(response)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    def _unary(self, method: Callable, request: object) -> object:
        try:
            return method(
                request,
                timeout=self.timeout_s,
                metadata=((REQUEST_ID_KEY, request_id_var.get()),),
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def load_model(self, model_id: str, force_reload: bool) -> inference_pb2.LoadModelResponse:
        request = inference_pb2.LoadModelRequest(model_id=model_id, force_reload=force_reload)
        return self._unary(self.stub.LoadModel, request)

    def unload_model(self, model_id: str) -> bool:
        request = inference_pb2.UnloadModelRequest(model_id=model_id)
        return self._unary(self.stub.UnloadModel, request).unloaded

    def model_stats(self, model_id: str) -> inference_pb2.GetModelStatsResponse:
        request = inference_pb2.GetModelStatsRequest(model_id=model_id)
        return self._unary(self.stub.GetModelStats, request)

    def healthy(self, timeout_s: float = 1.0) -> bool:
        """Return whether the inference tier reports SERVING."""
        try:
            reply = self.health_stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

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
