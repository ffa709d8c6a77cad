"""ONE table from the protssl error hierarchy to gRPC status codes, and the abort that uses it.

User errors keep their one-line message (it names the record and position). Anything unexpected is
logged with its traceback and returned as INTERNAL with a generic message and an incident id.
"""

from __future__ import annotations

import logging
import uuid
from typing import NoReturn

import grpc

from protssl.errors import (
    CheckpointError,
    DeadlineExceededError,
    FastaFormatError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    ProtsslError,
    ServiceError,
    StoreError,
    UnavailableError,
)

__all__ = ["STATUS_TABLE", "abort_with", "status_for"]

log = logging.getLogger(__name__)

STATUS_TABLE: tuple[tuple[type[ProtsslError], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
    (CheckpointError, grpc.StatusCode.FAILED_PRECONDITION),
    (ServiceError, grpc.StatusCode.INTERNAL),
)
"""First match wins (subclasses before their parents); anything else is INTERNAL."""


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status a protssl error maps to; None for an unexpected exception."""
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            return code
    return None


def abort_with(context: grpc.ServicerContext, exc: BaseException, method: str) -> NoReturn:
    """End the call with the status for `exc`; unexpected errors are logged with their traceback."""
    code = status_for(exc)
    if code is None:
        incident = uuid.uuid4().hex[:12]
        log.error("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")
        raise AssertionError("context.abort returned")
    if isinstance(exc, FastaFormatError):
        context.set_trailing_metadata(
            tuple(
                (f"protssl-{key}", str(value))
                for key, value in (
                    ("record-id", exc.record_id),
                    ("record-index", exc.record_index),
                    ("position", exc.position),
                )
                if value is not None
            )
        )
    context.abort(code, str(exc))
    raise AssertionError("context.abort returned")  # it raises; this keeps NoReturn honest
