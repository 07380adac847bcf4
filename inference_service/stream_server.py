"""gRPC handler of StreamMouths: one long-lived call per streaming session."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator

import grpc

from inference_service.config import StreamsConfig
from inference_service.stream_runner import StreamRunner
from inference_service.streaming import StreamBatch
from lipsync.protos import inference_pb2
from lipsync.streams import StreamTracker

SESSION_ID_KEY = "x-session-id"
"""Metadata key of the stream id the compositing tier assigned (the same key in its backend)."""

_SESSION_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_TRACKER_LOCK = threading.Lock()


def stream_batch_to_proto(
    batch: StreamBatch, session_id: str
) -> inference_pb2.RenderMouthsResponse:
    """Convert a batch of a stream into a response that carries the session id."""
    crops = [
        inference_pb2.MouthCrop(
            frame_index=int(frame),
            background_index=int(background),
            pixels=crop.tobytes(),
            silence_fill=bool(fill),
        )
        for frame, background, crop, fill in zip(
            batch.frame_indices,
            batch.background_indices,
            batch.crops,
            batch.silence_fill,
            strict=True,
        )
    ]
    return inference_pb2.RenderMouthsResponse(
        crops=crops,
        utterance_frames=batch.utterance_frames,
        audio_ms=batch.audio_ms,
        inference_ms=batch.inference_ms,
        model_load_ms=batch.model_load_ms,
        gpu_id=batch.gpu_id,
        session_id=session_id,
    )


class StreamMouthsHandler:
    """Mixin of InferenceServicer that serves StreamMouths.

    The servicer provides ``self.core``. The stream limits come from `configure_streams`, else
    from ``self.config.streams`` when the servicer has a config, else from the defaults.
    """

    @property
    def stream_sessions(self) -> StreamTracker:
        """The open streams; GetModelStats reports their count as active_streams."""
        tracker = self.__dict__.get("_stream_sessions")
        if tracker is None:
            with _TRACKER_LOCK:
                tracker = self.__dict__.setdefault("_stream_sessions", StreamTracker())
        return tracker

    def configure_streams(self, limits: StreamsConfig) -> None:
        """Set the stream limits (the inference config's `streams` section)."""
        self.__dict__["_stream_limits"] = limits

    def stream_limits(self) -> StreamsConfig:
        """Return the limits in force: see the class docstring."""
        limits = self.__dict__.get("_stream_limits")
        if limits is not None:
            return limits
        config = getattr(self, "config", None)
        return getattr(config, "streams", None) or StreamsConfig()

    def _new_session_id(self, context: grpc.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == SESSION_ID_KEY and _SESSION_ID.fullmatch(str(value)):
                if str(value) not in self.stream_sessions:
                    return str(value)
        return uuid.uuid4().hex[:16]

    def StreamMouths(
        self,
        request_iterator: Iterator[inference_pb2.StreamMouthsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[inference_pb2.RenderMouthsResponse]:
        session_id = self._new_session_id(context)
        runner = StreamRunner(
            self.core,
            request_iterator,
            session_id=session_id,
            tracker=self.stream_sessions,
            limits=self.stream_limits(),
        )
        context.add_callback(runner.cancel)
        for batch in runner.run():
            yield stream_batch_to_proto(batch, session_id)
