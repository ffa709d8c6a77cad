"""The information view: how many bits per residue the model saves against residue frequencies.

A masked language model is a compressor: its cross-entropy on held-out masked residues, in bits,
is what coding them would cost with the model's predictions. The unigram model (residue
frequencies of the training split) is the floor any model must beat; log2(20) = 4.32 bits is a
uniform guess. What the model saves over the unigram is structure it learned beyond composition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from protssl.model import ProteinEncoder
from protssl.pretrain.probe import masked_lm_loss, unigram_perplexity

__all__ = ["Information", "measure_information"]


@dataclass(frozen=True)
class Information:
    """Held-out masked-residue cross-entropy of a model and of the unigram model."""

    records: int
    residues: int
    loss: float
    """Mean masked cross-entropy of the model, nats per residue."""
    unigram_perplexity: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def model_bits(self) -> float:
        """Bits per masked residue under the model."""
        return self.loss / math.log(2)

    @property
    def unigram_bits(self) -> float:
        return math.log2(self.unigram_perplexity)

    @property
    def bits_saved(self) -> float:
        """Unigram bits minus model bits, per residue: positive when the model beats frequencies."""
        return self.unigram_bits - self.model_bits

    def to_json(self) -> dict[str, Any]:
        """The measured figures and the derived ones, rounded for a report."""
        derived = {
            "perplexity": self.perplexity,
            "model_bits_per_residue": self.model_bits,
            "unigram_bits_per_residue": self.unigram_bits,
            "bits_saved_per_residue": self.bits_saved,
        }
        return {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in {**asdict(self), **derived}.items()
        }


def measure_information(
    encoder: ProteinEncoder,
    train: Sequence[str],
    held_out: Sequence[str],
    *,
    window_residues: int,
    dtype: torch.dtype = torch.float32,
    max_tokens: int = 8192,
) -> Information:
    """Masked-LM loss over every residue of `held_out` (abutting windows) and the unigram floor."""
    loss = masked_lm_loss(
        encoder, held_out, window_residues=window_residues, dtype=dtype, max_tokens=max_tokens
    )
    return Information(
        records=len(held_out),
        residues=sum(map(len, held_out)),
        loss=loss,
        unigram_perplexity=unigram_perplexity(train, held_out),
    )
