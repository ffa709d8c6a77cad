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


MAX_DETAILS_BYTES = 4096
"""Most bytes a status message may take on the wire (gRPC %-encodes what is not printable ASCII,
3 bytes a byte): a client drops trailers past 8-16 KiB ("received metadata size exceeds hard
limit", RESOURCE_EXHAUSTED), so an echoed 100 kB model name or a few long non-ASCII ids must not
turn an INVALID_ARGUMENT into what reads as an overload."""

MAX_RECORD_ID_BYTES = 1024
"""Most %-encoded bytes of the record-id trailer; a longer id is left out (the message names it)."""


def _wire_size(text: str) -> int:
    """Bytes `text` takes as a %-encoded metadata value (printable ASCII but % as is, else %XX)."""
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode())


def _bounded(text: str, limit: int = MAX_DETAILS_BYTES) -> str:
    """`text` cut to at most `limit` wire bytes, saying how many characters were cut."""
    if _wire_size(text) <= limit:
        return text
    room, size = limit - 64, 0  # 64: the note's room
    for end, char in enumerate(text):
        size += _wire_size(char)
        if size > room:
            return f"{text[:end]} … (message cut: {len(text) - end} characters more)"
    return text


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
        trailers = [(k, v) for k, v in trailers if len(v) <= MAX_RECORD_ID_BYTES]
    context.set_trailing_metadata(tuple(trailers))
    context.abort(grpc.StatusCode[name], _bounded(str(exc)))
    raise AssertionError("context.abort returned")  # it raises; this keeps NoReturn honest
