"""Run an iterator ahead of its consumer in a thread, so producing and consuming overlap."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(source: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of source, computed up to `depth` items ahead in a background thread.

    Exceptions from source are re-raised in the consumer. When the consumer stops early, the
    producer stops after the item it is producing and closes source (which cancels a gRPC call
    behind it); at most depth + 1 produced items are never consumed.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put item on the queue unless the consumer has gone; return whether it was put."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not offer(item):
                    break
            else:
                offer(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it
            offer(_Failure(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(produce,), name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue.
        while not items.empty():
            try:
                items.get_nowait()
            except queue.Empty:
                break
