"""Contrastive pretraining: pairs and views as documented, NT-Xent, a falling loss, exact resume,
an encoder-only export, DDP."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from ports import free_port
from pretrain_support import ddp_worker, tiny_config
from safetensors import safe_open

import protssl
from protssl.alphabet import ALPHABET
from protssl.embedding import pool_rows
from protssl.errors import InvalidInputError
from protssl.fasta import ProteinRecord, read_fasta
from protssl.pretrain import (
    CHECKPOINT_NAME,
    PretrainConfig,
    export_checkpoint,
    load_corpus,
    pretrain,
)
from protssl.pretrain.contrastive import (
    MIN_VIEW_FRACTION,
    ContrastiveModel,
    contrastive_batches,
    contrastive_losses,
    nt_xent,
    pool_pairs,
    seeded_head,
    view_crop,
)
from protssl.pretrain.data import DataPosition
from protssl.pretrain.state import initial_encoder, load_checkpoint

CLUSTERS = "pretrain/pretrain_corpus_clusters30.tsv"


def _config(corpus: Path, run_dir: Path, **changes: object) -> PretrainConfig:
    """The tiny recipe on the contrastive objective (tokens budget of 4+ pairs of full crops)."""
    return tiny_config(corpus, run_dir, **({"objective": "contrastive"} | changes))


def _text(row: torch.Tensor) -> str:
    """The residues of one token row (BOS, EOS and pads dropped)."""
    special = {ALPHABET.cls_idx, ALPHABET.eos_idx, ALPHABET.padding_idx}
    return "".join(ALPHABET.all_toks[int(t)] for t in row if int(t) not in special)


def test_views_are_windows_of_half_to_all_of_the_crop() -> None:
    rng = np.random.default_rng(0)
    sequence = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=300))
    for crop in (40, 126, 1022):
        full = min(len(sequence), crop)
        lengths = set()
        for _ in range(200):
            view = view_crop(sequence, crop, rng)
            assert view in sequence
            assert math.ceil(full * MIN_VIEW_FRACTION) <= len(view) <= full
            lengths.add(len(view))
        assert len(lengths) > 10


def test_cluster_positives_share_the_anchors_cluster_and_anchors_never_share_one(
    tmp_path: Path, sample_fasta: Path, shared_file: Callable[..., Path]
) -> None:
    clusters = shared_file(CLUSTERS)
    config = _config(sample_fasta, tmp_path, cluster_tsv=clusters, cluster_positive_rate=1.0)
    corpus = load_corpus(sample_fasta, val_fraction=config.val_fraction, cluster_tsv=clusters)
    assert corpus.clusters is not None
    cluster_of = {m: c for c, members in enumerate(corpus.clusters) for m in members}
    pairs = pool_pairs(corpus, config, 0, 0)
    assert pairs is not None and len(pairs) == config.pool_sequences
    anchors = [cluster_of[a] for a, _ in pairs]
    assert len(set(anchors)) == len(anchors)  # one anchor per cluster in the pool, so per batch
    assert all(cluster_of[a] == cluster_of[b] for a, b in pairs)
    multi = [(a, b) for a, b in pairs if len(corpus.clusters[cluster_of[a]]) > 1]
    assert multi and all(a != b for a, b in multi)  # rate 1: always another member
    never = _config(sample_fasta, tmp_path, cluster_tsv=clusters, cluster_positive_rate=0.0)
    same = pool_pairs(corpus, never, 0, 0)
    assert same is not None and all(a == b for a, b in same)  # rate 0: always a second view
    half = pool_pairs(corpus, _config(sample_fasta, tmp_path, cluster_tsv=clusters), 0, 0)
    assert half is not None
    others = [a != b for a, b in half if len(corpus.clusters[cluster_of[a]]) > 1]
    assert 0.3 < sum(others) / len(others) < 0.7
    pool, visited = 0, []
    while (drawn := pool_pairs(corpus, config, 0, pool)) is not None:
        visited += [cluster_of[a] for a, _ in drawn]
        pool += 1
    assert sorted(visited) == list(range(len(corpus.clusters)))  # an epoch: each cluster once


def test_training_records_the_cluster_tsv_lacks_are_clusters_of_their_own(
    tmp_path: Path, sample_fasta: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TSV that lists some of the corpus (one cluster of two here) keeps every training record,
    the rest one per cluster, with a warning (they were dropped from training, silently); a TSV
    that is not there is one line."""
    records = list(read_fasta(sample_fasta))[:60]
    small = tmp_path / "small.fasta"
    small.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records))
    whole = load_corpus(small, val_fraction=0.1)
    partial = tmp_path / "one.tsv"
    partial.write_text(
        f"{whole.train_ids[0]}\t{whole.train_ids[0]}\n{whole.train_ids[0]}\t{whole.train_ids[1]}\n"
    )
    with caplog.at_level("WARNING", logger="protssl.pretrain.data"):
        corpus = load_corpus(small, val_fraction=0.1, cluster_tsv=partial)
    assert corpus.clusters is not None and corpus.clusters[0] == (0, 1)
    assert sorted(i for c in corpus.clusters for i in c) == list(range(len(whole.train_ids)))
    left = len(whole.train_ids) - 2
    assert f"{left} of {len(whole.train_ids)} training records are in no cluster" in caplog.text
    with pytest.raises(InvalidInputError, match=r"missing\.tsv: cannot read the cluster TSV"):
        load_corpus(small, val_fraction=0.1, cluster_tsv=tmp_path / "missing.tsv")


def test_cluster_min_members_draws_only_homologue_positives(
    tmp_path: Path, sample_fasta: Path, shared_file: Callable[..., Path]
) -> None:
    clusters = shared_file(CLUSTERS)
    corpus = load_corpus(sample_fasta, val_fraction=0.02, cluster_tsv=clusters)
    assert corpus.clusters is not None
    config = _config(
        sample_fasta,
        tmp_path,
        cluster_tsv=clusters,
        cluster_positive_rate=1.0,
        cluster_min_members=2,
        pool_sequences=16,
    )
    cluster_of = {m: c for c, members in enumerate(corpus.clusters) for m in members}
    multi = sorted(c for c, members in enumerate(corpus.clusters) if len(members) > 1)
    assert 0 < len(multi) < len(corpus.clusters)
    pool, visited = 0, []
    while (drawn := pool_pairs(corpus, config, 0, pool)) is not None:
        assert all(a != b and cluster_of[a] == cluster_of[b] for a, b in drawn)
        visited += [cluster_of[a] for a, _ in drawn]
        pool += 1
    assert sorted(visited) == multi  # an epoch: each cluster of 2 or more members once
    too_many = _config(sample_fasta, tmp_path, cluster_tsv=clusters, cluster_min_members=10_000)
    with pytest.raises(InvalidInputError, match="cluster_min_members"):
        pool_pairs(corpus, too_many, 0, 0)
    with pytest.raises(InvalidInputError, match="contrastive objectives with cluster_tsv"):
        _config(sample_fasta, tmp_path, cluster_min_members=2)


def test_pair_batches_hold_anchor_views_then_their_positives_within_the_budget(
    tmp_path: Path, sample_fasta: Path
) -> None:
    config = _config(sample_fasta, tmp_path)
    corpus = load_corpus(sample_fasta, val_fraction=config.val_fraction)
    pairs = pool_pairs(corpus, config, 0, 0)
    assert pairs is not None and all(a == b for a, b in pairs)  # no clusters: the same protein
    stream = contrastive_batches(corpus, config, DataPosition())
    for _ in range(5):
        batch, _position = next(stream)
        assert batch.shape[0] % 2 == 0 and batch.numel() <= config.max_tokens
        n = batch.shape[0] // 2
        assert n >= 2
        for i in range(n):
            first, second = _text(batch[i]), _text(batch[n + i])
            assert any(first in corpus.train[a] and second in corpus.train[b] for a, b in pairs)
            assert len(first) <= config.crop_residues and len(second) <= config.crop_residues


def test_nt_xent_rewards_matching_pairs_and_pooling_is_embeds_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(8, 16, generator=generator)
    matched = nt_xent(first, first + 0.01 * torch.randn(8, 16, generator=generator), 0.1)
    shuffled = nt_xent(first, first[torch.randperm(8, generator=generator)], 0.1)
    assert float(matched) < 0.01 < float(shuffled)
    random = nt_xent(first, torch.randn(8, 16, generator=generator), 1e3)
    assert float(random) == pytest.approx(math.log(15), abs=1e-3)  # chance: 1 of 2N - 1
    tokens = torch.tensor([[0, 5, 6, 7, 2, 1], [0, 8, 9, 2, 1, 1]])
    hidden = torch.randn(2, 6, 4, generator=generator)
    encoder, _ = initial_encoder(_config(Path("x.fasta"), Path("run"), preset="protssl-tiny"))
    model = ContrastiveModel(encoder, seeded_head(64, 0))
    assert np.allclose(pool_rows(hidden, tokens, "mean")[0], hidden[0, 1:4].mean(0).numpy())
    with torch.no_grad():
        contrast, mlm, n = contrastive_losses(
            model, torch.cat([tokens, tokens]), None, temperature=0.1
        )
    assert mlm is None and n == 0 and float(contrast) < math.log(3)


def test_a_tiny_run_lowers_its_contrastive_loss(tmp_path: Path, sample_fasta: Path) -> None:
    small = tmp_path / "small.fasta"  # 80 real records: the run makes several passes over them
    small.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in _first_records(sample_fasta, 80)))
    config = _config(small, tmp_path / "run", steps=30, val_every=30, lr=3e-4, val_fraction=0.1)
    corpus = load_corpus(small, val_fraction=config.val_fraction)
    stream = contrastive_batches(corpus, config, DataPosition())
    fixed = [next(stream)[0] for _ in range(8)]  # the first pass's views

    def loss(model: ContrastiveModel) -> float:
        with torch.no_grad():
            return sum(
                float(contrastive_losses(model, b, None, temperature=config.temperature)[0])
                for b in fixed
            )

    encoder, _ = initial_encoder(config)
    before = loss(ContrastiveModel(encoder, seeded_head(64, config.seed)))
    result = pretrain(config, progress=False)
    head = seeded_head(64, 1)
    head.load_state_dict(load_checkpoint(config.run_dir / CHECKPOINT_NAME)["projection_head"])
    after = loss(ContrastiveModel(result.encoder, head))
    assert after < 0.85 * before


def _first_records(path: Path, count: int) -> list[ProteinRecord]:
    """The first `count` records of a FASTA file."""
    return list(itertools.islice(read_fasta(path), count))


def test_mlm_and_contrastive_resumes_bit_identically_and_exports_only_the_encoder(
    tmp_path: Path, sample_fasta: Path, shared_file: Callable[..., Path]
) -> None:
    changes = {"objective": "mlm+contrastive", "cluster_tsv": shared_file(CLUSTERS), "steps": 8}
    whole = pretrain(_config(sample_fasta, tmp_path / "whole", **changes), progress=False)
    split = _config(sample_fasta, tmp_path / "split", **changes)
    first = pretrain(split, stop_after=3, progress=False)
    second = pretrain(split, resume=True, progress=False)
    assert first.losses + second.losses == whole.losses
    assert second.tokens_seen == whole.tokens_seen
    for key, value in whole.encoder.state_dict().items():
        assert torch.equal(value, second.encoder.state_dict()[key]), key
    heads = [
        load_checkpoint(d / CHECKPOINT_NAME)["projection_head"]
        for d in (tmp_path / "whole", tmp_path / "split")
    ]
    assert all(torch.equal(v, heads[1][k]) for k, v in heads[0].items())
    rows = (tmp_path / "whole" / "log.csv").read_text().splitlines()
    assert rows[0].endswith("mlm_loss,contrastive_loss") and rows[-1].split(",")[-2]

    model_dir = tmp_path / "whole" / "model"
    loaded = protssl.load_model(model_dir)
    assert loaded.card.training is not None
    assert loaded.card.training["recipe"]["objective"] == "mlm+contrastive"
    with safe_open(str(next(model_dir.glob("*.safetensors"))), "pt") as weights:
        names = list(weights.keys())
    assert names and not any("head.net" in name or name.startswith("head.") for name in names)
    assert set(names) <= set(whole.encoder.state_dict())
    stopped = export_checkpoint(tmp_path / "split", tmp_path / "exported")  # pretrain-export
    assert protssl.load_model(stopped).sha256 == loaded.sha256


@pytest.mark.slow
def test_two_process_contrastive_ddp_ends_with_identical_weights(
    tmp_path: Path, sample_fasta: Path
) -> None:
    changes = {"objective": "contrastive", "steps": 3, "val_every": 3}
    mp.spawn(ddp_worker, args=(free_port(), str(sample_fasta), str(tmp_path), changes), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 3
