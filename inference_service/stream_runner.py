"""One StreamMouths stream from its first message to its end, free of gRPC.

`StreamRunner` reads the stream's messages (start, then audio chunks and interrupts until the
client half-closes), drives a `StreamSession` and yields its batches of crops. It enforces the
message order, `streams.max_sessions` and `streams.idle_timeout_s`, and paces live streams.
The gRPC handler wraps it; an in-process deployment can call it with its own message iterator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from inference_service.audio import AudioEncoding
from inference_service.config import StreamsConfig
from inference_service.core import InferenceCore
from inference_service.streaming import MAX_LOOKAHEAD_ROWS, StreamBatch, StreamSession
from lipsync.errors import DeadlineExceeded, InvalidArgument
from lipsync.logs import avatar_id_var
from lipsync.protos import inference_pb2
from lipsync.streams import MessageReader, Signal, StreamTracker

logger = logging.getLogger(__name__)

INBOX_MESSAGES = 4
"""Messages read ahead of the session at most; more wait in gRPC's flow control window."""


def encoding_from_proto(value: int) -> AudioEncoding:
    """Map the protobuf AudioEncoding to the domain's (unset means PCM_F32LE)."""
    if value == inference_pb2.AUDIO_ENCODING_UNSPECIFIED:
        return AudioEncoding.PCM_F32LE
    try:
        return AudioEncoding(value)
    except ValueError:
        raise InvalidArgument(
            f"audio_encoding {value} is unknown: use PCM_S16LE (1) or PCM_F32LE (2)"
        ) from None


class StreamRunner:
    """Serve one stream: messages in, batches of mouth crops out (see the module docstring).

    Parameters
    ----------
    core : InferenceCore
    messages : iterator of inference_pb2.StreamMouthsRequest
        Read on a separate thread, at most `INBOX_MESSAGES` ahead.
    session_id : str
        The stream's id in logs and responses.
    tracker : StreamTracker
        Open streams of the service; the stream counts from `run` until it ends.
    limits : StreamsConfig
        `max_sessions` and `idle_timeout_s`.
    clock : callable returning seconds
        Monotonic clock of the idle timeout and the paced schedule.
    """

    def __init__(
        self,
        core: InferenceCore,
        messages: Iterator[inference_pb2.StreamMouthsRequest],
        *,
        session_id: str,
        tracker: StreamTracker,
        limits: StreamsConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.session_id = session_id
        self.tracker = tracker
        self.limits = limits
        self.clock = clock
        self.reader: MessageReader[inference_pb2.StreamMouthsRequest] = MessageReader(
            messages, capacity=INBOX_MESSAGES, name=f"stream-{session_id}", clock=clock
        )
        self._ended = False

    def cancel(self) -> None:
        """Stop the stream (the client cancelled or disconnected); safe from any thread."""
        self.reader.cancel()

    def run(self) -> Iterator[StreamBatch]:
        """Serve the stream and yield its batches in frame order.

        Raises
        ------
        LipsyncError
            InvalidArgument for a message out of order or a bad start message, NotFound for an
            unknown avatar, ResourceExhausted at the stream limit, DeadlineExceeded when idle.
        """
        self.tracker.open(self.session_id, self.limits.max_sessions, "streams.max_sessions")
        try:
            self.reader.start()
            start = self._first_message()
            if start is not None:
                yield from self._serve(start)
        finally:
            self.reader.cancel()
            self.tracker.close(self.session_id)

    def _next(self, due_at: float | None) -> inference_pb2.StreamMouthsRequest | Signal:
        # The next message or Signal; TIMEOUT only when due_at has passed.
        idle_s = self.limits.idle_timeout_s
        while True:
            idle_at = None if self._ended else self.reader.last_arrival + idle_s
            wake_times = [t for t in (idle_at, due_at) if t is not None]
            item = self.reader.get(min(wake_times) - self.clock() if wake_times else None)
            if item is Signal.END:
                self._ended = True
            if item is not Signal.TIMEOUT:
                return item

            now = self.clock()
            if idle_at is not None and now - self.reader.last_arrival >= idle_s:
                raise DeadlineExceeded(
                    f"stream {self.session_id} received no message for {idle_s:g} s, the limit "
                    "of streams.idle_timeout_s. Send audio (an empty audio chunk keeps a paced "
                    "stream open) or half-close the stream to end the utterance."
                )
            if due_at is not None and now >= due_at:
                return Signal.TIMEOUT

    def _first_message(self) -> inference_pb2.StreamStart | None:
        item = self._next(None)
        if item is Signal.CANCELLED:
            return None
        if item is Signal.END:
            raise InvalidArgument("the stream ended before its start message: send start first")
        kind = item.WhichOneof("message")
        if kind != "start":
            raise InvalidArgument(
                f"the first message of a stream must be start, got {kind or 'an empty message'}"
            )
        return item.start

    def _session(self, start: inference_pb2.StreamStart, avatar, load_ms: float) -> StreamSession:
        lookahead = start.lookahead_rows if start.HasField("lookahead_rows") else MAX_LOOKAHEAD_ROWS
        return StreamSession(
            self.core,
            avatar,
            encoding=encoding_from_proto(start.audio_encoding),
            sample_rate=start.sample_rate or 16000,
            channels=start.audio_channels or 1,
            start_frame=start.start_frame_idx,
            lookahead_rows=lookahead,
            paced=start.paced,
            load_ms=load_ms,
            clock=self.clock,
        )

    def _serve(self, start: inference_pb2.StreamStart) -> Iterator[StreamBatch]:
        avatar_id_var.set(start.model_id)
        with self.core.avatars.acquire(start.model_id) as (avatar, load_ms):
            session = self._session(start, avatar, load_ms)
            logger.info(
                "stream %s opened: avatar %s, %d Hz, %d channel(s), %s, look-ahead %d rows, %s",
                self.session_id,
                start.model_id,
                session.decoder.sample_rate,
                session.decoder.channels,
                session.decoder.encoding.name,
                session.lookahead_rows,
                "paced" if session.paced else "unpaced",
            )
            outcome = "failed"
            try:
                yield from self._loop(session)
                outcome = "ended" if session.done else "cancelled"
            finally:
                logger.info(
                    "stream %s %s: %d frames (%d silence-filled), %.2f s of audio, %d interrupt(s)",
                    self.session_id,
                    outcome,
                    session.next_frame,
                    session.frames_filled,
                    session.samples_received / 16000,
                    session.interrupts,
                )

    def _loop(self, session: StreamSession) -> Iterator[StreamBatch]:
        while not session.done:
            item = self._next(session.next_deadline())
            if item is Signal.CANCELLED:
                return
            if item is Signal.END:
                yield from session.finish()
            elif item is not Signal.TIMEOUT:
                yield from self._handle(session, item)

            if session.paced:
                yield from session.emit_due(self.clock())
                session.render_ahead()

    def _handle(
        self, session: StreamSession, message: inference_pb2.StreamMouthsRequest
    ) -> list[StreamBatch]:
        kind = message.WhichOneof("message")
        if kind == "audio":
            return session.push_audio(message.audio.data)
        if kind == "interrupt":
            logger.info("stream %s interrupted at frame %d", self.session_id, session.next_frame)
            return session.interrupt()
        if kind == "start":
            raise InvalidArgument("start was sent twice: a stream takes one start message, first")
        raise InvalidArgument("a stream message has none of start, audio or interrupt set")
