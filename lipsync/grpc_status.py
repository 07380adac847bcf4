"""The one place where exceptions become gRPC status codes, for both services.

`StatusInterceptor` wraps every handler except the health service's. A `LipsyncError` becomes
its status code with its message. Any other exception is logged with its traceback and becomes
INTERNAL with a message that leaks no internals. It also binds the request id (metadata
`x-request-id`, or a new one) to the log context for the duration of the call.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from lipsync.errors import LipsyncError
from lipsync.interceptors import rewrap_handler
from lipsync.logs import avatar_id_var, request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"

# Health calls pass through unwrapped: wrapping turns the non-blocking Watch into a generator
# that holds a worker thread for as long as the client watches.
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


def request_id_of(context: grpc.ServicerContext) -> str:
    """Return the caller's request id from metadata, or a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:64]
    return uuid.uuid4().hex[:16]


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, LipsyncError):
        logger.warning("%s failed: %s: %s", method, exc.code.name, exc)
        context.abort(exc.code, str(exc))
    logger.exception("%s failed with an unexpected error", method)
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method}; the server log has the details (request id "
        f"{request_id_var.get()})",
    )


def _reset(var: contextvars.ContextVar[str], token: contextvars.Token[str]) -> None:
    # A cancelled stream's generator is closed from another thread, where the token is foreign.
    try:
        var.reset(token)
    except ValueError:
        var.set("-")


class StatusInterceptor(grpc.ServerInterceptor):
    """Map exceptions raised by handlers to status codes and bind the request id."""

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]

        return rewrap_handler(
            handler,
            lambda behavior: self._wrap_unary(behavior, method),
            lambda behavior: self._wrap_stream(behavior, method),
        )

    @staticmethod
    def _wrap_unary(behavior: Callable, method: str) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            request_token = request_id_var.set(request_id_of(context))
            avatar_token = avatar_id_var.set("-")
            try:
                return behavior(request, context)
            except Exception as exc:
                if context.code() is not None:  # the handler aborted on its own
                    raise
                _abort(context, exc, method)
            finally:
                _reset(avatar_id_var, avatar_token)
                _reset(request_id_var, request_token)

        return wrapper

    @staticmethod
    def _wrap_stream(behavior: Callable, method: str) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request_token = request_id_var.set(request_id_of(context))
            avatar_token = avatar_id_var.set("-")
            try:
                yield from behavior(request, context)
            except Exception as exc:
                if context.code() is not None:
                    raise
                _abort(context, exc, method)
            finally:
                _reset(avatar_id_var, avatar_token)
                _reset(request_id_var, request_token)

        return wrapper
