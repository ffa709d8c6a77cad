"""Per-request limits: counts and lengths checked before any work is queued."""

from __future__ import annotations

from collections.abc import Sequence

from protssl.errors import InvalidInputError, SequenceTooLongError
from service.config import ServiceConfig

__all__ = ["check_request", "check_response_size"]


def check_request(ids: Sequence[str], sequences: Sequence[str], config: ServiceConfig) -> None:
    """Refuse a request (or stream message) past the configured limits, naming the limit."""
    if len(sequences) > config.max_sequences:
        raise InvalidInputError(
            f"{len(sequences)} sequences in one request; the limit is {config.max_sequences} "
            "(max_sequences): split the request or use EmbedStream"
        )
    total = 0
    for index, (record_id, sequence) in enumerate(zip(ids, sequences, strict=True)):
        if len(sequence) > config.max_sequence_length:
            raise SequenceTooLongError(
                f"record {record_id!r} (#{index + 1}) has {len(sequence)} residues; the limit is "
                f"{config.max_sequence_length} per sequence (max_sequence_length)"
            )
        total += len(sequence)
    if total > config.max_residues:
        raise InvalidInputError(
            f"{total} residues in one request; the limit is {config.max_residues} "
            "(max_residues): split the request or use EmbedStream"
        )


def check_response_size(
    residues: int, rows: int, dim: int, itemsize: int, config: ServiceConfig
) -> None:
    """Refuse a unary call whose vectors would not fit in one gRPC message (per-residue, mostly)."""
    size = max(residues, rows) * dim * itemsize + 200 * rows
    limit = config.max_message_mb * 1024 * 1024
    if size > limit:
        raise InvalidInputError(
            f"the vectors would take {size / 2**20:.0f} MiB, more than one message may "
            f"({config.max_message_mb} MiB, max_message_mb): use EmbedStream, float16 or fewer "
            "sequences per request"
        )
