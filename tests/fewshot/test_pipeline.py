"""Few-shot classifiers on a protssl model: layers embedded together, fitting, one classify path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from protssl.checkpoint import LoadedModel, load_model
from protssl.embedding import CacheStats, EmbedConfig, embed_records, embed_records_layers
from protssl.errors import CheckpointError, FastaFormatError, InvalidInputError
from protssl.fasta import ProteinRecord
from protssl.fewshot import (
    FewShotConfig,
    candidate_layers,
    classifier_embed_config,
    classify_records,
    embed_for_fewshot,
    fit_records,
    fit_residues,
    progress_residues,
    save_classifier,
)
from protssl.pooling import SEGMENTS
from protssl.store import Store, StoreConfig


def test_embedding_several_layers_matches_one_layer_at_a_time(
    windowed_model: LoadedModel, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    records = sorted(is_split[1], key=len)[-3:] + is_split[1][:3]  # the longest are windowed
    config = EmbedConfig(max_tokens=2048)
    together = {e[1].id: e for e in embed_records_layers(records, windowed_model, (1, -1), config)}
    for layer in (1, 3):
        for single in embed_records(
            records, windowed_model, EmbedConfig(layer=layer, max_tokens=2048)
        ):
            stacked = together[single.id][layer]
            np.testing.assert_allclose(stacked.vector, single.vector, rtol=1e-5, atol=1e-6)
            assert stacked.provenance.layer == layer
            assert stacked.provenance.windowed == single.provenance.windowed
    assert any(e[3].provenance.windowed for e in together.values())


def test_candidate_layers_spread_over_the_upper_two_thirds() -> None:
    assert candidate_layers(6) == (2, 3, 4, 5, 6)
    assert candidate_layers(33) == (11, 16, 22, 28, 33)
    assert candidate_layers(3) == (1, 2, 3)
    assert candidate_layers(1) == (1,)


def test_fit_and_classify_records_with_a_model(
    windowed_model: LoadedModel, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    support, query = is_split[0][:24], is_split[1][:6]
    classifier = fit_records(support, windowed_model, FewShotConfig(method="knn"))
    assert set(classifier.layer_scores) == {1, 2, 3}
    assert classifier.info == {
        "model_sha256": windowed_model.sha256,
        "model_name": "tiny",
        "pooling": "mean",
    }
    predictions = classify_records(classifier, query, windowed_model, top_k=2)
    vectors = embed_for_fewshot(query, windowed_model, (classifier.layer,))
    assert predictions == classifier.predict(vectors, [r.id for r in query], top_k=2)
    assert classify_records(classifier, [], windowed_model) == []
    with pytest.raises(InvalidInputError, match="needs mean pooling"):
        classify_records(classifier, query, windowed_model, embed_config=EmbedConfig(pooling="bos"))
    with pytest.raises(InvalidInputError, match="'P0' has no label"):
        fit_records([ProteinRecord("P0", "MKVL"), *support], windowed_model)


@pytest.mark.parametrize("method", ["knn", "hybrid"])
def test_progress_counts_every_residue_embedded_read_from_the_cache_and_aligned(
    method: str,
    tmp_path: Path,
    windowed_model: LoadedModel,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    """A bar over `progress_residues` ends at its total: cached vectors count (they stayed at 0%),
    a hybrid classifier's alignment searches count too (the bar stood still while they ran), and a
    long record's overlapping windows count once (the bar ran past its total)."""
    support = is_split[0][:24]
    query = sorted(is_split[1], key=len)[-2:] + is_split[1][:6]  # the longest are windowed
    residues = sum(len(r) for r in query)
    with Store(StoreConfig(url=f"sqlite:///{tmp_path / 'store.db'}")) as store:
        classifier = fit_records(support, windowed_model, FewShotConfig(method=method))  # type: ignore[arg-type]
        total = progress_residues(classifier, residues)
        assert total == residues * (2 if method == "hybrid" else 1)
        for _ in ("computed", "from the cache"):
            counted: list[int] = []
            classify_records(
                classifier, query, windowed_model, on_batch=counted.append, cache=store.embeddings
            )
            assert sum(counted) == total
        counted = []
        embed_for_fewshot(
            query, windowed_model, (1, 2), on_batch=counted.append, cache=store.embeddings
        )
        assert sum(counted) == residues  # a layer not cached yet: all computed, each counted once


@pytest.mark.parametrize(
    ("config", "aligned"),
    [
        (FewShotConfig(method="knn"), 0),
        (FewShotConfig(), 24),  # auto: hybrid, each support row aligned held out
        (FewShotConfig(method="hybrid", calibration_rows=5), 5),  # a sample of them
    ],
    ids=["knn", "auto", "hybrid-sampled"],
)
def test_a_fits_progress_ends_at_fit_residues(
    config: FewShotConfig,
    aligned: int,
    tmp_path: Path,
    windowed_model: LoadedModel,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    """A bar over `fit_residues` ends at its total: a hybrid fit's held-out alignments (the bar
    stood at 100% while they ran) count as they end, vectors from the cache count too."""
    support = is_split[0][:24]
    total = fit_residues(support, config)
    assert (total > sum(len(r) for r in support)) == (aligned > 0)
    with Store(StoreConfig(url=f"sqlite:///{tmp_path / 'store.db'}")) as store:
        for _ in ("computed", "from the cache"):
            counted: list[int] = []
            fit_records(
                support, windowed_model, config, on_batch=counted.append, cache=store.embeddings
            )
            assert sum(counted) == total
            assert len(counted) == len(support) + aligned


def test_a_fit_stopped_part_way_keeps_the_vectors_it_computed(
    tmp_path: Path,
    windowed_model: LoadedModel,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    """A fit's vectors (every candidate layer) are written to the cache per forward, not once per
    read-ahead group: a fit stopped part way (Ctrl-C, a gRPC deadline) lost them all, and its
    retry embedded everything again."""
    support = is_split[0][:24]
    config = FewShotConfig(method="knn")
    seen: list[int] = []

    def stop_after_half(residues: int) -> None:
        seen.append(residues)
        if len(seen) == 12:
            raise KeyboardInterrupt

    with Store(StoreConfig(url=f"sqlite:///{tmp_path / 'store.db'}")) as store:
        with pytest.raises(KeyboardInterrupt):
            fit_records(
                support, windowed_model, config, on_batch=stop_after_half, cache=store.embeddings
            )
        stats = CacheStats()
        fit_records(support, windowed_model, config, cache=store.embeddings, stats=stats)
    assert stats.cached >= 12 and stats.cached + stats.computed == 24, stats


def test_biopython_records_and_plain_sequences_fit_classify_and_save_as_records(
    windowed_model: LoadedModel,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    tmp_path: Path,
) -> None:
    support, query = is_split[0][:24], is_split[1][:4]
    theirs = [
        SeqRecord(
            Seq(r.sequence.lower()), id=r.id, description=f"{r.id} label={';'.join(r.labels)}"
        )
        for r in support
    ]
    config = FewShotConfig(method="knn")
    ours = fit_records(support, windowed_model, config)
    biopython = fit_records(theirs, windowed_model, config)
    assert (biopython.classes, biopython.layer_scores) == (ours.classes, ours.layer_scores)
    expected = classify_records(ours, query, windowed_model)
    assert classify_records(biopython, query, windowed_model) == expected
    as_strings = classify_records(ours, [r.sequence for r in query], windowed_model)
    assert [p.id for p in as_strings] == ["seq0", "seq1", "seq2", "seq3"]
    assert [p.labels for p in as_strings] == [p.labels for p in expected]
    with pytest.raises(FastaFormatError, match=r"record 'seq1' \(#2\) at position 2"):
        classify_records(ours, ["MKV", "M1KV"], windowed_model)
    with pytest.raises(InvalidInputError, match="not a sequence"):
        classify_records(ours, [query[0], 42], windowed_model)  # type: ignore[list-item]
    with Store(StoreConfig(url=f"sqlite:///{tmp_path / 'store.sqlite3'}")) as store:
        stored = save_classifier(store, "is", biopython, theirs)
    assert stored.examples == tuple((r.id, r.sequence, r.labels) for r in support)


def test_a_classifier_pools_as_the_models_card_recommends_unless_told(
    windowed_model: LoadedModel, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    assert classifier_embed_config(None, windowed_model).pooling == "mean"  # the card names none
    training = {**(windowed_model.card.training or {}), "recommended_pooling": "segments"}
    recommends = replace(windowed_model, card=replace(windowed_model.card, training=training))
    assert classifier_embed_config(None, recommends).pooling == "segments"
    assert classifier_embed_config("bos", recommends).pooling == "bos"
    with pytest.raises(InvalidInputError, match="pooled vectors"):
        classifier_embed_config("per-residue", recommends)
    support, query = is_split[0][:24], is_split[1][:6]
    classifier = fit_records(support, recommends, FewShotConfig(method="knn"))
    assert classifier.info["pooling"] == "segments"
    vectors = embed_for_fewshot(
        query, recommends, (classifier.layer,), EmbedConfig(pooling="segments")
    )
    assert vectors[classifier.layer].shape == (
        len(query),
        SEGMENTS * recommends.encoder.config.embed_dim,
    )
    assert classify_records(classifier, query, recommends) == classifier.predict(
        vectors, [r.id for r in query]
    )


def test_classify_records_checks_the_model_before_any_embedding(
    windowed_model: LoadedModel, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    support, query = is_split[0][:24], is_split[1][:6]
    classifier = fit_records(support, windowed_model, FewShotConfig(method="prototype"))
    asked: list[tuple[int, str]] = []

    def embed(records: Sequence[ProteinRecord], layer: int, pooling: str) -> np.ndarray:
        asked.append((layer, pooling))
        return embed_for_fewshot(records, windowed_model, (layer,))[layer]

    other = replace(windowed_model, card=replace(windowed_model.card, sha256="0" * 64))
    with pytest.raises(CheckpointError, match=r"fitted on model tiny \(.*\), not on tiny \(000"):
        classify_records(classifier, query, other, embed=embed)
    assert asked == []
    classifier.info.update(name="families", version=2)
    with pytest.raises(CheckpointError, match="classifier 'families' v2 was fitted on model"):
        classify_records(classifier, query, other, embed=embed)
    through = classify_records(classifier, query, windowed_model, embed=embed)
    assert asked == [(classifier.layer, "mean")]
    assert through == classify_records(classifier, query, windowed_model)


@pytest.mark.parametrize(
    ("keep", "message"),
    [("one class", "need at least 2 classes"), ("two examples", "at least 3 labelled")],
)
def test_a_support_no_classifier_can_come_of_is_refused_before_any_vector_is_computed(
    windowed_model: LoadedModel,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    keep: str,
    message: str,
) -> None:
    """One class, or two examples, was refused only by the fit, after every example's forward."""
    first = {r.labels[0]: r for r in reversed(is_split[0])}  # each class's first example
    one_class = [r for r in is_split[0] if r.labels == is_split[0][0].labels]
    support = one_class if keep == "one class" else list(first.values())[:2]
    assert len(support) >= 2
    batches: list[int] = []
    with pytest.raises(InvalidInputError, match=message):
        fit_records(support, windowed_model, on_batch=batches.append)
    assert batches == []


@pytest.mark.bf16_cpu  # bfloat16 without native CPU support is slow
def test_bf16_vectors_move_with_the_batch_a_record_shares_float32_ones_hardly(
    windowed_model_dir: Path, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    """Why `classify --server` and a local `classify` can differ in the 4th decimal on vectors
    neither cache holds (README, few-shot classifiers): a record's vector depends on the batch
    it is padded into, by float32 rounding (~1e-7) or, in bfloat16 (`--dtype auto` on a CPU with
    native bf16, and on CUDA), by ~1e-3 of a component; the server's batcher groups records
    otherwise than the local length-sorted batches."""
    records = is_split[1][:12]
    for dtype, tolerance in (("float32", 1e-5), ("bfloat16", 2e-2)):
        model = load_model(windowed_model_dir, dtype=dtype)
        together = embed_for_fewshot(records, model, (3,))[3]
        alone = np.concatenate([embed_for_fewshot([r], model, (3,))[3] for r in records])
        scale = np.abs(together).max()
        assert np.abs(alone - together).max() <= tolerance * scale, dtype
        cosine = (alone * together).sum(1) / np.linalg.norm(alone, axis=1)
        assert (cosine / np.linalg.norm(together, axis=1)).min() > 1 - 1e-4, dtype
        if dtype == "bfloat16":
            assert not np.array_equal(alone, together)  # not identical: padding moves them
