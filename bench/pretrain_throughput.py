"""Training throughput: protssl's MLM training step against fair-esm's `ESM2` trained the same way.

Both models have the same shape and the same initial weights, see the same real batch (8 crops of
510 residues from the corpus sample, 8 x 512 tokens), the same ESM-2 masking (15%, 80/10/10) and
AdamW (betas 0.9/0.98, weight decay 0.01, grad clipping 1.0). fair-esm runs as its module is
written, in fp32, with logits for every position. protssl runs as `protssl pretrain` does by
default: bf16 autocast where the CPU/GPU has it, SDPA attention, the LM head on the selected
positions only. Steps alternate in rounds so both see the same machine load; tokens/s is from the
median step time. MFU is protssl's model FLOPs (6 x forward matmul FLOPs per token) over this
device's bf16 (or fp32) matmul peak measured in the same run. `--device cuda` runs both on the
GPU (use a bigger `--rows` there). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import esm
import torch
import torch.nn.functional as F
from tqdm import tqdm

from protssl.alphabet import ALPHABET, tokenize
from protssl.checkpoint import fair_esm_state_dict
from protssl.fasta import read_fasta
from protssl.info import describe
from protssl.model import PRESETS, ProteinEncoder, init_weights, resolve_dtype
from protssl.pretrain.objective import mask_tokens, mlm_loss_sum

DEFAULT_FASTA = (
    Path(__file__).resolve().parents[2] / "shared/data/pretrain/pretrain_corpus_sample2k.fasta"
)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings hold it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 2.0) -> float:
    """Best FLOP/s of a square matmul in `dtype` on `device` over a short loop."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.matmul(a, b)
    synchronize(device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def real_batch(fasta: Path, rows: int, length: int) -> torch.Tensor:
    """(rows, length + 2) tokens: the first `rows` records of at least `length` residues, cropped."""
    sequences = [r.sequence[:length] for r in read_fasta(fasta) if len(r) >= length][:rows]
    tokens = torch.full((rows, length + 2), ALPHABET.padding_idx)
    tokens[:, 0] = ALPHABET.cls_idx
    tokens[:, -1] = ALPHABET.eos_idx
    for row, sequence in enumerate(sequences):
        tokens[row, 1:-1] = torch.from_numpy(tokenize(sequence))
    return tokens


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="esm2-8m", choices=sorted(PRESETS))
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=510, help="residues per row")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="protssl's autocast dtype; float32 measures a CPU without bf16 here",
    )
    args = parser.parse_args()

    config = PRESETS[args.preset]
    tokens = real_batch(args.fasta, args.rows, args.length)
    n_tokens = tokens.numel()
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    ours = ProteinEncoder(config)
    init_weights(ours)
    ref = esm.model.esm2.ESM2(
        num_layers=config.num_layers,
        embed_dim=config.embed_dim,
        attention_heads=config.attention_heads,
        alphabet=ALPHABET,
        token_dropout=config.token_dropout,
    )
    missing, _ = ref.load_state_dict(fair_esm_state_dict(ours), strict=False)
    assert all(k.startswith("contact_head.") for k in missing), missing
    ours.to(device)
    ref.to(device)
    ours_opt, ref_opt = adamw(ours), adamw(ref)
    generator = torch.Generator().manual_seed(0)

    def ours_step() -> None:
        inputs, targets = mask_tokens(tokens, mask_prob=0.15, generator=generator)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss_sum, n = mlm_loss_sum(ours, inputs, targets)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)

    def ref_step() -> None:
        inputs, targets = mask_tokens(tokens, mask_prob=0.15, generator=generator)
        logits = ref(inputs.to(device))["logits"]
        loss = F.cross_entropy(
            logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    steps: dict[str, Callable[[], None]] = {"ours": ours_step, "ref": ref_step}
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for step in steps.values():  # warm-up
        step()
        synchronize(device)
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for name, step in steps.items():
            for _ in range(args.steps_per_round):
                start = time.perf_counter()
                step()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    ours_tps = n_tokens / statistics.median(times["ours"])
    ref_tps = n_tokens / statistics.median(times["ref"])
    peak = matmul_peak(dtype, device)
    train_flops_per_token = 3 * config.flops_per_token(tokens.shape[1])
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": list(tokens.shape),
        "ours_dtype": str(dtype).removeprefix("torch."),
        "ref_dtype": "float32",
        "threads": torch.get_num_threads(),
        "ours_tok_per_s": round(ours_tps),
        "ref_tok_per_s": round(ref_tps),
        "ratio": round(ours_tps / ref_tps, 2),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "mfu": round(ours_tps * train_flops_per_token / peak, 3),
    }
    result["machine"] = describe()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
