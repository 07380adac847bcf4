"""Plumbing shared by both tiers' streaming handlers: the count of open streams and a reader.

A streaming handler must wait for the client's next message with a timeout (an idle stream is
closed) while it also keeps its own deadlines, and a blocking request iterator cannot do both.
`MessageReader` reads the iterator on a thread into a bounded queue. When the handler falls
behind, the queue fills, the reader stops reading, and gRPC flow control holds the client back.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lipsync.errors import ResourceExhausted

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How often a reader blocked on a full queue checks whether the stream was cancelled.
_PUT_POLL_S = 0.1


class StreamTracker:
    """The open streams of a service, with a limit; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[str] = set()

    def open(self, session_id: str, limit: int, setting: str) -> None:
        """Register a stream, or raise ResourceExhausted if `limit` streams are open."""
        with self._lock:
            if len(self._open) >= limit:
                raise ResourceExhausted(
                    f"{len(self._open)} streams are open, the limit of {setting} ({limit}). "
                    "Retry when a stream has ended."
                )
            self._open.add(session_id)

    def close(self, session_id: str) -> None:
        """Unregister a stream; closing an unknown id does nothing."""
        with self._lock:
            self._open.discard(session_id)

    def count(self) -> int:
        """Return the number of open streams."""
        with self._lock:
            return len(self._open)

    def __contains__(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._open


class Signal(enum.Enum):
    """The value `MessageReader.get` returns in place of a message."""

    END = "end"  # the client half-closed the stream
    TIMEOUT = "timeout"  # no message within the timeout
    CANCELLED = "cancelled"  # the call was cancelled, or reading it failed


class MessageReader(Generic[T]):
    """Read a request iterator on a thread into a queue of at most `capacity` messages.

    Parameters
    ----------
    messages : iterator
        The request iterator of a streaming call.
    capacity : int >= 1
        Messages read ahead of the handler at most. With the one the reader holds while the
        queue is full, ``capacity + 1`` messages are buffered; the rest wait in gRPC's flow
        control window.
    name : str
        Thread name, for debugging.
    clock : callable returning seconds
        Clock of `last_arrival`.
    """

    def __init__(
        self,
        messages: Iterator[T],
        *,
        capacity: int,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._messages = messages
        self._queue: queue.Queue[T | Signal] = queue.Queue(maxsize=capacity)
        self._cancelled = threading.Event()
        self._clock = clock
        self.last_arrival = clock()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)

    def start(self) -> MessageReader[T]:
        self._thread.start()
        return self

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop reading and make `get` return CANCELLED; safe from any thread."""
        self._cancelled.set()
        try:
            self._queue.put_nowait(Signal.CANCELLED)
        except queue.Full:
            pass  # get() checks the flag before it looks at the queue

    def get(self, timeout: float | None) -> T | Signal:
        """Return the next message, or END, TIMEOUT or CANCELLED."""
        if self._cancelled.is_set():
            return Signal.CANCELLED
        try:
            item = self._queue.get(timeout=None if timeout is None else max(timeout, 0.0))
        except queue.Empty:
            return Signal.TIMEOUT
        if self._cancelled.is_set():
            return Signal.CANCELLED
        return item

    def _put(self, item: T | Signal) -> bool:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            for message in self._messages:
                self.last_arrival = self._clock()
                if not self._put(message):
                    return
            self._put(Signal.END)
        except Exception as exc:  # grpc.RpcError when the call ends, or the caller's iterator
            logger.debug("reading the stream's messages stopped: %r", exc)
            self._cancelled.set()
            try:
                self._queue.put_nowait(Signal.CANCELLED)
            except queue.Full:
                pass
