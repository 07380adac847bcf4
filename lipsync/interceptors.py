"""Rebuilding gRPC method handlers around wrapped behaviours, for the server interceptors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Wrapper = Callable[[Callable], Callable]


def rewrap_handler(handler: Any, wrap_unary: Wrapper, wrap_stream: Wrapper) -> Any:
    """Return a copy of an RPC method handler with its behaviour wrapped.

    wrap_unary wraps the behaviours that return one response (unary-unary, stream-unary) and
    wrap_stream those that yield responses (unary-stream, stream-stream).
    """
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **options)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **options)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **options)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **options)
