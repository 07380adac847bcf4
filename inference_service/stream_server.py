"""gRPC handler of StreamMouths: one long-lived call per streaming session."""

from __future__ import annotations


class StreamMouthsHandler:
    """Mixin of InferenceServicer that serves StreamMouths."""
