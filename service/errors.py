"""Ending a call with the status `protssl.errors.ERROR_TABLE` gives its error, and the error's name.

User errors keep their one-line message (it names the record and position) and send their class
name in the trailers (`protssl.wire.ERROR_KIND_KEY`), so the SDK raises the class raised here.
Anything unexpected is logged with its traceback and returned as INTERNAL with a generic message
and an incident id.
"""

from __future__ import annotations

import logging
import string
import uuid
from typing import NoReturn
from urllib.parse import quote

import grpc

from protssl.errors import FastaFormatError, status_name_for
from protssl.wire import ERROR_KIND_KEY

__all__ = ["abort_with"]

log = logging.getLogger(__name__)

_SAFE = "".join(c for c in string.printable if c not in "%\t\n\r\x0b\x0c")
"""Characters a metadata value may hold as they are (printable ASCII); the rest is %-encoded."""


def _header_value(value: object) -> str:
    """`value` as a legal metadata value: an id with a NUL or non-ASCII letters is %-encoded (RFC
    3986, UTF-8), where sending it raw fails the whole call ("Invalid metadata", INTERNAL)."""
    return quote(str(value), safe=_SAFE)


def abort_with(context: grpc.ServicerContext, exc: BaseException, method: str) -> NoReturn:
    """End the call with the status for `exc`; unexpected errors are logged with their traceback."""
    name = status_name_for(exc)
    if name is None:
        incident = uuid.uuid4().hex[:12]
        log.error("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")
        raise AssertionError("context.abort returned")
    trailers = [(ERROR_KIND_KEY, type(exc).__name__)]
    if isinstance(exc, FastaFormatError):
        trailers += [
            (f"protssl-{key}", _header_value(value))
            for key, value in (
                ("record-id", exc.record_id),
                ("record-index", exc.record_index),
                ("position", exc.position),
            )
            if value is not None
        ]
    context.set_trailing_metadata(tuple(trailers))
    context.abort(grpc.StatusCode[name], str(exc))
    raise AssertionError("context.abort returned")  # it raises; this keeps NoReturn honest
