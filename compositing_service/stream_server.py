"""gRPC handler of StreamRender: audio chunks in, frames out.

Each StreamRender call is relayed to one long-lived StreamMouths call to the inference tier. A
reader thread takes the client's messages (at most `INBOX_MESSAGES` ahead), and the relay turns
them into StreamMouths messages. The handler composites and encodes the crops as they come
back. Pacing, silence fill and barge-in happen on the inference tier. A client that cancels or
disconnects cancels the inference call at once, so both tiers free the stream together.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import grpc

from compositing_service.avatars import CompositingAvatar
from compositing_service.backend import MouthStream
from compositing_service.core import RenderJob
from lipsync.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, LipsyncError
from lipsync.logs import avatar_id_var
from lipsync.protos import compositing_pb2, inference_pb2
from lipsync.streams import MessageReader, Signal, StreamTracker

logger = logging.getLogger(__name__)

FRAME_MS = 40
MAX_LOOKAHEAD_ROWS = 8

INBOX_MESSAGES = 4
"""Client messages read ahead of the relay at most; more wait in gRPC's flow control window."""

_TRACKER_LOCK = threading.Lock()


def _idle_error(session_id: str, idle_s: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"stream {session_id} received no message for {idle_s:g} s, the limit of "
        "streams.idle_timeout_s. Send audio (an empty audio chunk keeps a paced stream open) "
        "or half-close the stream to end the utterance."
    )


class _Relay:
    """The client's messages after the config, as StreamMouths messages for the inference tier.

    A message out of order or an idle client ends the relay with `error` set and cancels the
    inference call, so the handler can report that error instead of the cancellation.
    """

    def __init__(
        self,
        reader: MessageReader[compositing_pb2.StreamRenderRequest],
        start: inference_pb2.StreamStart,
        *,
        session_id: str,
        idle_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.start = start
        self.session_id = session_id
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.error: LipsyncError | None = None
        self._lock = threading.Lock()
        self._stream: MouthStream | None = None
        self._cancel_requested = False

    def attach(self, stream: MouthStream) -> None:
        """Set the inference call to cancel on failure (it may have failed already)."""
        with self._lock:
            self._stream = stream
            cancel = self._cancel_requested
        if cancel:
            stream.cancel()

    def cancel_stream(self) -> None:
        with self._lock:
            stream = self._stream
            self._cancel_requested = stream is None
        if stream is not None:
            stream.cancel()

    def _fail(self, error: LipsyncError) -> None:
        self.error = error
        self.cancel_stream()

    def requests(self) -> Iterator[inference_pb2.StreamMouthsRequest]:
        """Yield start, then the client's audio and interrupts; return when the client ends."""
        yield inference_pb2.StreamMouthsRequest(start=self.start)
        while True:
            idle_at = self.reader.last_arrival + self.idle_timeout_s
            item = self.reader.get(idle_at - self.clock())
            if item is Signal.END:
                return
            if item is Signal.CANCELLED:
                self.cancel_stream()
                return
            if item is Signal.TIMEOUT:
                if self.clock() - self.reader.last_arrival >= self.idle_timeout_s:
                    self._fail(_idle_error(self.session_id, self.idle_timeout_s))
                    return
                continue

            kind = item.WhichOneof("message")
            if kind == "audio":
                yield inference_pb2.StreamMouthsRequest(
                    audio=inference_pb2.StreamAudio(data=item.audio.data)
                )
            elif kind == "interrupt":
                logger.info("stream %s: interrupt from the client", self.session_id)
                yield inference_pb2.StreamMouthsRequest(interrupt=inference_pb2.StreamInterrupt())
            elif kind == "config":
                self._fail(
                    InvalidArgument("config was sent twice: a stream takes one config, first")
                )
                return
            else:
                self._fail(
                    InvalidArgument("a stream message has none of config, audio or interrupt set")
                )
                return


class StreamRenderHandler:
    """Mixin of CompositingServicer that serves StreamRender.

    The servicer provides ``self.core`` (CompositingCore) and ``self.config``
    (CompositingConfig, whose `streams` section sets the limits).
    """

    @property
    def stream_sessions(self) -> StreamTracker:
        """The open streams; GetModelStats reports their count as active_streams."""
        tracker = self.__dict__.get("_stream_sessions")
        if tracker is None:
            with _TRACKER_LOCK:
                tracker = self.__dict__.setdefault("_stream_sessions", StreamTracker())
        return tracker

    def StreamRender(
        self,
        request_iterator: Iterator[compositing_pb2.StreamRenderRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[compositing_pb2.StreamRenderResponse]:
        limits = self.config.streams
        session_id = uuid.uuid4().hex[:16]
        self.stream_sessions.open(session_id, limits.max_streams, "streams.max_streams")
        reader: MessageReader[compositing_pb2.StreamRenderRequest] = MessageReader(
            request_iterator, capacity=INBOX_MESSAGES, name=f"render-{session_id}"
        )
        try:
            if not context.add_callback(reader.cancel):
                return
            reader.start()
            config = self._first_config(reader, session_id, limits.idle_timeout_s)
            if config is not None:
                yield from self._serve(config, reader, session_id, limits.idle_timeout_s, context)
        finally:
            reader.cancel()
            self.stream_sessions.close(session_id)

    def _first_config(
        self,
        reader: MessageReader[compositing_pb2.StreamRenderRequest],
        session_id: str,
        idle_s: float,
    ) -> compositing_pb2.StreamConfig | None:
        while True:
            item = reader.get(reader.last_arrival + idle_s - time.monotonic())
            if item is Signal.CANCELLED:
                return None
            if item is Signal.END:
                raise InvalidArgument("the stream ended before its config: send config first")
            if item is Signal.TIMEOUT:
                if time.monotonic() - reader.last_arrival >= idle_s:
                    raise _idle_error(session_id, idle_s)
                continue
            kind = item.WhichOneof("message")
            if kind != "config":
                raise InvalidArgument(
                    f"the first message of a stream must be config, got "
                    f"{kind or 'an empty message'}"
                )
            return item.config

    def _validate(self, config: compositing_pb2.StreamConfig) -> tuple[str, int]:
        # Reuse the unary checks of the fields both calls share; return the format and quality.
        from compositing_service.server import output_format_from_proto

        output_format = output_format_from_proto(config.output_format)
        self.core.validate(
            RenderJob(
                avatar_id=config.model_id,
                raw_audio=b"",
                sample_rate=config.sample_rate,
                audio_encoding=config.audio_encoding,
                audio_channels=config.audio_channels,
                start_frame=config.start_frame_idx,
                output_format=output_format,
                jpeg_quality=config.jpeg_quality,
            )
        )
        if config.HasField("lookahead_rows") and not (
            0 <= config.lookahead_rows <= MAX_LOOKAHEAD_ROWS
        ):
            raise InvalidArgument(
                f"lookahead_rows {config.lookahead_rows} is out of range: use "
                f"0-{MAX_LOOKAHEAD_ROWS} (unset means {MAX_LOOKAHEAD_ROWS}, the exact context)"
            )
        return output_format, config.jpeg_quality or self.core.default_jpeg_quality

    def _serve(
        self,
        config: compositing_pb2.StreamConfig,
        reader: MessageReader[compositing_pb2.StreamRenderRequest],
        session_id: str,
        idle_s: float,
        context: grpc.ServicerContext,
    ) -> Iterator[compositing_pb2.StreamRenderResponse]:
        avatar_id_var.set(config.model_id)
        output_format, quality = self._validate(config)
        start = inference_pb2.StreamStart(
            model_id=config.model_id,
            sample_rate=config.sample_rate,
            audio_encoding=config.audio_encoding,
            audio_channels=config.audio_channels,
            start_frame_idx=config.start_frame_idx,
            paced=config.paced,
        )
        if config.HasField("lookahead_rows"):
            start.lookahead_rows = config.lookahead_rows

        if not hasattr(self.core.backend, "stream_mouths"):
            raise FailedPrecondition(
                f"this deployment's inference backend ({type(self.core.backend).__name__}) "
                "cannot stream; use RenderUtterance, or the split deployment for StreamRender"
            )
        with self.core.avatars.acquire(config.model_id) as (avatar, load_ms):
            relay = _Relay(reader, start, session_id=session_id, idle_timeout_s=idle_s)
            stream = self.core.backend.stream_mouths(relay.requests(), session_id=session_id)
            relay.attach(stream)
            if not context.add_callback(stream.cancel):
                stream.cancel()
                return
            logger.info(
                "stream %s opened: avatar %s, %s, %s",
                session_id,
                config.model_id,
                output_format,
                "paced" if config.paced else "unpaced",
            )
            frames = 0
            try:
                for response in self._composite(stream, avatar, session_id, output_format, quality):
                    frames += len(response.frames)
                    yield response
            except LipsyncError:
                if relay.error is not None:
                    raise relay.error from None
                if not context.is_active():
                    logger.info("stream %s: the client cancelled or disconnected", session_id)
                    return
                raise
            finally:
                stream.cancel()
                logger.info("stream %s closed after %d frames", session_id, frames)
            if relay.error is not None:
                raise relay.error

    def _composite(
        self,
        stream: MouthStream,
        avatar: CompositingAvatar,
        session_id: str,
        output_format: str,
        quality: int,
    ) -> Iterator[compositing_pb2.StreamRenderResponse]:
        for mouths in stream:
            started = time.perf_counter()
            images = self.core.compositor.render(
                avatar,
                mouths.background_indices,
                mouths.crops,
                output_format=output_format,
                jpeg_quality=quality,
            )
            composite_ms = (time.perf_counter() - started) * 1000
            fills = (
                mouths.silence_fill if mouths.silence_fill is not None else [False] * len(images)
            )
            frames = [
                compositing_pb2.Frame(
                    index=int(index),
                    pts_ms=int(index) * FRAME_MS,
                    background_index=int(background),
                    image=image,
                    silence_fill=bool(fill),
                )
                for index, background, image, fill in zip(
                    mouths.frame_indices, mouths.background_indices, images, fills, strict=True
                )
            ]
            yield compositing_pb2.StreamRenderResponse(
                frames=frames,
                session_id=session_id,
                width=avatar.spec.width,
                height=avatar.spec.height,
                timings=compositing_pb2.StageTimings(
                    audio_ms=mouths.audio_ms,
                    inference_ms=mouths.inference_ms,
                    composite_ms=composite_ms,
                ),
            )
