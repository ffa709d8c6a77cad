"""Per-request limits: counts and lengths checked before any work is queued.

Every limit is a `ServiceConfig` field, named in the error so a client knows what it ran into.
"""

from __future__ import annotations

from collections.abc import Sequence

from protssl.errors import InvalidInputError, SequenceTooLongError
from service.config import ServiceConfig

__all__ = ["check_classifier", "check_request", "check_response_size", "response_bytes"]

EMBEDDING_OVERHEAD_BYTES = 400
"""Bytes of one Embedding message beyond its vector and id (provenance, shape, framing)."""


def check_request(
    ids: Sequence[str],
    sequences: Sequence[str],
    config: ServiceConfig,
    *,
    first: int = 0,
    streamed: bool = False,
) -> None:
    """Refuse a request (or stream message) past the configured limits, naming the limit; records
    are numbered from `first` (a stream's earlier messages), and a stream message's advice is to
    send less per message."""
    one, smaller = (
        ("stream message", "send fewer per message (the SDK: a smaller chunk)")
        if streamed
        else ("request", "split the request or use EmbedStream (the SDK: Client.embed_stream)")
    )
    if len(sequences) > config.max_sequences:
        raise InvalidInputError(
            f"{len(sequences)} sequences in one {one}; the limit is {config.max_sequences} "
            f"(max_sequences): {smaller}"
        )
    total = 0
    for index, (record_id, sequence) in enumerate(zip(ids, sequences, strict=True), start=first):
        if len(record_id) > config.max_id_length:
            raise InvalidInputError(
                f"sequences[{index}].id has {len(record_id)} characters; the limit is "
                f"{config.max_id_length} (max_id_length)"
            )
        if "\x00" in record_id:
            raise InvalidInputError(f"sequences[{index}].id contains a NUL character")
        if len(sequence) > config.max_sequence_length:
            raise SequenceTooLongError(
                f"record {record_id!r} (#{index + 1}) has {len(sequence)} residues; the limit is "
                f"{config.max_sequence_length} per sequence (max_sequence_length)"
            )
        total += len(sequence)
    if total > config.max_residues:
        raise InvalidInputError(
            f"{total} residues in one {one}; the limit is {config.max_residues} "
            f"(max_residues): {smaller}"
        )


def response_bytes(ids: Sequence[str], residues: int, dim: int, itemsize: int) -> int:
    """An upper bound on the bytes of the Embedding messages for `ids` (vectors, ids, overhead)."""
    rows = len(ids)
    id_bytes = sum(len(i.encode("utf-8", "surrogatepass")) for i in ids)
    return max(residues, rows) * dim * itemsize + id_bytes + EMBEDDING_OVERHEAD_BYTES * rows


def check_response_size(
    ids: Sequence[str],
    residues: int,
    dim: int,
    itemsize: int,
    config: ServiceConfig,
    *,
    streamed: bool = False,
) -> None:
    """Refuse a call whose vectors would not fit in one gRPC message, before any work is done.

    `residues` is the total of per-residue rows (0 for pooled vectors). For a stream (`streamed`),
    call it once per embedding: each travels in its own message.
    """
    size = response_bytes(ids, residues, dim, itemsize)
    limit = config.max_message_mb * 1024 * 1024
    if size > limit:
        what, advice = (
            (
                f"record {ids[0]!r}'s per-residue vectors would take",
                "dtype float16 or pooled vectors",
            )
            if streamed
            else ("the response would take", "EmbedStream, dtype float16 or fewer per request")
        )
        raise InvalidInputError(
            f"{what} {size / 2**20:.1f} MiB, more than one message may "
            f"({config.max_message_mb} MiB, max_message_mb): use {advice}"
        )


def check_classifier(
    labels: Sequence[Sequence[str]], kept: Sequence[Sequence[str]], config: ServiceConfig
) -> None:
    """Refuse support past max_examples or max_classes, counting `kept` examples (AddExamples)."""
    total = len(kept) + len(labels)
    if total > config.max_examples:
        raise InvalidInputError(
            f"{total} examples in one classifier ({len(kept)} kept + {len(labels)} sent); the "
            f"limit is {config.max_examples} (max_examples)"
        )
    classes = {label for example in (*kept, *labels) for label in example}
    if len(classes) > config.max_classes:
        raise InvalidInputError(
            f"{len(classes)} labels in one classifier; the limit is {config.max_classes} "
            "(max_classes)"
        )
