"""Embedding throughput: protssl's `embed` path against fair-esm's `esm-extract` path and HF EsmModel.

All three run the same weights on the same records in one process, one after another. fair-esm runs
as `esm-extract` does (FastaBatchedDataset, get_batch_indices(4096), fp32 ESM2, mean over residues;
it truncates at 1022 residues). transformers' EsmModel runs with SDPA in bf16 where the CPU has it.
Also measured in the same run: this CPU's matmul peak (fp32 and bf16), to report model FLOP
utilisation. Cosines compare protssl's mean embeddings with fair-esm's on records both embed whole.
Residues/s count what each path embeds: all residues for protssl (records past the window go through
overlapping windows, so it runs more tokens: `ours_window_res_per_s` counts those), the residues
left after truncation at 1022 for the other two. All three run `--repeats` interleaved passes and
report their best; their first passes are reported too (`ref_first_res_per_s`,
`ours_first_res_per_s`, `hf_first_res_per_s`), since a first pass meets most batch shapes for the
first time.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import esm
import numpy as np
import torch
from tqdm import tqdm

from protssl.batching import plan_windows
from protssl.checkpoint import fair_esm_state_dict, load_model
from protssl.dtypes import DTYPE_NAMES
from protssl.embedding import EmbedConfig, embed_records
from protssl.fasta import read_fasta
from protssl.info import describe
from protssl.model import PRESETS, ModelConfig

DEFAULT_FASTA = (
    Path(__file__).resolve().parents[2] / "shared/data/pretrain/pretrain_corpus_sample2k.fasta"
)


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of a square matmul in `dtype` over a short loop."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def fair_esm_model(config: ModelConfig, state: dict[str, torch.Tensor]) -> esm.model.esm2.ESM2:
    model = esm.model.esm2.ESM2(
        num_layers=config.num_layers,
        embed_dim=config.embed_dim,
        attention_heads=config.attention_heads,
        alphabet=esm.data.Alphabet.from_architecture("ESM-1b"),
        token_dropout=config.token_dropout,
    )
    model.load_state_dict(state, strict=False)
    return model.eval()


def run_fair_esm(
    model: esm.model.esm2.ESM2, fasta: Path, ids: set[str]
) -> tuple[dict[str, np.ndarray], float, int]:
    """esm-extract's loop: returns mean embeddings, seconds, residues embedded (after its truncation)."""
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    dataset = esm.data.FastaBatchedDataset.from_file(str(fasta))
    keep = [i for i, label in enumerate(dataset.sequence_labels) if label.split()[0] in ids]
    dataset = esm.data.FastaBatchedDataset(
        [dataset.sequence_labels[i] for i in keep], [dataset.sequence_strs[i] for i in keep]
    )
    batches = dataset.get_batch_indices(4096, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        dataset,
        collate_fn=alphabet.get_batch_converter(truncation_seq_length=1022),
        batch_sampler=batches,
    )
    layer = model.num_layers
    out: dict[str, np.ndarray] = {}
    residues = 0
    start = time.perf_counter()
    with torch.no_grad():
        for labels, strs, toks in tqdm(loader, desc="fair-esm", leave=False):
            result = model(toks, repr_layers=[layer], return_contacts=False)
            reps = result["representations"][layer]
            for row, (label, seq) in enumerate(zip(labels, strs, strict=True)):
                length = min(len(seq), 1022)
                residues += length
                out[label.split()[0]] = reps[row, 1 : length + 1].mean(0).numpy()
    return out, time.perf_counter() - start, residues


def hf_state_dict(fair_state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """fair-esm ESM2 names → transformers EsmModel names."""
    out = {"embeddings.word_embeddings.weight": fair_state["embed_tokens.weight"]}
    for i in range(num_layers):
        src, dst = f"layers.{i}", f"encoder.layer.{i}"
        for kind in ("weight", "bias"):
            for ours, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
                out[f"{dst}.attention.self.{theirs}.{kind}"] = fair_state[
                    f"{src}.self_attn.{ours}.{kind}"
                ]
            out[f"{dst}.attention.output.dense.{kind}"] = fair_state[
                f"{src}.self_attn.out_proj.{kind}"
            ]
            out[f"{dst}.attention.LayerNorm.{kind}"] = fair_state[
                f"{src}.self_attn_layer_norm.{kind}"
            ]
            out[f"{dst}.intermediate.dense.{kind}"] = fair_state[f"{src}.fc1.{kind}"]
            out[f"{dst}.output.dense.{kind}"] = fair_state[f"{src}.fc2.{kind}"]
            out[f"{dst}.LayerNorm.{kind}"] = fair_state[f"{src}.final_layer_norm.{kind}"]
    for kind in ("weight", "bias"):
        out[f"encoder.emb_layer_norm_after.{kind}"] = fair_state[f"emb_layer_norm_after.{kind}"]
    return out


def run_hf(
    config: ModelConfig, fair_state: dict[str, torch.Tensor], records: list, dtype: torch.dtype
) -> tuple[dict[str, np.ndarray], float, int]:
    """transformers EsmModel (SDPA) over length-sorted batches of <= 4096 tokens, truncated at 1022."""
    from transformers import EsmConfig, EsmModel

    settings: dict[str, Any] = dict(
        vocab_size=33,
        hidden_size=config.embed_dim,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.attention_heads,
        intermediate_size=config.ffn_dim,
        position_embedding_type="rotary",
        token_dropout=config.token_dropout,
        mask_token_id=32,
        pad_token_id=1,
        emb_layer_norm_before=False,
        max_position_embeddings=1026,
        layer_norm_eps=config.layer_norm_eps,
        attn_implementation="sdpa",
    )
    hf_config = EsmConfig(**settings)
    model = EsmModel(hf_config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(
        hf_state_dict(fair_state, config.num_layers), strict=False
    )
    if unexpected or [
        k
        for k in missing
        if not k.endswith(("inv_freq", "position_ids")) and "contact_head" not in k
    ]:
        raise RuntimeError(
            f"HF weight mapping incomplete: missing={missing} unexpected={unexpected}"
        )
    model = model.to(dtype).eval()  # type: ignore[arg-type]  # transformers types `to` as unbound
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    converter = alphabet.get_batch_converter(truncation_seq_length=1022)
    order = sorted(records, key=lambda r: len(r.sequence), reverse=True)
    batches: list[list[Any]] = []
    batch: list[Any] = []
    for record in order:
        width = min(len((batch or [record])[0].sequence), 1022) + 2
        if batch and (len(batch) + 1) * width > 4096:
            batches.append(batch)
            batch = []
        batch.append(record)
    batches.append(batch)
    out: dict[str, np.ndarray] = {}
    residues = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(batches, desc="transformers", leave=False):
            _, _, toks = converter([(r.id, r.sequence) for r in batch])
            hidden = model(
                input_ids=toks, attention_mask=toks.ne(alphabet.padding_idx)
            ).last_hidden_state
            for row, record in enumerate(batch):
                length = min(len(record.sequence), 1022)
                residues += length
                out[record.id] = hidden[row, 1 : length + 1].float().mean(0).numpy()
    return out, time.perf_counter() - start, residues


def cosines(a: dict[str, np.ndarray], b: dict[str, np.ndarray], ids: list[str]) -> np.ndarray:
    x = np.stack([a[i] for i in ids]).astype(np.float64)
    y = np.stack([b[i] for i in ids]).astype(np.float64)
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="esm2-8m", choices=sorted(PRESETS))
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--limit", type=int, default=400, help="first N records (0 = all)")
    parser.add_argument(
        "--model", default=None, help="weights to load instead of the preset's random ones"
    )
    parser.add_argument("--skip-hf", action="store_true", help="leave out the transformers anchor")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="protssl's (and transformers') dtype; float32 measures a CPU without bf16 here; int8 "
        "runs protssl's linears in int8 (lossy: min_cosine is against fair-esm's float32)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="interleaved runs of fair-esm, protssl and transformers; best of each",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    records = list(read_fasta(args.fasta))
    if args.limit:
        records = records[: args.limit]
    ids = [r.id for r in records]
    ours_model = load_model(args.model or args.preset, dtype=args.dtype)
    config = ours_model.encoder.config
    fair_state = fair_esm_state_dict(load_model(args.model or args.preset, dtype="float32").encoder)
    print(
        f"{len(records)} records, {sum(len(r) for r in records)} residues; model {ours_model.name} "
        f"({config.num_layers}L/{config.embed_dim}d/{config.attention_heads}h), protssl dtype {ours_model.dtype_name}",
        file=sys.stderr,
    )

    peak_fp32 = matmul_peak(torch.float32)
    peak_bf16 = matmul_peak(torch.bfloat16)

    reference = fair_esm_model(config, fair_state)
    run_fair_esm(reference, args.fasta, set(ids[:8]))  # warm-up
    list(embed_records(records[:8], ours_model))  # warm-up
    if not args.skip_hf:
        run_hf(config, fair_state, records[:8], ours_model.dtype)  # warm-up
    ours_residues = sum(len(r) for r in records)
    ref_runs: list[float] = []
    ours_runs: list[float] = []
    hf_runs: list[float] = []
    for _ in range(args.repeats):  # interleaved, best of each: fair on a shared machine
        ref_vectors, seconds, ref_residues = run_fair_esm(reference, args.fasta, set(ids))
        ref_runs.append(seconds)
        start = time.perf_counter()
        ours = {e.id: e.vector for e in embed_records(records, ours_model, EmbedConfig())}
        ours_runs.append(time.perf_counter() - start)
        if not args.skip_hf:
            hf_vectors, seconds, hf_residues = run_hf(config, fair_state, records, ours_model.dtype)
            hf_runs.append(seconds)
    ref_seconds = min(ref_runs)
    ours_seconds = min(ours_runs)
    hf_seconds = min(hf_runs, default=float("inf"))

    hf_res_per_s = None
    if not args.skip_hf:
        hf_res_per_s = hf_residues / hf_seconds
        hf_cos = cosines(hf_vectors, ref_vectors, [r.id for r in records if len(r) <= 1022])
        print(f"transformers vs fair-esm: min cosine {hf_cos.min():.5f}", file=sys.stderr)

    window = config.max_residues
    overlap = EmbedConfig().window.overlap_in(window)
    ours_tokens = sum(e - s for r in records for s, e in plan_windows(len(r), window, overlap))
    whole = [r.id for r in records if len(r) <= 1022]
    cos = cosines(ours, ref_vectors, whole)
    flops = sum((len(r) + 2) * config.flops_per_token(len(r) + 2) for r in records)
    ours_flops = flops / ours_seconds
    peak = peak_bf16 if ours_model.dtype == torch.bfloat16 else peak_fp32
    result = {
        "preset": args.preset,
        "model": ours_model.name,
        "records": len(records),
        "repeats": args.repeats,
        "compared_records": len(whole),
        "dtype": ours_model.dtype_name,
        "ours_res_per_s": round(ours_residues / ours_seconds, 1),
        "ref_res_per_s": round(ref_residues / ref_seconds, 1),
        "ratio": round((ours_residues / ours_seconds) / (ref_residues / ref_seconds), 3),
        "hf_res_per_s": round(hf_res_per_s, 1) if hf_res_per_s else None,
        "ratio_hf": round((ours_residues / ours_seconds) / hf_res_per_s, 3)
        if hf_res_per_s
        else None,
        "ours_window_res_per_s": round(ours_tokens / ours_seconds, 1),
        # the first pass meets most batch shapes for the first time (kernels built on first use)
        "ref_first_res_per_s": round(ref_residues / ref_runs[0], 1),
        "ours_first_res_per_s": round(ours_residues / ours_runs[0], 1),
        "hf_first_res_per_s": round(hf_residues / hf_runs[0], 1) if hf_runs else None,
        "min_cosine": round(float(cos.min()), 6),
        "mean_cosine": round(float(cos.mean()), 6),
        "peak_fp32_gflops": round(peak_fp32 / 1e9, 1),
        "peak_bf16_gflops": round(peak_bf16 / 1e9, 1),
        "ours_gflops": round(ours_flops / 1e9, 1),
        # an int8 GEMM is not held to a float peak: with --dtype int8 only ours_gflops is reported
        "mfu": None if ours_model.int8 else round(ours_flops / peak, 4),
    }
    result["machine"] = describe()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
