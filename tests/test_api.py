from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import protssl
from protssl.cli import main
from protssl.errors import InvalidInputError
from protssl.output import read_vectors


def test_all_is_sorted_and_complete() -> None:
    assert list(protssl.__all__) == sorted(protssl.__all__)
    assert all(hasattr(protssl, name) for name in protssl.__all__)


def _loaded_after(code: str) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter."""
    code += "\nimport sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    return set(subprocess.check_output([sys.executable, "-c", code], text=True).split())


HEAVY = {"torch", "sqlalchemy", "alembic", "grpc", "service"}


def test_importing_protssl_loads_no_torch_sql_or_rpc_stack() -> None:
    assert _loaded_after("import protssl") & HEAVY == set()


def test_each_public_name_comes_from_its_module_on_first_use() -> None:
    import importlib

    for name, module in protssl._LAZY.items():
        assert getattr(protssl, name) is getattr(importlib.import_module(module), name)
    assert set(protssl._LAZY) <= set(protssl.__all__) <= {*protssl._LAZY, *vars(protssl)}
    assert set(protssl.__all__) <= set(dir(protssl))


def test_the_renamed_embed_module_still_imports_and_protssl_embed_stays_the_function() -> None:
    code = (
        "import protssl\n"
        "from protssl.embed import EmbedConfig, embed_records\n"
        "import protssl.embed\n"
        "import protssl.embedding as renamed\n"
        "assert protssl.embed.__module__ == 'protssl.api' and callable(protssl.embed)\n"
        "assert (EmbedConfig, embed_records) == (renamed.EmbedConfig, renamed.embed_records)\n"
    )
    assert "torch" in _loaded_after(code)


def test_embed_keeps_input_order_and_matches_records(
    tiny_model_dir: Path, sample_fasta: Path
) -> None:
    """Vectors come back in input order (embed sorts by length inside), each the one its record
    gets embedded alone; plain strings get seqN ids; per-residue rows average to the mean."""
    model = protssl.load_model(tiny_model_dir, dtype="float32")
    records = [r for r in protssl.read_fasta(sample_fasta) if len(r) < 60][:7]
    result = protssl.embed(records, model=model)
    assert result.ids == [r.id for r in records]
    alone = np.stack([protssl.embed([r], model=model).vectors[0] for r in records])
    np.testing.assert_allclose(result.vectors, alone, atol=1e-5)
    assert result.vectors.dtype == np.float32
    plain = protssl.embed([r.sequence.lower() for r in records], model=model)
    assert plain.ids == [f"seq{i}" for i in range(len(records))]
    np.testing.assert_allclose(plain.vectors, result.vectors, atol=1e-6)
    per_residue = protssl.embed(records[:2], model=model, pooling="per-residue")
    for rows, record, mean in zip(per_residue.vectors, records, result.vectors, strict=False):
        assert rows.shape == (len(record), 64)
        np.testing.assert_allclose(rows.mean(0), mean, atol=1e-5)
    assert result.provenance[0].model_sha256 == model.sha256


def test_a_result_saves_as_protssl_embed_writes(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    """What `protssl embed -o` would write for the same records: bytes, lengths, input order."""
    model = protssl.load_model(tiny_model_dir, dtype="float32")
    records = [r for r in protssl.read_fasta(sample_fasta) if len(r) < 60][:7]
    result = protssl.embed(records, model=model)
    assert result.lengths == [len(r) for r in records]
    result.save(tmp_path / "r.csv")
    rows = list(read_vectors(tmp_path / "r.csv"))
    assert [k for k, _, _ in rows] == result.ids
    assert [a["length"] for _, _, a in rows] == result.lengths
    assert np.stack([v for _, v, _ in rows]).tobytes() == result.vectors.tobytes()
    with pytest.raises(InvalidInputError, match=r"exists: save\(\.\.\., overwrite=True\)"):
        result.save(tmp_path / "r.csv")
    per_residue = protssl.embed(records[:2], model=model, pooling="per-residue")
    per_residue.save(tmp_path / "r.h5")
    saved = {k: v.shape for k, v, _ in read_vectors(tmp_path / "r.h5")}
    assert saved == {i: v.shape for i, v in zip(per_residue.ids, per_residue.vectors, strict=True)}
    with pytest.raises(InvalidInputError, match="nothing to save"):
        protssl.embed([], model=model).save(tmp_path / "empty.h5")


def test_a_saved_result_keeps_the_records_labels(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`save` wrote every record's labels empty, where `protssl embed -o` writes them."""
    fasta = tmp_path / "labelled.fasta"
    fasta.write_text(">b label=X;Y\nMKVLA\n>a label=Z\nMKTT\n>c\nMKVLA\n")
    model = protssl.load_model(tiny_model_dir, dtype="float32")
    result = protssl.embed(protssl.read_fasta(fasta), model=model)
    assert result.labels == [("X", "Y"), ("Z",), ()]
    result.save(tmp_path / "api.tsv")
    cli = ["embed", str(fasta), "-o", str(tmp_path / "cli.tsv"), "--model", str(tiny_model_dir)]
    assert main([*cli, "--no-progress", "--no-cache"]) == 0
    for name in ("api.tsv", "cli.tsv"):
        saved = [(k, a["labels"]) for k, _, a in read_vectors(tmp_path / name)]
        assert saved == [("b", "X;Y"), ("a", "Z"), ("c", "")]
    protssl.embed(["MKVLA"], model=model).save(tmp_path / "plain.tsv")
    assert [a["labels"] for _, _, a in read_vectors(tmp_path / "plain.tsv")] == [""]


def test_one_string_instead_of_a_list_is_refused_not_read_letter_by_letter(
    tiny_model_dir: Path, sample_fasta: Path
) -> None:
    """`protssl.embed("MKT...")` gave one vector per residue, each letter taken for a protein."""
    model = protssl.load_model(tiny_model_dir, dtype="float32")
    sequence = next(r.sequence for r in protssl.read_fasta(sample_fasta) if len(r) < 60)
    with pytest.raises(InvalidInputError, match=r"one string, not a list .* \[sequence\]"):
        protssl.embed(sequence, model=model)
    with pytest.raises(
        InvalidInputError, match=r"the name of a file .* protssl.read_fasta\(path\)"
    ):
        protssl.embed(str(sample_fasta), model=model)
    assert protssl.embed([sequence], model=model).vectors.shape == (1, 64)
    with (
        protssl.Client("127.0.0.1:9", retries=0) as client,  # refused before any call is made
        pytest.raises(InvalidInputError, match="one string, not a list"),
    ):
        client.embed_stream(sequence)
    for nothing in (None, 5):  # a TypeError ('NoneType' object is not iterable) before
        with pytest.raises(InvalidInputError, match=r"must be a list .* not (NoneType|int)$"):
            protssl.embed(nothing, model=model)  # type: ignore[arg-type]


def test_inputs_of_the_wrong_shape_are_refused_naming_them_not_embedded(
    tiny_model_dir: Path, sample_fasta: Path
) -> None:
    """A mapping's keys are its ids (they were embedded as sequences); numbers, None, bytes and
    tuples among the sequences or ids, a path, a layer or policy of the wrong type are refused by
    name, not with a TypeError from deep inside; no records give a float32 (0, D) array; records
    built by hand must hold normalised residues (lowercase ones gave other vectors, silently)."""
    model = protssl.load_model(tiny_model_dir, dtype="float32")
    records = [r for r in protssl.read_fasta(sample_fasta) if len(r) < 60][:2]
    mapping = {r.id: r.sequence for r in records}
    by_key = protssl.embed(mapping, model=model)
    assert by_key.ids == list(mapping)
    np.testing.assert_array_equal(by_key.vectors, protssl.embed(records, model=model).vectors)
    sequences = [r.sequence for r in records]
    for call, said in (
        (lambda: protssl.embed(mapping, ids=["x", "y"], model=model), "ids given twice"),
        (lambda: protssl.embed(sequences, ids=[1, 2], model=model), r"ids\[0\] is int 1"),
        (lambda: protssl.embed(sequences, ids="ab", model=model), "ids is one string"),
        (lambda: protssl.embed([sequences[0], None], model=model), r"sequences\[1\] is NoneType"),
        (lambda: protssl.embed([b"MKV"], model=model), r"sequences\[0\] is bytes"),
        (lambda: protssl.embed([("p1", "MKV")], model=model), r"sequences\[0\] is tuple"),
        (lambda: protssl.embed(sample_fasta, model=model), "the name of a file"),
        (lambda: protssl.embed(sequences, layer="1", model=model), "layer must be a whole"),
        (
            lambda: protssl.embed(sequences, policy={"on_invalid": "skip"}, model=model),
            "policy is dict",
        ),
    ):
        with pytest.raises(InvalidInputError, match=said):
            call()
    empty = protssl.embed([], model=model).vectors
    assert (empty.dtype, empty.shape) == (np.float32, (0, 64))
    from protssl.embedding import EmbedConfig, embed_records

    lowercase = protssl.ProteinRecord("q", records[0].sequence.lower())
    with pytest.raises(InvalidInputError, match=r"record 'q': '.' at position 1 is not a residue"):
        list(embed_records([lowercase], model, EmbedConfig()))
    assert protssl.ProteinRecord("a", "MKV", "IS3").labels == ("IS3",)  # one label, not three


def test_a_model_is_loaded_once_for_embed_calls_until_its_files_change(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A loop of `protssl.embed(...)` calls paid a model load each (~60 ms against ~4 ms of work):
    the shipped model, a preset and a model folder are loaded once; a folder saved again (new
    weights) is read again, and its vectors are the new model's."""
    from protssl import api
    from protssl.checkpoint import save_model
    from protssl.model import ModelConfig, ProteinEncoder, init_weights

    loads: list[object] = []
    real_load = api.load_model
    monkeypatch.setattr(
        api, "load_model", lambda spec=None, **kw: loads.append(spec) or real_load(spec, **kw)
    )
    folder = tmp_path / "mine"

    def save(seed: int) -> None:
        encoder = ProteinEncoder(ModelConfig(num_layers=1, embed_dim=32, attention_heads=2))
        init_weights(encoder, seed=seed)
        save_model(encoder, folder, name="mine")

    api._load_once.cache_clear()
    try:
        first = protssl.embed(["MKTAYIAKQRQISFVKSHFSRQ"])
        second = protssl.embed(["MKTAYIAKQRQISFVKSHFSRQ"])
        assert loads == [None]
        np.testing.assert_array_equal(first.vectors[0], second.vectors[0])
        protssl.embed(["MKTAYIAKQR"], model="esm2-8m")
        protssl.embed(["MKTAYIAKQR"], model="esm2-8m")
        assert loads == [None, "esm2-8m"]
        save(1)
        old = [protssl.embed(["MKTAYIAKQR"], model=folder).vectors[0] for _ in range(3)]
        assert loads == [None, "esm2-8m", str(folder)]
        save(2)
        new = protssl.embed(["MKTAYIAKQR"], model=str(folder)).vectors[0]
        assert loads == [None, "esm2-8m", str(folder), str(folder)]
        np.testing.assert_array_equal(old[0], old[2])
        assert not np.allclose(old[0], new)
    finally:
        api._load_once.cache_clear()
