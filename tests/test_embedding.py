from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protssl.batching import WindowPolicy
from protssl.checkpoint import load_model
from protssl.embedding import CacheStats, EmbedConfig, embed_records, embed_records_layers
from protssl.errors import SequenceTooLongError
from protssl.fasta import ProteinRecord, read_fasta
from protssl.model import PRESETS
from protssl.pooling import SEGMENTS, segment_bounds
from protssl.store import Store, StoreConfig


def _records(sample_fasta: Path, n: int, max_len: int = 62) -> list[ProteinRecord]:
    return [r for r in read_fasta(sample_fasta) if len(r) <= max_len][:n]


def _by_id(records, model, config) -> dict[str, np.ndarray]:
    return {e.id: e.vector for e in embed_records(records, model, config)}


# int8 quantizes each forward's input with one scale for the batch: neighbours move a vector by
# int8 rounding, as bf16's do
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 3e-2), ("int8", 5e-2)])
def test_vector_does_not_depend_on_batch_composition(
    tiny_model_dir: Path, sample_fasta: Path, dtype: str, tolerance: float
) -> None:
    model = load_model(tiny_model_dir, dtype=dtype)
    records = _records(sample_fasta, 24)
    together = _by_id(records, model, EmbedConfig(max_tokens=2048))
    for record in records[::5]:
        alone = _by_id([record], model, EmbedConfig(max_tokens=64))[record.id]
        assert np.abs(alone - together[record.id]).max() <= tolerance
        other = together[record.id]
        cosine = alone @ other / np.linalg.norm(alone) / np.linalg.norm(other)
        assert cosine == pytest.approx(1.0, abs=1e-3)


def test_int8_vectors_of_the_shipped_model_are_float32_ones_to_int8_precision(
    sample_fasta: Path,
) -> None:
    """`--dtype int8` on real proteins with the shipped model: cosine to float32 >= 0.999, labelled int8."""
    records = list(read_fasta(sample_fasta))[:12]
    want = _by_id(records, load_model(None, dtype="float32"), EmbedConfig())
    got = list(embed_records(records, load_model(None, dtype="int8"), EmbedConfig()))
    assert {e.provenance.dtype for e in got} == {"int8"} and len(got) == len(records)
    for e in got:
        cosine = e.vector @ want[e.id] / np.linalg.norm(e.vector) / np.linalg.norm(want[e.id])
        assert 0.999 <= cosine < 1.0, e.id


def test_int8_forwards_side_by_side_give_the_one_thread_vectors_in_order(
    tiny_model_dir: Path, sample_fasta: Path
) -> None:
    """With two torch threads an int8 model runs two single-threaded forwards at once: the same
    vectors bit for bit as one thread, each record once and in the same order, the thread count kept."""
    import torch

    model = load_model(tiny_model_dir, dtype="int8")
    records = _records(sample_fasta, 40)
    config = EmbedConfig(max_tokens=256)  # several batches, so forwards overlap
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = list(embed_records(records, model, config))
        torch.set_num_threads(2)
        side_by_side = list(embed_records(records, model, config))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert [e.id for e in side_by_side] == [e.id for e in alone]
    assert sorted(e.id for e in alone) == sorted(r.id for r in records)
    for one, two in zip(alone, side_by_side, strict=True):
        assert np.array_equal(one.vector, two.vector), one.id


def test_poolings_agree_with_each_other(tiny_model_dir: Path, sample_fasta: Path) -> None:
    model = load_model(tiny_model_dir, dtype="float32")
    records = _records(sample_fasta, 8)
    mean = _by_id(records, model, EmbedConfig(pooling="mean"))
    per_residue = _by_id(records, model, EmbedConfig(pooling="per-residue"))
    bos = _by_id(records, model, EmbedConfig(pooling="bos"))
    for record in records:
        assert per_residue[record.id].shape == (len(record), 64)
        np.testing.assert_allclose(per_residue[record.id].mean(0), mean[record.id], atol=1e-5)
        assert not np.allclose(bos[record.id], mean[record.id])
    last = _by_id(records, model, EmbedConfig(layer=-1))
    two = _by_id(records, model, EmbedConfig(layer=2))
    first = _by_id(records, model, EmbedConfig(layer=1))
    rid = records[0].id
    np.testing.assert_array_equal(last[rid], two[rid])
    assert not np.allclose(first[rid], two[rid])


def test_long_sequence_is_windowed_and_stitched(tiny_model_dir: Path, sample_fasta: Path) -> None:
    model = load_model(tiny_model_dir, dtype="float32")
    long = next(r for r in read_fasta(sample_fasta) if 200 <= len(r) <= 400)
    config = EmbedConfig(pooling="per-residue", window=WindowPolicy(overlap=16))
    (embedding,) = embed_records([long], model, config)
    assert embedding.vector.shape == (len(long), 64)
    assert embedding.provenance.windowed and embedding.provenance.windows > 1
    head = ProteinRecord("head", long.sequence[:62])
    (first_window,) = embed_records([head], model, config)
    # residues covered by the first window only equal that window embedded alone
    np.testing.assert_allclose(embedding.vector[:40], first_window.vector[:40], atol=1e-5)
    with pytest.raises(SequenceTooLongError, match=long.id):
        list(embed_records([long], model, EmbedConfig(window=WindowPolicy(mode="refuse"))))


def test_segments_are_the_stretch_means_of_the_residue_states_batched_windowed_or_alone(
    tiny_model_dir: Path, sample_fasta: Path
) -> None:
    model = load_model(tiny_model_dir, dtype="float32")
    long = next(r for r in read_fasta(sample_fasta) if 200 <= len(r) <= 400)
    records = [*_records(sample_fasta, 12), ProteinRecord("tiny", "MK"), long]
    window = WindowPolicy(overlap=16)
    segments = _by_id(records, model, EmbedConfig(pooling="segments", window=window))
    per_residue = _by_id(records, model, EmbedConfig(pooling="per-residue", window=window))
    for record in records:
        assert segments[record.id].shape == (SEGMENTS * 64,)
        want = np.concatenate(
            [per_residue[record.id][a:b].mean(0) for a, b in segment_bounds(len(record))]
        )
        np.testing.assert_allclose(segments[record.id], want, atol=1e-5)
    alone = _by_id(
        [records[3]], model, EmbedConfig(pooling="segments", max_tokens=64, window=window)
    )
    np.testing.assert_allclose(alone[records[3].id], segments[records[3].id], atol=1e-5)
    by_layer = {
        e_by_layer[1].id: e_by_layer
        for e_by_layer in embed_records_layers(
            records, model, [1, 2], EmbedConfig(pooling="segments", window=window)
        )
    }
    for layer in (1, 2):
        single = _by_id(records, model, EmbedConfig(pooling="segments", layer=layer, window=window))
        for record in records:
            np.testing.assert_allclose(
                by_layer[record.id][layer].vector, single[record.id], atol=1e-6
            )


def test_longest_real_protein_embeds_through_windows(edge_cases: Path, service_model) -> None:
    """The windows (1,022 residues, as every ESM-2 size) are what is tested: the service tests' tiny
    model, of the same max_positions, makes the same ones in 3 s; esm2-8m took 40 s in float32 on
    AVX2 only."""
    longest = max(read_fasta(edge_cases / "long_proteins_gt5000aa.fasta"), key=len)
    assert len(longest) == 31921
    model = service_model
    assert model.encoder.config.max_positions == PRESETS["esm2-8m"].max_positions
    (embedding,) = embed_records([longest], model, EmbedConfig(pooling="per-residue"))
    assert embedding.vector.shape == (31921, model.encoder.config.embed_dim)
    assert np.isfinite(embedding.vector).all()
    assert embedding.provenance.windows >= 32


def test_the_cards_recommended_layer_is_the_default_in_process_and_over_grpc(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    import shutil

    from service_support import request_for, running_server, vectors

    import protssl
    from protssl.checkpoint import update_card_training

    records = _records(sample_fasta, 3)
    plain = load_model(tiny_model_dir, dtype="float32")
    assert plain.default_layer == 2  # no recommendation: the last layer
    recommended = tmp_path / "recommended"
    shutil.copytree(tiny_model_dir, recommended)
    update_card_training(recommended, {"recommended_layer": 1})
    model = load_model(recommended, dtype="float32")
    assert model.default_layer == 1 and model.resolve_layer(-1) == 2
    layer1 = _by_id(records, model, EmbedConfig(layer=1))
    default = list(embed_records(records, model, EmbedConfig()))
    assert {e.provenance.layer for e in default} == {1}
    for e in default:
        np.testing.assert_array_equal(e.vector, layer1[e.id])
    assert protssl.embed(records, model=model).provenance[0].layer == 1
    assert not np.allclose(
        layer1[records[0].id], _by_id(records, model, EmbedConfig(layer=-1))[records[0].id]
    )
    with running_server(model) as (_, address, _):
        import grpc

        from protssl._proto import protssl_pb2_grpc as pb_grpc

        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            unset = stub.Embed(request_for(records), timeout=60)
            last = stub.Embed(request_for(records, layer=-1), timeout=60)
    assert {e.provenance.layer for e in unset.embeddings} == {1}
    assert {e.provenance.layer for e in last.embeddings} == {2}
    for record_id, vector in vectors(unset).items():
        np.testing.assert_allclose(vector, layer1[record_id], atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "per-residue"])
def test_a_sequence_shared_by_several_records_runs_once_and_each_gets_its_vector(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, pooling: str
) -> None:
    """The same proteins in two genomes (new ids and labels), one of them long enough for windows:
    the model runs each sequence once; every record gets the vector a run without the twins gives."""
    model = load_model(tiny_model_dir, dtype="float32")
    config = EmbedConfig(pooling=pooling, window=WindowPolicy(overlap=16))
    genome = [
        *_records(sample_fasta, 12),
        next(r for r in read_fasta(sample_fasta) if len(r) > 200),
    ]
    twins = [ProteinRecord(f"{r.id}_b", r.sequence, ("strain-b",)) for r in genome]
    ran: list[int] = []
    both = {e.id: e for e in embed_records(genome + twins, model, config, on_batch=ran.append)}
    alone: list[int] = []
    once = {e.id: e for e in embed_records(genome, model, config, on_batch=alone.append)}
    assert sum(ran) == sum(alone)  # the twins ran no forward of their own
    assert len(both) == 2 * len(genome)
    for record, twin in zip(genome, twins, strict=True):
        np.testing.assert_array_equal(both[record.id].vector, once[record.id].vector)
        np.testing.assert_array_equal(both[twin.id].vector, once[record.id].vector)
        assert both[twin.id].labels == ("strain-b",) and both[twin.id].length == len(record)
        assert both[twin.id].vector is not both[record.id].vector
    stats = CacheStats()
    with Store(StoreConfig(url=f"sqlite:///{tmp_path / 'c.db'}")) as store:
        records = embed_records(genome + twins, model, config, cache=store.embeddings, stats=stats)
        cached = {e.id: e for e in records}
        assert store.embeddings.count() == len(genome)
    assert (stats.computed, stats.cached) == (2 * len(genome), 0)
    np.testing.assert_array_equal(cached[twins[-1].id].vector, once[genome[-1].id].vector)
