"""Concurrency limit on the calls a service runs at once, enforced by a server interceptor.

`RequestLimitInterceptor` counts the calls in progress and rejects a call over
`limits.max_concurrent_requests` at once with RESOURCE_EXHAUSTED, without queueing it. Health
checks are never counted, and neither are bidirectional streams (StreamRender, StreamMouths),
whose number the stream handlers limit with `streams.max_streams` and `streams.max_sessions`.

The check runs in a server worker thread, so `server.max_workers` must be larger than the limit:
otherwise calls over the thread count wait in gRPC's queue and are never rejected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from lipsync.errors import ResourceExhausted
from lipsync.grpc_status import HEALTH_METHOD_PREFIX
from lipsync.interceptors import rewrap_handler


class ConcurrencyLimiter:
    """A counter of calls in progress that rejects the call over `limit`; thread-safe.

    Parameters
    ----------
    limit : int
        Calls allowed at once; 0 means no limit.
    setting : str
        Config key of the limit, named in the error message.
    """

    def __init__(self, limit: int, setting: str) -> None:
        if limit < 0:
            raise ValueError(f"{setting} must be 0 or more, got {limit}")
        self.limit = limit
        self.setting = setting
        self._in_progress = 0
        self._lock = threading.Lock()

    @property
    def in_progress(self) -> int:
        with self._lock:
            return self._in_progress

    def acquire(self, method: str) -> None:
        """Count one more call, or raise ResourceExhausted when `limit` calls are in progress."""
        with self._lock:
            if self.limit and self._in_progress >= self.limit:
                raise ResourceExhausted(
                    f"{method} rejected: requests in progress {self._in_progress}, the maximum "
                    f"set by {self.setting} ({self.limit}). Retry later."
                )
            self._in_progress += 1

    def release(self) -> None:
        with self._lock:
            self._in_progress -= 1


class RequestLimitInterceptor(grpc.ServerInterceptor):
    """Apply a ConcurrencyLimiter to every call except health checks and bidirectional streams.

    Put it after `StatusInterceptor` in the server's interceptor list, so that the
    ResourceExhausted it raises is logged with the request id and becomes the call's status.
    """

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self.limiter = limiter

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        full_method = handler_call_details.method
        if handler is None or not self.limiter.limit:
            return handler
        if full_method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        if handler.request_streaming and handler.response_streaming:
            return handler

        method = full_method.rsplit("/", 1)[-1]
        return rewrap_handler(
            handler,
            lambda behavior: self._wrap_unary(behavior, method),
            lambda behavior: self._wrap_stream(behavior, method),
        )

    def _wrap_unary(self, behavior: Callable, method: str) -> Callable:
        limiter = self.limiter

        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            limiter.acquire(method)
            try:
                return behavior(request, context)
            finally:
                limiter.release()

        return wrapper

    def _wrap_stream(self, behavior: Callable, method: str) -> Callable:
        limiter = self.limiter

        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            limiter.acquire(method)
            try:
                yield from behavior(request, context)
            finally:
                limiter.release()

        return wrapper
