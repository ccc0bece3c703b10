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


class InvalidRequest(ServingError):
    """Malformed body, wrong shape or datatype, missing or unknown tensor."""


class ModelNotFound(ServingError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class PayloadTooLarge(ServingError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Rejected(ServingError):
    """Admission control or the dispatcher predicts that the request would miss its SLO."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    failure_reason = "REJECTED"


class Unavailable(ServingError):
    """The group is unhealthy, shutting down, or the model is not loaded."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    failure_reason = "BACKEND"


class EngineFailed(ServingError):
    """The engine raised while running the batch (the group itself is still healthy)."""

    http_status = 500
    grpc_code = "INTERNAL"
    failure_reason = "BACKEND"
