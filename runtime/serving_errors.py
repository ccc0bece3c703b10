"""Errors the serving front end answers with, each with its REST status and gRPC code name.

The front end never answers a generic 500 for something the user or the load caused: every
failure is one of these, and the REST and gRPC servers map them the same way.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request the front end cannot serve; the message is what the client sees."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"  # a grpc.StatusCode member name
    failure_reason = "OTHER"  # the Triton nv_inference_request_failure reason label
    outcome = "invalid"  # statmux_requests_total{outcome}: invalid, rejected, unavailable, ...


class InvalidRequest(ServingError):
    """Malformed body, wrong shape or datatype, missing or unknown tensor."""


class ModelNotFound(ServingError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class PayloadTooLarge(ServingError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class RequestTimeout(ServingError):
    """The client took longer than the server allows to send its request."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class Rejected(ServingError):
    """Admission control or the dispatcher predicts that the request would miss its SLO."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    failure_reason = "REJECTED"
    outcome = "rejected"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        # When a retry could be admitted: the predicted backlog beyond the deadline.
        self.retry_after_s = retry_after_s


class Unavailable(ServingError):
    """The group is unhealthy, shutting down, or the model is not loaded."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    failure_reason = "BACKEND"
    outcome = "unavailable"


class Draining(Unavailable):
    """The server is shutting down: it finishes what it accepted and takes nothing new."""


class EngineFailed(ServingError):
    """The engine raised while running the batch (the group itself is still healthy)."""

    http_status = 500
    grpc_code = "INTERNAL"
    failure_reason = "BACKEND"
    outcome = "internal"


class Cancelled(ServingError):
    """The client went away (REST disconnect) or its gRPC deadline passed."""

    http_status = 499
    grpc_code = "CANCELLED"
    failure_reason = "CANCELED"
    outcome = "cancelled"


OUTCOMES = ("success", "rejected", "cancelled", "invalid", "unavailable", "internal")


def admission_limit_text(slo: float | None, bound: float | None) -> str:
    """What SLO admission compares a request with: the SLO, or the Plan's admissionSeconds
    below it (a re-plan keeps a previous plan's bound after the SLO was loosened)."""
    slo_ms = 1000 * (slo or 0.0)
    if bound is not None and slo is not None and bound < slo:
        return (
            f"admission bound {bound * 1000:.1f} ms (the Plan's admissionSeconds, below the "
            f"SLO {slo_ms:.1f} ms)"
        )
    return f"SLO {slo_ms:.1f} ms"
