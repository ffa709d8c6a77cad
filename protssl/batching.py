"""Sequences → token-budget batches: long sequences split into overlapping windows, batches sorted by length.

A batch costs its padded size (rows x longest row, `padded_tokens`), so sorting by length keeps
padding small and the token budget bounds memory. Two packings share that cost: `token_batches`
packs a stream longest first; `pack_around` fills one forward around a given sequence (the
service's oldest waiting one) with those nearest it in width, while real tokens stay a minimum
share of the padded ones. Windows keep every residue: none is cut silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from protssl.alphabet import ALPHABET, first_non_residue, tokenize
from protssl.errors import WINDOW_ADVICE, InvalidInputError, SequenceTooLongError, fasta_location
from protssl.fasta import ProteinRecord, ReadStats, source_name

__all__ = [
    "Footprint",
    "TokenBatch",
    "Window",
    "WindowPolicy",
    "check_overlap",
    "footprint",
    "pack_around",
    "padded_tokens",
    "plan_windows",
    "read_ahead",
    "token_batches",
    "too_long_error",
]


DEFAULT_OVERLAP = 256
"""Residues neighbouring windows share unless told otherwise (a quarter of ESM-2's 1,022)."""


@dataclass(frozen=True)
class WindowPolicy:
    """How sequences longer than the model's window are handled."""

    mode: Literal["window", "refuse"] = "window"
    """`window`: split into overlapping windows and stitch; `refuse`: raise SequenceTooLongError."""
    overlap: int | None = None
    """Residues shared by neighbouring windows (at least; windows are spread evenly); None:
    DEFAULT_OVERLAP, or a quarter of a window under twice that (`overlap_in`)."""

    def __post_init__(self) -> None:
        if self.mode not in ("window", "refuse"):
            raise InvalidInputError(f"window policy must be window or refuse, not {self.mode!r}")
        if self.overlap is not None and self.overlap < 0:
            raise InvalidInputError(f"window overlap must be >= 0, got {self.overlap}")

    def overlap_in(self, window_residues: int) -> int:
        """The overlap windows of `window_residues` get; one they cannot hold is refused."""
        if self.overlap is None:  # past half a window, the overlap would double the work
            return (
                DEFAULT_OVERLAP if window_residues >= 2 * DEFAULT_OVERLAP else window_residues // 4
            )
        check_overlap(self.overlap, window_residues)
        return self.overlap

    def resolved(self, window_residues: int) -> WindowPolicy:
        """This policy with the overlap it has for that window written out (what keys and
        provenance record, so that the default and the same number given are one policy)."""
        if self.mode == "window":
            return replace(self, overlap=self.overlap_in(window_residues))
        return replace(self, overlap=DEFAULT_OVERLAP if self.overlap is None else self.overlap)

    def describe(self, window_residues: int) -> str:
        """A short stable string for provenance and cache keys. Every job builds it before any
        work, so an overlap the model's window cannot hold is refused then, not at the first
        long record."""
        return f"{self.mode}:{window_residues}:{self.resolved(window_residues).overlap}"


@dataclass(frozen=True)
class Window:
    """Residues [start, end) of item `item` (an index into the caller's sequence list)."""

    item: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class TokenBatch:
    """Token ids (B, T) with BOS, residues, EOS and padding, and the window each row holds."""

    tokens: torch.Tensor
    windows: tuple[Window, ...]

    @property
    def residues(self) -> int:
        return sum(w.length for w in self.windows)


def read_ahead(records: Iterable[ProteinRecord], residues: int) -> Iterator[list[ProteinRecord]]:
    """Consecutive groups of at least `residues` residues (the last may hold fewer).

    Batches are sorted by length within a group: the group bounds how far a stream is read ahead.
    """
    group: list[ProteinRecord] = []
    held = 0
    for record in records:
        group.append(record)
        held += len(record.sequence)
        if held >= residues:
            yield group
            group, held = [], 0
    if group:
        yield group


def check_overlap(overlap: int, window_residues: int) -> None:
    """Windows that overlap by all they hold would never advance, and past half a window each
    residue is computed in more than two: `--overlap 1021` of 1022 ran one 31,921-residue protein
    as ~31,000 windows, hours of forwards with nothing to show (records after it waited too)."""
    if overlap >= window_residues:
        raise InvalidInputError(
            f"overlap {overlap} must be smaller than the window {window_residues}"
        )
    if overlap > window_residues // 2:
        times = math.ceil(window_residues / (window_residues - overlap))
        raise InvalidInputError(
            f"overlap {overlap} is over half the window {window_residues}: each residue would be "
            f"computed in up to {times} windows; give at most {window_residues // 2}"
        )


def plan_windows(length: int, window_residues: int, overlap: int) -> list[tuple[int, int]]:
    """Cover [0, length) with the fewest windows of `window_residues` overlapping by >= `overlap`."""
    if length <= window_residues:
        return [(0, length)]
    check_overlap(overlap, window_residues)
    count = math.ceil((length - overlap) / (window_residues - overlap))
    last_start = length - window_residues
    starts = [round(i * last_start / (count - 1)) for i in range(count)]
    return [(s, s + window_residues) for s in starts]


def padded_tokens(rows: int, width: int) -> int:
    """What a forward costs: every row is as wide as the widest (a padded token costs a real one's work)."""
    return rows * width


@dataclass(frozen=True)
class Footprint:
    """What one sequence takes in a forward: `rows` windows, each `width` tokens (BOS and EOS included)."""

    rows: int
    width: int

    @property
    def tokens(self) -> int:
        """Its own tokens; the padding a wider neighbour adds is not counted."""
        return self.rows * self.width


def footprint(length: int, window_residues: int, overlap: int) -> Footprint:
    """The rows and width a sequence of `length` residues takes under this window and overlap."""
    rows = len(plan_windows(length, window_residues, overlap))
    return Footprint(rows=rows, width=min(length, window_residues) + 2)


def pack_around(
    anchor: Footprint, pool: Sequence[Footprint], *, max_tokens: int, min_fill: float
) -> list[int]:
    """Which of `pool` share a forward with `anchor`: indices, nearest in width first.

    Each joins while the forward stays within `max_tokens` (`padded_tokens` of all rows at the
    widest width) and real tokens stay at least `min_fill` of the padded ones; one that does not
    fit is passed over, since a narrower or shorter one further along may. The anchor always runs,
    even when its own windows exceed the budget (nothing joins it then).
    """
    rows, width, real = anchor.rows, anchor.width, anchor.tokens
    chosen: list[int] = []
    for index in sorted(range(len(pool)), key=lambda i: abs(pool[i].width - anchor.width)):
        item = pool[index]
        wider = max(width, item.width)
        padded = padded_tokens(rows + item.rows, wider)
        if padded > max_tokens or real + item.tokens < min_fill * padded:
            continue
        chosen.append(index)
        rows, width, real = rows + item.rows, wider, real + item.tokens
    return chosen


def too_long_error(where: str, length: int, window_residues: int) -> SequenceTooLongError:
    """The `refuse` window policy's error for a sequence longer than the model window; `where`
    names it (a sequence of a call, or a FASTA file's record by `fasta_location`)."""
    return SequenceTooLongError(
        f"{where} has {length} residues, more than the model's window of {window_residues}; "
        + WINDOW_ADVICE
    )


def refusing_long(
    records: Iterable[ProteinRecord], source: str | Path, stats: ReadStats, window_residues: int
) -> Iterator[ProteinRecord]:
    """`records` as a FASTA file's reader gives them (`stats` its counts), stopped at the first
    longer than the model window (the `refuse` window policy) as it is read, named as a FASTA error
    names a record: file, id and number."""
    for record in records:
        if len(record.sequence) > window_residues:
            where = fasta_location(
                source_name(source),
                record_id=record.id,
                record_index=stats.records + stats.skipped - 1,  # the headers read so far
            )
            raise too_long_error(where, len(record.sequence), window_residues)
        yield record


def _named(item: int, ids: Sequence[str] | None) -> str:
    """How an error names sequence `item` of a batch: by its id where there are ids."""
    return f"record {ids[item]!r}" if ids is not None else f"sequence #{item + 1}"


def token_batches(
    sequences: Sequence[str],
    *,
    max_tokens: int,
    window_residues: int,
    policy: WindowPolicy,
    ids: Sequence[str] | None = None,
) -> Iterator[TokenBatch]:
    """Windows of all sequences, longest first, packed so rows x padded length <= max_tokens."""
    windows: list[Window] = []
    for item, sequence in enumerate(sequences):
        if (at := first_non_residue(sequence)) is not None:
            raise InvalidInputError(
                f"{_named(item, ids)}: {sequence[at]!r} at position {at + 1} is not a residue "
                "letter: records hold normalised residues (uppercase, no gaps); read_fasta and "
                "records_from_sequences make them from raw text, under the FASTA policy"
            )
        if len(sequence) > window_residues and policy.mode == "refuse":
            raise too_long_error(_named(item, ids), len(sequence), window_residues)
        windows.extend(
            Window(item, s, e)
            for s, e in plan_windows(
                len(sequence), window_residues, policy.overlap_in(window_residues)
            )
        )
    if max_tokens < window_residues + 2:
        raise InvalidInputError(
            f"max_tokens {max_tokens} is below one full window ({window_residues + 2})"
        )
    windows.sort(key=lambda w: w.length, reverse=True)
    batch: list[Window] = []
    for window in windows:
        width = (batch[0].length if batch else window.length) + 2
        if batch and padded_tokens(len(batch) + 1, width) > max_tokens:
            yield _encode(batch, sequences)
            batch = []
        batch.append(window)
    if batch:
        yield _encode(batch, sequences)


def _encode(batch: list[Window], sequences: Sequence[str]) -> TokenBatch:
    width = batch[0].length + 2
    tokens = np.full((len(batch), width), ALPHABET.padding_idx, dtype=np.int64)
    tokens[:, 0] = ALPHABET.cls_idx
    for row, window in enumerate(batch):
        tokens[row, 1 : window.length + 1] = tokenize(
            sequences[window.item][window.start : window.end]
        )
        tokens[row, window.length + 1] = ALPHABET.eos_idx
    return TokenBatch(tokens=torch.from_numpy(tokens), windows=tuple(batch))
