"""Quality of a pretrained model: held-out perplexity vs unigram, few-shot 1-NN vs composition 1-NN.

- Perplexity: masked-LM loss over every residue of the corpus's held-out split (records whose id
  hashes into the validation fraction, as in training), cut into abutting windows of the training
  crop; against the unigram baseline (residue frequencies of the training split) on the same records.
- Function: leave-one-out 1-NN (cosine) over mean-pooled embeddings of every layer, on a
  class-balanced subset of the EC split (classes by first EC number with at least 5 members, up
  to 5 each) and of the IS transposase families (up to 40 per family). A hit is a neighbour that
  shares a label (features centred, or z-scored with `--normalise zscore`). The floor is the same
  1-NN over amino-acid + dipeptide composition vectors; the model-minus-floor difference gets a
  paired 95% bootstrap interval (same records, 2,000 draws). Under `segments`, the same for
  `segments` pooling, with a second floor: composition of the same stretches.

The last line printed is one JSON object. `--update-card` merges the figures into the model card's
`training` section as `quality`, with `recommended_layer` (the layer whose mean-pooled vectors did
best on both tasks together), and rewrites nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from protssl.analysis.data import balanced
from protssl.analysis.information import measure_information
from protssl.checkpoint import DEFAULT_MODEL_DIR, load_model, update_card_training
from protssl.evaluation import composition_features, nn1_hits, segment_composition_features
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.info import describe
from protssl.model import ProteinEncoder
from protssl.pretrain.data import load_corpus
from protssl.pretrain.probe import pooled_layer_embeddings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _shown(path: Path) -> str:
    """A model folder as the card records it: relative to the repository when inside it."""
    root = Path(__file__).resolve().parents[1]
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def paired_ci(model: np.ndarray, floor: np.ndarray, draws: int = 2000) -> list[float]:
    """95% bootstrap interval of mean(model hit - floor hit) over the same records (seeded)."""
    diff = model.astype(np.float64) - floor
    rng = np.random.default_rng(0)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(draws)]
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def _scores(
    embeddings: np.ndarray,
    anchors: dict[str, np.ndarray],
    labels: list[set[str]],
    normalise: str,
) -> dict[str, object]:
    """1-NN per layer of one pooling, and the last and best layers against each anchor (CI95)."""
    hits = [nn1_hits(layer, labels, normalise) for layer in embeddings]
    per_layer = {str(k): round(float(h.mean()), 4) for k, h in enumerate(hits)}
    best = max(per_layer, key=lambda k: per_layer[k])
    out: dict[str, object] = {
        "nn1_by_layer": per_layer,
        "best_layer": int(best),
        "nn1_best_layer": per_layer[best],
        "nn1_last_layer": per_layer[str(len(embeddings) - 1)],
    }
    for name, anchor in anchors.items():
        out[f"last_minus_{name}_ci95"] = paired_ci(hits[-1], anchor)
        out[f"best_minus_{name}_ci95"] = paired_ci(hits[int(best)], anchor)
    return out


def task(
    name: str,
    records: list[ProteinRecord],
    encoder: ProteinEncoder,
    dtype: torch.dtype,
    normalise: str,
) -> dict[str, object]:
    """Mean pooling against whole-protein composition (the top-level figures, as the card keeps
    them), and `segments` pooling against it and against composition of the same stretches."""
    labels = [set(r.labels) for r in records]
    sequences = [r.sequence for r in records]
    pooled = pooled_layer_embeddings(
        encoder, sequences, poolings=("mean", "segments"), dtype=dtype, desc=name
    )
    comp = nn1_hits(composition_features(sequences), labels, normalise)
    comp_segments = nn1_hits(segment_composition_features(sequences), labels, normalise)
    return {
        "records": len(records),
        "classes": len({r.labels[0] for r in records}),
        **_scores(pooled["mean"], {"composition": comp}, labels, normalise),
        "nn1_composition": round(float(comp.mean()), 4),
        "segments": {
            **_scores(
                pooled["segments"],
                {"composition": comp, "composition_segments": comp_segments},
                labels,
                normalise,
            ),
            "nn1_composition_segments": round(float(comp_segments.mean()), 4),
        },
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder")
    parser.add_argument("--corpus", type=Path, default=SHARED / "pretrain/pretrain_corpus.fasta")
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--window", type=int, default=None, help="default: the card's crop")
    parser.add_argument("--val-max-records", type=int, default=None, help="default: all")
    parser.add_argument("--ec-per-class", type=int, default=5)
    parser.add_argument("--is-per-family", type=int, default=40)
    parser.add_argument(
        "--normalise",
        choices=("centre", "zscore"),
        default="centre",
        help="features before the cosine, for model and composition alike (the card: centre)",
    )
    parser.add_argument("--skip-perplexity", action="store_true")
    parser.add_argument("--update-card", action="store_true", help="write figures into the card")
    args = parser.parse_args()

    started = time.perf_counter()
    model = load_model(args.model)
    encoder, dtype = model.encoder, model.dtype
    training = dict(model.card.training or {})
    window = args.window or int(training.get("recipe", {}).get("crop_residues", 1022))
    result: dict[str, object] = {
        "model": _shown(args.model),
        "sha256": model.sha256[:16],
        "normalise": args.normalise,
    }
    if not args.skip_perplexity:
        corpus = load_corpus(args.corpus, val_fraction=args.val_fraction)
        info = measure_information(
            encoder,
            corpus.train,
            corpus.val[: args.val_max_records],
            window_residues=window,
            dtype=dtype,
            max_tokens=8192,
        )
        result.update(
            val_records=info.records,
            val_residues=info.residues,
            val_perplexity=round(info.perplexity, 3),
            unigram_val_perplexity=round(info.unigram_perplexity, 3),
        )
    policy = FastaPolicy(on_invalid="replace", on_duplicate="skip")
    ec_records = list(read_fasta(SHARED / "ec/clean_split10.fasta", policy=policy))
    ec = balanced(ec_records, args.ec_per_class, 5)
    result["ec_split10"] = task("EC split10", ec, encoder, dtype, args.normalise)
    families = balanced(
        list(read_fasta(SHARED / "families/prokka_IS_transposase_families.fasta", policy=policy)),
        args.is_per_family,
        2,
    )
    result["is_families"] = task("IS families", families, encoder, dtype, args.normalise)
    votes = [result["ec_split10"]["nn1_by_layer"], result["is_families"]["nn1_by_layer"]]  # type: ignore[index]
    mean_by_layer = {k: (votes[0][k] + votes[1][k]) / 2 for k in votes[0]}
    result["recommended_layer"] = int(max(mean_by_layer, key=lambda k: mean_by_layer[k]))
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.update_card:
        update_card_training(
            args.model, {"quality": result, "recommended_layer": result["recommended_layer"]}
        )
    result["machine"] = describe()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
