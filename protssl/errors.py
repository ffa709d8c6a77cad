"""One error hierarchy for protssl; faces map it to exit codes and gRPC statuses.

ProtsslError
├── InvalidInputError            bad user input (CLI exit 2, gRPC INVALID_ARGUMENT)
│   ├── FastaFormatError         a record that breaks the FASTA policy (names file, id, position)
│   └── SequenceTooLongError     a sequence past a limit under the `refuse` window policy
├── NotFoundError                something named does not exist (gRPC NOT_FOUND)
│   ├── ModelNotFoundError
│   └── ClassifierNotFoundError
├── AlreadyExistsError           a create named something that exists (gRPC ALREADY_EXISTS)
├── CheckpointError              a model file that is corrupt, mismatched or unsupported, or
│                                not the model a classifier was fitted on (FAILED_PRECONDITION)
│   └── UntrustedCheckpointError a pickle checkpoint loaded without trust
├── OverloadedError              bounded capacity is full (gRPC RESOURCE_EXHAUSTED)
├── MessageTooLargeError         a message past gRPC's size limit (RESOURCE_EXHAUSTED; not retried)
├── AuthenticationError          no API token, or one that is unknown or revoked (UNAUTHENTICATED)
├── PermissionDeniedError        a valid token whose role may not do this (PERMISSION_DENIED)
├── StoreError                   the SQL store failed or holds inconsistent data
├── OutputError                  writing a file failed: a full disk, a quota, an I/O error
└── ServiceError                 a gRPC call failed for a reason other than the caller's input
    ├── UnavailableError         a server (protssl's, a Ray cluster) could not be reached (UNAVAILABLE)
    └── DeadlineExceededError    the call's deadline passed before its work was done
        └── StreamIdleError      a stream sent nothing for its idle timeout (DEADLINE_EXCEEDED)

`ERROR_TABLE` is the one place each error meets its gRPC status (by name: the core imports no grpc)
and its CLI exit code. The server reads it one way (`status_name_for`), the SDK the other
(`error_for_status`), the CLI's `main()` for exit codes (`exit_code_for`). The server also sends the
error's class name, so the SDK raises the same class the server raised, not just its status's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ERROR_TABLE",
    "EXIT_INTERRUPTED",
    "EXIT_UNEXPECTED",
    "EXIT_USER_ERROR",
    "RESUME_ADVICE",
    "WINDOW_ADVICE",
    "AlreadyExistsError",
    "AuthenticationError",
    "CheckpointError",
    "ClassifierNotFoundError",
    "DeadlineExceededError",
    "ErrorRow",
    "FastaFormatError",
    "InvalidInputError",
    "MessageTooLargeError",
    "ModelNotFoundError",
    "NotFoundError",
    "OutputError",
    "OverloadedError",
    "PermissionDeniedError",
    "ProtsslError",
    "SequenceTooLongError",
    "ServiceError",
    "StoreError",
    "StreamIdleError",
    "UnavailableError",
    "UntrustedCheckpointError",
    "error_for_status",
    "exit_code_for",
    "fasta_location",
    "first_line",
    "refuse_non_finite",
    "status_name_for",
]

EXIT_USER_ERROR = 2
"""Exit code of a protssl error in the CLI: one line on stderr, no traceback."""
EXIT_UNEXPECTED = 1
"""Exit code of anything unexpected (Python prints the traceback)."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C; what was computed is kept."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first non-blank line, or its type name when it has none:
    what a one-line error or log line quotes of a library's (often multi-line) exception."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


RESUME_ADVICE = "embed_file(..., resume=True) sends the rest"
"""How the SDK's `embed_file` says to go on after a failed call (the CLI words it as --resume)."""


WINDOW_ADVICE = "window=WindowPolicy(mode='window') embeds it in overlapping windows"
"""What the `refuse` window policy's error advises in the SDK (the CLI words it as --window-policy)."""


class ProtsslError(Exception):
    """Root of every error protssl raises on purpose."""


class InvalidInputError(ProtsslError):
    """The caller's input breaks a documented rule; the message says which and where."""


def refuse_non_finite(config: object) -> None:
    """InvalidInputError naming a config's (a dataclass's, or a mapping's) first float that is NaN
    or infinite: NaN passes every `< 0` and `<= 0` check a config makes of its numbers."""
    values = config if isinstance(config, Mapping) else vars(config)
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"{name} must be a finite number, got {value}")


def fasta_location(
    source: str,
    *,
    record_id: str | None = None,
    record_index: int | None = None,
    position: int | None = None,
) -> str:
    """Where in a FASTA input, as every error about one of its records says it:
    `FILE: record 'ID' (#N) at position P` (N and P 1-based), each part only when known."""
    where = source
    if record_id is not None:
        where += f": record {record_id!r}"
    if record_index is not None:
        where += f" (#{record_index + 1})"
    if position is not None:
        where += f" at position {position}"
    return where


class FastaFormatError(InvalidInputError):
    """A FASTA record breaks the input policy; carries the file, record id and 1-based position."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        record_id: str | None = None,
        position: int | None = None,
        record_index: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = fasta_location(
            source, record_id=record_id, record_index=record_index, position=position
        )
        super().__init__(f"{where}: {message}" + (f"; {hint}" if hint else ""))
        self.source = source
        self.record_id = record_id
        self.position = position
        self.record_index = record_index
        self.where = where
        self.message = message
        """What is wrong, without where: the same for records with the same problem."""
        self.hint = hint
        """What to do about it (the policy that would let it pass), or None."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its fields (a Ray actor's error crosses processes so): the default passes
        only the message back to `__init__`, which needs `source` too."""
        fields = {
            "source": self.source,
            "record_id": self.record_id,
            "position": self.position,
            "record_index": self.record_index,
            "hint": self.hint,
        }
        return (_rebuild, (type(self), self.message, fields))


def _rebuild(
    kind: type[FastaFormatError], message: str, fields: dict[str, Any]
) -> FastaFormatError:
    return kind(message, **fields)


class SequenceTooLongError(InvalidInputError):
    """A sequence is longer than a limit and the policy says refuse rather than window."""


class MessageTooLargeError(ProtsslError):
    """A request or response past the gRPC message size limit: smaller requests, not a retry."""


class AlreadyExistsError(ProtsslError):
    """A create named something that exists already."""


class NotFoundError(ProtsslError):
    """A named model, classifier or record does not exist."""


class ModelNotFoundError(NotFoundError):
    """No model at the given path or under the given name."""


class ClassifierNotFoundError(NotFoundError):
    """No stored classifier with the given name (or version)."""


class CheckpointError(ProtsslError):
    """A model file is corrupt, does not match its card, or has an unsupported layout; or a model
    is not the one a classifier was fitted on."""


class UntrustedCheckpointError(CheckpointError):
    """A pickle checkpoint was offered without --trust-pickle and its sha256 is not allow-listed."""


class OverloadedError(ProtsslError):
    """A bounded queue or limit is full; retry later."""


class AuthenticationError(ProtsslError):
    """No API token came with the call, or it is malformed, unknown or revoked."""


class PermissionDeniedError(ProtsslError):
    """The API token is valid but its role does not allow the call."""


class StoreError(ProtsslError):
    """The SQL store failed or returned inconsistent data."""


class OutputError(ProtsslError):
    """Writing a file (vectors, a checkpoint, a model) failed for a reason of the machine's: a full
    disk, a quota, an I/O error. What was made durable before is kept; the message says where."""


class ServiceError(ProtsslError):
    """A remote call failed for a reason other than the caller's input; `code` names the gRPC status."""

    def __init__(self, message: str, *, code: str = "INTERNAL") -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its status: the default passes the message alone back to `__init__`, and a
        plain ServiceError came back INTERNAL whatever it was."""
        return (_rebuild_service_error, (type(self), str(self), self.code))


class UnavailableError(ServiceError):
    """A server could not be reached: protssl's (still UNAVAILABLE after the client's retries), or
    the Ray cluster `--engine ray` was pointed at (or the local Ray it starts)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="UNAVAILABLE")


class DeadlineExceededError(ServiceError):
    """The call's deadline passed before its work was done; the server drops the unfinished work."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="DEADLINE_EXCEEDED")


class StreamIdleError(DeadlineExceededError):
    """A stream sent no message for the server's idle timeout with nothing in flight; it was ended."""


@dataclass(frozen=True)
class ErrorRow:
    """One error kind and what it becomes on the wire and at the shell."""

    error: type[ProtsslError]
    """The class; its subclasses share the row unless they have one of their own above it."""
    status: str
    """gRPC status name (grpc.StatusCode member name)."""
    exit_code: int
    """CLI exit code."""


ERROR_TABLE: tuple[ErrorRow, ...] = (
    ErrorRow(InvalidInputError, "INVALID_ARGUMENT", EXIT_USER_ERROR),
    ErrorRow(NotFoundError, "NOT_FOUND", EXIT_USER_ERROR),
    ErrorRow(AlreadyExistsError, "ALREADY_EXISTS", EXIT_USER_ERROR),
    ErrorRow(OverloadedError, "RESOURCE_EXHAUSTED", EXIT_USER_ERROR),
    ErrorRow(MessageTooLargeError, "RESOURCE_EXHAUSTED", EXIT_USER_ERROR),
    ErrorRow(AuthenticationError, "UNAUTHENTICATED", EXIT_USER_ERROR),
    ErrorRow(PermissionDeniedError, "PERMISSION_DENIED", EXIT_USER_ERROR),
    ErrorRow(DeadlineExceededError, "DEADLINE_EXCEEDED", EXIT_USER_ERROR),
    ErrorRow(UnavailableError, "UNAVAILABLE", EXIT_USER_ERROR),
    ErrorRow(StoreError, "UNAVAILABLE", EXIT_USER_ERROR),
    ErrorRow(CheckpointError, "FAILED_PRECONDITION", EXIT_USER_ERROR),
    ErrorRow(ServiceError, "INTERNAL", EXIT_USER_ERROR),
    ErrorRow(
        OutputError, "INTERNAL", EXIT_USER_ERROR
    ),  # after ServiceError: INTERNAL alone is that
)
MESSAGE_SIZE_MARKER = "message larger than max"
"""What gRPC's own RESOURCE_EXHAUSTED says of a message past the size limit ("Received message
larger than max (N vs. M)"): no trailer names a class, so `error_for_status` reads the message."""
"""First match wins (subclasses before their parents). From a status back to an error, the first row
with that status, unless the server named a class of the hierarchy with the same status."""


def _row_for(kind: type[BaseException]) -> ErrorRow | None:
    for row in ERROR_TABLE:
        if issubclass(kind, row.error):
            return row
    return None


def status_name_for(exc: BaseException) -> str | None:
    """The gRPC status name a protssl error maps to; None for an unexpected exception."""
    row = _row_for(type(exc))
    return row.status if row is not None else None


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for an exception: the table's for protssl errors (2 for one the table does
    not name), 1 for anything else."""
    row = _row_for(type(exc))
    if row is not None:
        return row.exit_code
    return EXIT_USER_ERROR if isinstance(exc, ProtsslError) else EXIT_UNEXPECTED


def _by_name() -> dict[str, type[ProtsslError]]:
    seen: dict[str, type[ProtsslError]] = {}
    stack: list[type[ProtsslError]] = [ProtsslError]
    while stack:
        kind = stack.pop()
        seen[kind.__name__] = kind
        stack.extend(kind.__subclasses__())
    return seen


def error_for_status(status: str, message: str, *, kind: str | None = None) -> ProtsslError:
    """The error an SDK raises for a failed call: the server's class when it named one of ours that
    maps to the same status, else the table's first row for the status, else ServiceError(code=status).
    """
    if kind is None and status == "RESOURCE_EXHAUSTED" and MESSAGE_SIZE_MARKER in message:
        return MessageTooLargeError(
            f"{message}: send fewer or shorter sequences per request (or use EmbedStream)"
        )
    named = _by_name().get(kind or "")
    row = _row_for(named) if named is not None else None
    if (
        named is not None
        and named is not FastaFormatError
        and row is not None
        and row.status == status
    ):
        return _construct(named, message, status)
    for row in ERROR_TABLE:
        if row.status == status:
            return _construct(row.error, message, status)
    if status == "OUT_OF_RANGE":
        return InvalidInputError(message)
    return ServiceError(message, code=status)


def _construct(kind: type[ProtsslError], message: str, status: str) -> ProtsslError:
    if kind is ServiceError:
        return ServiceError(message, code=status)
    return kind(message)


def _rebuild_service_error(kind: type[ServiceError], message: str, code: str) -> ServiceError:
    error = ServiceError.__new__(kind)
    ServiceError.__init__(error, message, code=code)
    return error
