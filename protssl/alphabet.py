"""The ESM-1b/ESM-2 token alphabet (fair-esm's `Alphabet`) and a vectorised tokenizer for it."""

from __future__ import annotations

import numpy as np
from esm.data import Alphabet

__all__ = ["ALPHABET", "RESIDUES", "first_non_residue", "tokenize"]

ALPHABET: Alphabet = Alphabet.from_architecture("ESM-1b")
"""The 33-token alphabet every protssl model uses: <cls> <pad> <eos> <unk>, residues, gaps, <mask>."""

RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBUZO"
"""Residue letters protssl accepts after normalisation (see `fasta.py`)."""

_LOOKUP = np.full(256, ALPHABET.unk_idx, dtype=np.int64)
for _letter in RESIDUES:
    _LOOKUP[ord(_letter)] = ALPHABET.get_idx(_letter)


def tokenize(residues: str) -> np.ndarray:
    """Token ids of a normalised residue string, without BOS/EOS."""
    return _LOOKUP[np.frombuffer(residues.encode("ascii"), dtype=np.uint8)]


_RESIDUE_BYTES = RESIDUES.encode("ascii")


def first_non_residue(residues: str) -> int | None:
    """The 0-based position of the first character that is not a residue letter, or None when
    the string is normalised (one C pass over its bytes; the scan only when it is not)."""
    if residues.isascii() and not residues.encode("ascii").translate(None, _RESIDUE_BYTES):
        return None
    return next(i for i, c in enumerate(residues) if c not in RESIDUES)
