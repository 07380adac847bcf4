"""Exception hierarchy shared by both tiers.

Each exception carries the gRPC status code it maps to; `lipsync.grpc_status` turns them
into statuses in one place. Messages name the field, the value and the allowed range.
"""

from __future__ import annotations

import grpc


class LipsyncError(Exception):
    """Base class of every error the services report to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(LipsyncError):
    """A request field has a value that can never be served."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LipsyncError):
    """The request names an avatar or model that does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(LipsyncError):
    """The request would exceed a configured capacity limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(LipsyncError):
    """A dependency (the inference tier, a model) cannot serve right now; retrying may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(LipsyncError):
    """The work did not finish within the request's deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(LipsyncError):
    """The system is not in a state to run the request (for example a broken avatar package)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
