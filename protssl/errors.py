"""One error hierarchy for protssl; faces map it to exit codes and gRPC statuses.

ProtsslError
├── InvalidInputError            bad user input (CLI exit 2, gRPC INVALID_ARGUMENT)
│   ├── FastaFormatError         a record that breaks the FASTA policy (names file, id, position)
│   └── SequenceTooLongError     a sequence past a limit under the `refuse` window policy
├── NotFoundError                something named does not exist (gRPC NOT_FOUND)
│   ├── ModelNotFoundError
│   └── ClassifierNotFoundError
├── CheckpointError              a model file that is corrupt, mismatched or unsupported
│   └── UntrustedCheckpointError a pickle checkpoint loaded without trust
├── OverloadedError              bounded capacity is full (gRPC RESOURCE_EXHAUSTED)
├── StoreError                   the SQL store failed or holds inconsistent data
└── ServiceError                 a gRPC call failed for a reason other than the caller's input
    ├── UnavailableError         the server could not be reached, even after retries (UNAVAILABLE)
    └── DeadlineExceededError    the call's deadline passed before its work was done
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ClassifierNotFoundError",
    "DeadlineExceededError",
    "FastaFormatError",
    "InvalidInputError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "ProtsslError",
    "SequenceTooLongError",
    "ServiceError",
    "StoreError",
    "UnavailableError",
    "UntrustedCheckpointError",
]


class ProtsslError(Exception):
    """Root of every error protssl raises on purpose."""


class InvalidInputError(ProtsslError):
    """The caller's input breaks a documented rule; the message says which and where."""


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
    ) -> None:
        where = source
        if record_id is not None:
            where += f": record {record_id!r}"
        if record_index is not None:
            where += f" (#{record_index + 1})"
        if position is not None:
            where += f" at position {position}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.record_id = record_id
        self.position = position
        self.record_index = record_index


class SequenceTooLongError(InvalidInputError):
    """A sequence is longer than a limit and the policy says refuse rather than window."""


class NotFoundError(ProtsslError):
    """A named model, classifier or record does not exist."""


class ModelNotFoundError(NotFoundError):
    """No model at the given path or under the given name."""


class ClassifierNotFoundError(NotFoundError):
    """No stored classifier with the given name (or version)."""


class CheckpointError(ProtsslError):
    """A model file is corrupt, does not match its card, or has an unsupported layout."""


class UntrustedCheckpointError(CheckpointError):
    """A pickle checkpoint was offered without --trust-pickle and its sha256 is not allow-listed."""


class OverloadedError(ProtsslError):
    """A bounded queue or limit is full; retry later."""


class StoreError(ProtsslError):
    """The SQL store failed or returned inconsistent data."""


class ServiceError(ProtsslError):
    """A remote call failed for a reason other than the caller's input; `code` names the gRPC status."""

    def __init__(self, message: str, *, code: str = "INTERNAL") -> None:
        super().__init__(message)
        self.code = code


class UnavailableError(ServiceError):
    """The server could not be reached (still UNAVAILABLE after the client's retries)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="UNAVAILABLE")


class DeadlineExceededError(ServiceError):
    """The call's deadline passed before its work was done; the server drops the unfinished work."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="DEADLINE_EXCEEDED")
