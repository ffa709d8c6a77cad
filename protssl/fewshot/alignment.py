"""Alignment evidence for the hybrid head: HMMER's `phmmer` (through pyhmmer) on candidate support.

`Aligner` holds the support sequences digitised once and scores one query against any subset of
them, reporting E-values on the scale of the whole support (Z = its size), so that an E-value means
the same whichever candidates embedding retrieval handed over. Chosen over pyopal (SIMD
Smith-Waterman) for sensitivity and for E-values: best-hit transfer over the whole support of
`bench/fewshot_quality.py` found 63 / 136 / 51 right of 96 / 150 / 64 queries (ec_seq /
is_families / pfam) with phmmer, against 57 / 129 / 44 for pyopal's best Smith-Waterman score
(BLOSUM62, 11/1), at 5-16x pyopal's time (26 ms against 4.6 ms a query on 180 targets).
Sequences travel in a classifier's state as one byte array and offsets (`pack` / `unpack`).
Searches release the GIL, so `search_many` runs several at once on threads (each thread its own
builder and pipeline) with the same hits as one after the other.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pyhmmer import easel, plan7

__all__ = ["Aligner", "Hit", "pack", "unpack"]

_ALPHABET: easel.Alphabet = easel.Alphabet.amino()
_LETTERS = frozenset(_ALPHABET.symbols)

Hit = tuple[int, float, float]
"""(support index, E-value over the whole support, bit score)."""


def _digitise(name: str, sequence: str) -> easel.DigitalSequence:
    text = "".join(c if c in _LETTERS else "X" for c in sequence.upper())
    return easel.TextSequence(name=name.encode(), sequence=text).digitize(_ALPHABET)


class Aligner:
    """phmmer of one query against chosen support sequences, E-values scaled to the whole support."""

    def __init__(self, sequences: Sequence[str], *, profile_samples: int = 200) -> None:
        """`profile_samples`: random sequences HMMER scores to calibrate each query profile's
        E-values, per score distribution (its `EmN`, `EvN`, `EfN`; 200 is HMMER's default)."""
        self.sequences = list(sequences)
        self.profile_samples = profile_samples
        self._targets = [_digitise(str(i), s) for i, s in enumerate(self.sequences)]
        self._local = threading.local()  # a builder and a pipeline per thread: neither is shared

    def search(self, query: str, candidates: Sequence[int]) -> list[Hit]:
        """Hits of `query` among the support rows `candidates`, best (lowest E-value) first."""
        if not candidates or not query:
            return []
        if not hasattr(self._local, "pipeline"):
            n = self.profile_samples
            self._local.builder = plan7.Builder(_ALPHABET, EmN=n, EvN=n, EfN=n)
            self._local.pipeline = plan7.Pipeline(_ALPHABET, Z=max(len(self.sequences), 1))
        block = easel.DigitalSequenceBlock(_ALPHABET)
        for position, index in enumerate(candidates):
            target = self._targets[index].copy()
            target.name = str(position).encode()
            block.append(target)
        pipeline = self._local.pipeline
        try:
            hits = pipeline.search_seq(_digitise("query", query), block, self._local.builder)
        finally:
            pipeline.clear()
        found = [(candidates[int(h.name)], float(h.evalue), float(h.score)) for h in hits]
        return sorted(found, key=lambda h: (h[1], -h[2]))

    def search_many(
        self, queries: Sequence[str], candidates: Sequence[Sequence[int]], threads: int
    ) -> Generator[list[Hit], None, None]:
        """`search` of each query among its candidates, in order, `threads` searches at once;
        closing it early drops the searches not yet started (and waits for those running)."""
        if threads <= 1 or len(queries) < 2:
            yield from map(self.search, queries, candidates)
            return
        with ThreadPoolExecutor(min(threads, len(queries))) as pool:
            yield from pool.map(self.search, queries, candidates)


def pack(sequences: Sequence[str]) -> dict[str, np.ndarray]:
    """Sequences as one uint8 array of ASCII letters and their end offsets (no pickle)."""
    data = "".join(sequences).encode("ascii")
    ends = np.cumsum([len(s) for s in sequences], dtype=np.int64)
    return {"residues": np.frombuffer(data, dtype=np.uint8).copy(), "ends": ends}


def unpack(arrays: dict[str, np.ndarray]) -> list[str]:
    """The sequences `pack` stored."""
    data = arrays["residues"].tobytes().decode("ascii")
    starts = np.concatenate([[0], arrays["ends"][:-1]]).astype(np.int64)
    return [data[a:b] for a, b in zip(starts.tolist(), arrays["ends"].tolist(), strict=True)]
