"""The ESM-1b/ESM-2 token alphabet (fair-esm's `Alphabet`) and a vectorised tokenizer for it."""

from __future__ import annotations

import numpy as np
from esm.data import Alphabet

__all__ = ["ALPHABET", "RESIDUES", "tokenize"]

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
