"""What training minimises and how fast: ESM-2's masking, the masked-LM loss, the learning-rate schedule.

Masking (ESM-2's): 15% of residues are selected; of those 80% become `<mask>`, 10% a random
standard residue and 10% stay; the loss is cross-entropy on the selected positions only. The
schedule is a linear warmup, then cosine or linear decay to a floor.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F

from protssl.alphabet import ALPHABET
from protssl.model import ProteinEncoder
from protssl.pretrain.config import PretrainConfig

__all__ = ["autocast", "learning_rate", "mask_tokens", "mlm_loss_sum", "selected_lm_loss"]

# Token ids a random replacement may take: the 20 standard residues (as ESM-2 does).
_STANDARD = torch.tensor([ALPHABET.get_idx(a) for a in "ACDEFGHIKLMNPQRSTVWY"])


def mask_tokens(
    tokens: torch.Tensor, *, mask_prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM-2 masking of (B, T) tokens; returns (inputs, targets) with targets -100 where not selected."""
    residue = (
        tokens.ne(ALPHABET.padding_idx) & tokens.ne(ALPHABET.cls_idx) & tokens.ne(ALPHABET.eos_idx)
    )
    draw = torch.rand(tokens.shape, generator=generator)
    selected = residue & (draw < mask_prob)
    action = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_ids = _STANDARD[torch.randint(len(_STANDARD), tokens.shape, generator=generator)]
    inputs = tokens.masked_fill(to_mask, ALPHABET.mask_idx)
    inputs = torch.where(to_random, random_ids, inputs)
    targets = tokens.masked_fill(~selected, -100)
    return inputs, targets


def mlm_loss_sum(
    encoder: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over selected positions; the LM head runs on those positions only.

    Pass `inputs` and `targets` on the CPU: the selected positions are found there and the tensors
    moved here, so a GPU's queue never waits for the host to learn how many there are.
    """
    module = (
        encoder.module
        if isinstance(encoder, torch.nn.parallel.DistributedDataParallel)
        else encoder
    )
    assert isinstance(module, ProteinEncoder)
    device = module.embed_tokens.weight.device
    out = encoder(inputs.to(device, non_blocking=True), repr_layers=(-1,), return_logits=False)
    return selected_lm_loss(module, out.representations[module.config.num_layers], targets)


def selected_lm_loss(
    encoder: ProteinEncoder, hidden: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the LM head on the (B, T, C) last layer at the selected positions
    of CPU `targets` (-100 elsewhere), and how many there are."""
    device = hidden.device
    flat_targets = targets.reshape(-1)
    positions = flat_targets.ne(-100).nonzero().squeeze(1)
    flat = hidden.flatten(0, 1)  # (B*T, C)
    logits = encoder.lm_head(flat.index_select(0, positions.to(device, non_blocking=True)))
    selected = flat_targets[positions].to(device, non_blocking=True)
    loss = F.cross_entropy(logits.float(), selected, reduction="sum")
    return loss, len(positions)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Autocast to `dtype` on `device`'s type; nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or linear decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = 1 - progress
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * decay)
