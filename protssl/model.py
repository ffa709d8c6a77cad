"""The ESM-2 encoder: pre-LN transformer with rotary positions, tied LM head, token-dropout rescaling.

Written on `scaled_dot_product_attention` with a fused QKV projection; given fair-esm ESM-2 weights
(converted by `checkpoint`), it gives the same per-residue representations as `esm.model.esm2.ESM2`.
CPU fast paths live in `kernels`. It knows nothing of FASTA, files or SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from protssl.alphabet import ALPHABET
from protssl.dtypes import DTypeName, check_dtype_name
from protssl.errors import CheckpointError, InvalidInputError
from protssl.hardware import cpu_has_bf16
from protssl.kernels import Int8Linear, attention, linear, linear_weights, matmul_rows, pad_rows

__all__ = [
    "PRESETS",
    "EncoderOutput",
    "ModelConfig",
    "ProteinEncoder",
    "cpu_has_bf16",
    "init_weights",
    "resolve_dtype",
]

# Fraction of tokens ESM-2 masks in training (15% selected x 80% <mask>); the token-dropout rescale
# divides by the observed fraction so inference sees the same activation scale as training.
_TRAIN_MASK_RATIO = 0.15 * 0.8


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an ESM-2-style encoder."""

    num_layers: int = 6
    """Transformer blocks."""
    embed_dim: int = 320
    """Width of the residual stream."""
    attention_heads: int = 20
    """Heads per attention layer; embed_dim must divide by it."""
    ffn_dim: int = 1280
    """Hidden width of each block's MLP (ESM-2 uses 4 x embed_dim)."""
    token_dropout: bool = True
    """ESM-2's rescaling of embeddings by the fraction of <mask> tokens."""
    max_positions: int = 1024
    """Tokens per window the model was trained on (BOS + residues + EOS); longer inputs are windowed."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm (torch's default, as in fair-esm)."""

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.embed_dim < 1 or self.attention_heads < 1:
            raise ValueError("embed_dim and attention_heads must be positive")
        if self.embed_dim % self.attention_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by attention_heads {self.attention_heads}"
            )
        if (self.embed_dim // self.attention_heads) % 2:
            raise ValueError("head dimension must be even for rotary embeddings")
        if self.ffn_dim < 1:
            raise ValueError(f"ffn_dim must be positive, got {self.ffn_dim}")
        if self.max_positions < 3:
            raise ValueError("max_positions must leave room for BOS, EOS and one residue")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads

    @property
    def max_residues(self) -> int:
        """Residues that fit in one window next to BOS and EOS."""
        return self.max_positions - 2

    def num_parameters(self) -> int:
        """Parameters of the encoder and LM head (tied embedding counted once)."""
        d, f, v = self.embed_dim, self.ffn_dim, len(ALPHABET.all_toks)
        per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
        return v * d + self.num_layers * per_layer + 2 * d + (d * d + d + 2 * d + v)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward matmul FLOPs per token at a given padded length (attention included, no LM head)."""
        d, f = self.embed_dim, self.ffn_dim
        dense = 2 * (4 * d * d + 2 * d * f)
        attention = 2 * 2 * seq_len * d
        return float(self.num_layers * (dense + attention))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"unknown architecture fields in model card: {sorted(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


PRESETS: dict[str, ModelConfig] = {
    "esm2-8m": ModelConfig(num_layers=6, embed_dim=320, attention_heads=20, ffn_dim=1280),
    "esm2-35m": ModelConfig(num_layers=12, embed_dim=480, attention_heads=20, ffn_dim=1920),
    "esm2-150m": ModelConfig(num_layers=30, embed_dim=640, attention_heads=20, ffn_dim=2560),
    "esm2-650m": ModelConfig(num_layers=33, embed_dim=1280, attention_heads=20, ffn_dim=5120),
    # ESM-2 8M with 5 heads of dim 64 instead of 20 of 16: about 2x the bf16 training tokens/s on CPU.
    "protssl-8m-h5": ModelConfig(num_layers=6, embed_dim=320, attention_heads=5, ffn_dim=1280),
    # A toy shape for tests and smoke runs (seconds on a laptop); carries no biology.
    "protssl-tiny": ModelConfig(num_layers=2, embed_dim=64, attention_heads=2, ffn_dim=256),
}
"""Shapes by name (random weights unless loaded from a checkpoint): ESM-2's, and protssl's own."""


def resolve_dtype(name: DTypeName, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA or on CPUs with native bf16, fp32 elsewhere; int8 computes in fp32."""
    name = check_dtype_name(name)
    if name in ("float32", "int8"):
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return torch.float32


class EncoderOutput(NamedTuple):
    """Hidden states by layer (0 = embeddings, num_layers = final, layer-normed) and optional logits."""

    representations: dict[int, torch.Tensor]
    logits: torch.Tensor | None


class Rotary:
    """Rotary position tables in ESM's half-split layout, tiled to the width of q and k side by side.

    With x = [x1, x2] per head and its half-swapped copy [x2, x1], the rotation is
    x * cos + swapped * sin = [x1 c - x2 s, x2 c + x1 s]: `cos` is [c, c] and `sin` is [-s, s] per head.
    Tables are computed in fp32 whatever the model's dtype, then cast.
    """

    def __init__(self, head_dim: int, num_heads: int) -> None:
        self.head_dim = head_dim
        self.num_heads = num_heads

    @property
    def inv_freq(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        return 1.0 / (10000**exponents)

    def tables(
        self, seq_len: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, 2 x heads x head_dim) cos and signed sin tables for q and k of one sequence."""
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(positions, self.inv_freq.to(device))  # (T, hd/2)
        cos, sin = angles.cos(), angles.sin()
        heads = 2 * self.num_heads  # q's heads, then k's
        cos = torch.cat((cos, cos), dim=-1).repeat(1, heads)
        sin = torch.cat((-sin, sin), dim=-1).repeat(1, heads)
        return cos.to(dtype), sin.to(dtype)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.attention_heads
        self.head_dim = config.head_dim
        self.qkv_proj = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.out_proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        shape: tuple[int, int],
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """x: (rows, C), the B x T tokens first, then any padding rows (see `matmul_rows`)."""
        batch, seq_len = shape
        tokens, width = batch * seq_len, x.shape[1]
        projected = linear(x, self.qkv_proj)[:tokens].view(batch, seq_len, 3 * width)  # (B, T, 3C)
        qk, v = projected.split((2 * width, width), dim=-1)
        # each head's halves swapped, [x2, x1]: one copy of q and k (cat copies 2.3x faster than
        # flip on CPU), no extra matmul rows; halves: (B, T, 2H, 2, hd/2)
        halves = qk.unflatten(-1, (2 * self.num_heads, 2, self.head_dim // 2))
        swapped = torch.cat((halves[..., 1:, :], halves[..., :1, :]), dim=-2).flatten(
            -3
        )  # (B, T, 2C)
        cos, sin = rotary
        qk = torch.addcmul(qk * cos, swapped, sin)  # (B, T, 2C): q and k rotated
        # (B, T, 2, H, hd) -> (2, B, H, T, hd): q and k
        q, k = qk.view(batch, seq_len, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        v = v.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        y = attention(q, k, v, attn_mask)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(tokens, width)  # (B x T, C)
        return linear(pad_rows(y, x.shape[0]), self.out_proj)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(linear(x, self.fc1, gelu=True), self.fc2)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.self_attn = SelfAttention(config)
        self.final_layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        shape: tuple[int, int],
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """x: (rows, C) as in SelfAttention.forward."""
        x = x + self.self_attn(self.self_attn_layer_norm(x), shape, rotary, attn_mask)
        return x + self.mlp(self.final_layer_norm(x))


class LMHead(nn.Module):
    """RoBERTa-style head whose output projection is the token embedding (tied)."""

    def __init__(self, config: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.embed_dim, config.embed_dim)
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for (..., C) hidden states."""
        flat = x.reshape(-1, x.shape[-1])  # (N, C)
        padded = pad_rows(flat, matmul_rows(flat.shape[0], flat.device))
        h = self.layer_norm(linear(padded, self.dense, gelu=True))
        logits = linear_weights(h, self.embedding.weight, self.bias)[: flat.shape[0]]
        return logits.view(*x.shape[:-1], -1)  # (..., vocab)


class ProteinEncoder(nn.Module):
    """ESM-2 encoder over token ids laid out as in fair-esm's `Alphabet` (BOS ... EOS, then pads)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        vocab = len(ALPHABET.all_toks)
        self.padding_idx = ALPHABET.padding_idx
        self.mask_idx = ALPHABET.mask_idx
        self.embed_tokens = nn.Embedding(vocab, config.embed_dim, padding_idx=self.padding_idx)
        self.rotary = Rotary(config.head_dim, config.attention_heads)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.lm_head = LMHead(config, self.embed_tokens)

    def resolve_layer(self, layer: int) -> int:
        """Turn a possibly negative layer index into 0..num_layers (-1 = last)."""
        n = self.config.num_layers
        resolved = layer + n + 1 if layer < 0 else layer
        if not 0 <= resolved <= n:
            raise InvalidInputError(f"layer {layer} is out of range for a {n}-layer model")
        return resolved

    def forward(
        self,
        tokens: torch.Tensor,
        repr_layers: Iterable[int] = (),
        *,
        return_logits: bool = True,
    ) -> EncoderOutput:
        """Run the encoder on (B, T) token ids; stops early when logits are not wanted."""
        wanted = {self.resolve_layer(layer) for layer in repr_layers}
        last_needed = self.config.num_layers if return_logits else max(wanted, default=0)
        padding = tokens.eq(self.padding_idx)  # (B, T)
        x = self.embed_tokens(tokens)  # (B, T, C)
        if self.config.token_dropout:
            is_mask = tokens.eq(self.mask_idx)
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            observed = is_mask.sum(-1).to(x.dtype) / (~padding).sum(-1).to(x.dtype)  # (B,)
            x = x * ((1 - _TRAIN_MASK_RATIO) / (1 - observed))[:, None, None]
        x = x * (~padding).unsqueeze(-1).to(x.dtype)
        representations: dict[int, torch.Tensor] = {}
        if 0 in wanted:
            representations[0] = x
        attn_mask = (~padding)[:, None, None, :] if padding.any() else None  # (B, 1, 1, T)
        batch, seq_len, width = x.shape
        rotary = self.rotary.tables(seq_len, x.dtype, tokens.device)
        tokens_in = batch * seq_len
        x = pad_rows(x.reshape(tokens_in, width), matmul_rows(tokens_in, x.device))  # (rows, C)
        for index, block in enumerate(self.layers[:last_needed], start=1):
            x = block(x, (batch, seq_len), rotary, attn_mask)
            if index == self.config.num_layers:
                x = self.emb_layer_norm_after(x)
            if index in wanted:
                representations[index] = x[:tokens_in].view(batch, seq_len, width)  # (B, T, C)
        logits = self.lm_head(x[:tokens_in].view(batch, seq_len, width)) if return_logits else None
        return EncoderOutput(representations=representations, logits=logits)

    def quantize_int8(self) -> None:
        """Swap every block's linears for `Int8Linear` (`--dtype int8`, CPU inference; lossy).

        The LM head stays float32: embeddings never run it and it is a sliver of the FLOPs.
        """
        for block in self.layers:
            for owner, name in (
                (block.self_attn, "qkv_proj"),
                (block.self_attn, "out_proj"),
                (block.mlp, "fc1"),
                (block.mlp, "fc2"),
            ):
                setattr(owner, name, Int8Linear(getattr(owner, name)))

    def warm_up(self, max_tokens: int) -> int:
        """Run one small forward per CPU matmul shape a batch of up to `max_tokens` tokens can bring.

        oneDNN builds each shape's kernels on first use (see `matmul_rows`); a server calls this
        before it takes traffic so no request pays for it. Returns the number of shapes (0 off CPU).
        """
        device = self.embed_tokens.weight.device
        if device.type != "cpu":
            return 0
        grid = sorted({matmul_rows(n, device) for n in range(8, max_tokens + 1, 8)})
        with torch.inference_mode():
            # every grid value is a multiple of 8: (rows / 8) sequences of 6 residues
            for rows in grid:
                tokens = torch.full((rows // 8, 8), self.mask_idx, dtype=torch.long, device=device)
                tokens[:, 0], tokens[:, -1] = ALPHABET.cls_idx, ALPHABET.eos_idx
                self(tokens, (1,), return_logits=False)  # every block has the same shapes
        return len(grid)


def init_weights(model: ProteinEncoder, *, seed: int = 0) -> None:
    """Initialise like fair-esm/BERT: normal(0, 0.02) linears and embeddings, zero biases."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
                module.weight[module.padding_idx].zero_()
