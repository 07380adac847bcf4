"""gRPC handler of StreamRender: audio chunks in, frames out."""

from __future__ import annotations


class StreamRenderHandler:
    """Mixin of CompositingServicer that serves StreamRender."""
