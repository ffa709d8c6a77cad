"""Vector files: dataset names stay flat whatever the record id holds; OUTPUT replaced whole, a
journal of chunks while a job runs, one writer at a time; tables hold what HDF5 holds."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from protssl.embedding import Embedding, Provenance
from protssl.errors import InvalidInputError
from protssl.output import (
    check_pooling,
    check_writable,
    dataset_name,
    journal_path,
    open_writer,
    read_vectors,
    record_id,
)


def test_ids_with_slashes_stay_flat() -> None:
    assert dataset_name("sp|P1/2%x") == "sp|P1%2F2%25x"


PROVENANCE = Provenance("m", "ab" * 32, 2, "mean", "float32", "window:62:16", False, 1)


def _embedding(index: int) -> Embedding:
    vector = np.arange(4, dtype=np.float32) + index
    return Embedding(f"sp|P{index}/x", 10 + index, vector, PROVENANCE, ("a", "b"))


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".tsv", ".csv"])
def test_output_is_replaced_whole_and_the_journal_holds_the_flushed_chunks(
    suffix: str, tmp_path: Path
) -> None:
    out = tmp_path / f"o{suffix}"
    writer = open_writer(out)
    for index in range(3):
        writer.write(_embedding(index))
    writer.flush()
    writer.write(_embedding(3))  # not flushed: lost if the process dies now
    assert not out.exists() and [p.name for p in journal_path(out).iterdir()] == [
        "chunk-000001.npz"
    ]
    (journal_path(out) / ".chunk-000002.npz.tmp").write_bytes(b"half a chunk")
    (journal_path(out) / "chunk-000001.npz").rename(journal_path(out) / "chunk-000007.npz")
    del writer  # what SIGKILL leaves: no close(); chunk numbers need not be contiguous

    with pytest.raises(InvalidInputError, match=r"o\.(h5|npz|tsv|csv)\.partial'?: pass --resume"):
        open_writer(out)
    with open_writer(out, resume=True) as again:
        assert again.existing_ids() == {"sp|P0/x", "sp|P1/x", "sp|P2/x"}
        again.write(_embedding(3))
        again.flush()  # a new chunk, numbered after the last one: chunk-000007.npz is kept
        assert len(list(journal_path(out).glob("chunk-*.npz"))) == 2
    assert not journal_path(out).exists() and not list(tmp_path.glob(".*"))
    rows = list(read_vectors(out))
    assert [key for key, _, _ in rows] == [f"sp|P{i}/x" for i in range(4)]
    _, vector, attrs = rows[1]
    np.testing.assert_array_equal(vector, np.arange(4, dtype=np.float32) + 1)
    assert attrs["labels"] == "a;b" and attrs["length"] == 11 and attrs["pooling"] == "mean"

    with open_writer(out, resume=True) as more:  # a complete OUTPUT is copied, then added to
        more.write(_embedding(4))
    assert len(list(read_vectors(out))) == 5


def test_h5_npz_and_tables_hold_the_same(tmp_path: Path) -> None:
    """Bit for bit, with ids a table must quote (its delimiters, quotes) and values a short
    decimal would round (float32 needs 9 significant digits to come back whole)."""
    rng = np.random.default_rng(0)
    odd = ["sp|P1/x", 'a,b\t"c"', "d;e", "\u00e9", "x" * 300]
    embeddings = [
        Embedding(
            i, 10 + n, rng.standard_normal(7).astype(np.float32) * 10.0 ** (n - 3), PROVENANCE
        )
        for n, i in enumerate(odd)
    ]
    extremes = np.array([1e-38, -0.0, 3.4e38, 1e-45, -1.0, 0.1, 1 / 3], np.float32)
    embeddings.append(Embedding("tiny", 3, extremes, PROVENANCE))
    for suffix in (".h5", ".npz", ".tsv", ".csv"):
        with open_writer(tmp_path / f"o{suffix}") as writer:
            for index, embedding in enumerate(embeddings):
                writer.write(embedding)
                if index % 2:
                    writer.flush()

    def held(suffix: str) -> dict[str, tuple[bytes, dict]]:
        return {
            k: (v.tobytes(), {**a, "protssl_version": None})
            for k, v, a in read_vectors(tmp_path / f"o{suffix}")
        }

    h5 = held(".h5")
    assert set(h5) == {e.id for e in embeddings}
    for suffix in (".npz", ".tsv", ".csv"):
        assert held(suffix) == h5, suffix
    header = (tmp_path / "o.tsv").read_text().splitlines()[0].split("\t")
    assert header[:5] == ["id", "length", "windows", "windowed", "labels"]
    assert header[-7:] == [f"v{i}" for i in range(7)]


RESERVED_IDS = ["__provenance__", ".", "file", "allow_pickle", "%5F_provenance__", "%2E", ".."]
"""Ids that were lost or crashed a writer: the .npz provenance key (every format writes through
.npz chunks), HDF5's name for the root group, `np.savez`'s own keyword parameters; then ids that
look like their escaped names."""


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".tsv", ".csv"])
def test_every_id_comes_back_reserved_names_included(suffix: str, tmp_path: Path) -> None:
    """`__provenance__` vanished from every format (the chunk's provenance key overwrote it), `.`
    crashed the HDF5 merge (`"." in handle` is the root group), `file` crashed np.savez and
    `allow_pickle` vanished (its keyword parameters); each id now comes back as it was given."""
    out = tmp_path / f"o{suffix}"
    ids = ["x", *RESERVED_IDS, "y"]
    with open_writer(out) as writer:
        for position, record in enumerate(ids):
            writer.write(replace(_embedding(position), id=record), position=position)
            if position == 3:
                writer.flush()
    rows = list(read_vectors(out))
    assert [k for k, _, _ in rows] == ids
    assert [int(v[0]) for _, v, _ in rows] == list(range(len(ids)))
    assert [a["id"] for _, _, a in rows if "id" in a] in ([], ids)
    with open_writer(out, resume=True) as more:
        assert more.existing_ids() == set(ids)


def test_escaped_names_read_back_as_before() -> None:
    """Names that files written before the reserved ids were escaped hold read back the same."""
    for name, record in [("sp|P1%2F2%25x", "sp|P1/2%x"), ("%252E", "%2E"), ("..", "..")]:
        assert record_id(name) == record and dataset_name(record) == name
    for record in RESERVED_IDS:
        assert record_id(dataset_name(record)) == record


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_a_table_takes_one_vector_per_record(suffix: str, tmp_path: Path) -> None:
    out = tmp_path / f"o{suffix}"
    with pytest.raises(InvalidInputError) as refused:
        check_pooling(out, "per-residue")
    assert str(refused.value) == (
        f"output {str(out)!r}: a {suffix} table holds one vector per record; per-residue "
        "vectors go to .h5 or .npz"
    )
    check_pooling(out, "segments")
    check_pooling(tmp_path / "o.h5", "per-residue")
    with open_writer(out) as writer:
        per_residue = Embedding("r", 2, np.zeros((2, 4), np.float32), PROVENANCE)
        with pytest.raises(InvalidInputError, match="a table holds one vector per record"):
            writer.write(per_residue)
        writer.write(_embedding(0))
    assert [k for k, _, _ in read_vectors(out)] == ["sp|P0/x"]


def test_a_tables_rows_follow_the_input_across_more_chunks_than_stay_open(tmp_path: Path) -> None:
    """40 chunks, written last record first: the merge reads each vector from its chunk as its row
    is written (more chunks than it keeps open), and the rows come out in input order."""
    out = tmp_path / "o.tsv"
    with open_writer(out) as writer:
        for position in reversed(range(40)):
            writer.write(_embedding(position), position=position)
            writer.flush()
        assert len(list(journal_path(out).glob("chunk-*.npz"))) == 40
    rows = list(read_vectors(out))
    assert [k for k, _, _ in rows] == [f"sp|P{i}/x" for i in range(40)]
    assert [v[0] for _, v, _ in rows] == list(range(40))


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".tsv"])
def test_records_read_back_in_input_order_not_by_id(suffix: str, tmp_path: Path) -> None:
    """HDF5 listed datasets by name, so read_vectors gave an .h5's records sorted by id, and an
    .npz kept the order computed, where a table gave them in input order. Written out of input
    order (as length-sorted batches come), over several chunks; then resumed, the new records
    after those in the file."""
    ids = ["zeta", "alpha", "Mid", "beta/2", "10", "9"]
    out = tmp_path / f"o{suffix}"
    with open_writer(out) as writer:
        for position in (3, 0, 5, 1, 4, 2):
            embedding = _embedding(position)
            writer.write(replace(embedding, id=ids[position]), position=position)
            if position % 2:
                writer.flush()
    assert [k for k, _, _ in read_vectors(out)] == ids
    assert [int(v[0]) for _, v, _ in read_vectors(out)] == list(range(6))
    assert all("position" not in a for _, _, a in read_vectors(out))
    with open_writer(out, resume=True) as more:
        more.write(replace(_embedding(7), id="b"), position=7)
        more.write(replace(_embedding(6), id="c"), position=6)
    assert [k for k, _, _ in read_vectors(out)] == [*ids, "c", "b"]


def test_an_h5_without_creation_order_reads_by_name_and_takes_more(tmp_path: Path) -> None:
    """A file written before creation order was tracked: listed by name, as HDF5 lists it."""
    out = tmp_path / "old.h5"
    with h5py.File(out, "w") as handle:
        shared = ("model_name", "model_sha256", "layer", "pooling", "dtype", "window_policy")
        handle.attrs.update({k: getattr(PROVENANCE, k) for k in shared})
        for name in ("b", "a"):
            handle.create_dataset(name, data=np.zeros(4, np.float32))
    with open_writer(out, resume=True) as more:
        more.write(replace(_embedding(0), id="0"), position=0)
    assert [k for k, _, _ in read_vectors(out)] == ["0", "a", "b"]


def test_a_table_protssl_did_not_write_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "mine.csv"
    out.write_text("gene,score\nabc,1\n")
    with pytest.raises(InvalidInputError) as refused:
        open_writer(out, resume=True)
    assert "is not a .csv file protssl can read (its header is not protssl's" in str(refused.value)
    assert out.read_text() == "gene,score\nabc,1\n"


def test_an_output_being_written_is_refused_to_a_second_writer(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    with open_writer(out) as first:
        first.write(_embedding(0))
        first.flush()
        for attempt in (
            lambda: open_writer(out, resume=True),  # would write chunks into first's journal
            lambda: open_writer(out, overwrite=True),  # would delete them
            lambda: check_writable(out),  # what the CLI asks before any work
        ):
            with pytest.raises(InvalidInputError) as refused:
                attempt()
            assert str(refused.value) == (
                f"output {str(out)!r} is being written by another process (pid {os.getpid()}): "
                "wait for it to end, or write to another file"
            )
        assert [p.name for p in tmp_path.glob(".*")] == [".o.h5.lock"]
    assert not list(tmp_path.glob(".*"))  # the lock file goes with the writer
    with open_writer(out, resume=True) as second:
        second.write(_embedding(1))
    assert len(list(read_vectors(out))) == 2


def test_a_killed_writers_lock_file_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "o.npz"
    writer = open_writer(out)
    writer.write(_embedding(0))
    writer.flush()
    del writer  # what SIGKILL leaves: the lock file, no longer locked
    assert (tmp_path / ".o.npz.lock").read_text() == f"{os.getpid()}\n"
    with open_writer(out, resume=True) as again:
        assert again.existing_ids() == {"sp|P0/x"}
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".tsv"])
def test_an_interrupted_overwrite_keeps_output_and_resume_finishes_replacing_it(
    suffix: str, tmp_path: Path
) -> None:
    """Ctrl-C during an overwrite merged the new run's few records over a complete OUTPUT (its
    records were gone). Now OUTPUT stays as it was, the new records (the buffered ones too) wait
    in the journal, and --resume finishes the replacement: the old records are not kept."""
    out = tmp_path / f"o{suffix}"
    with open_writer(out) as writer:
        for index in range(3):
            writer.write(_embedding(index), position=index)
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt) as stopped, open_writer(out, overwrite=True) as writer:
        writer.write(replace(_embedding(10), id="new0"), position=0)
        writer.flush()
        writer.write(replace(_embedding(11), id="new1"), position=1)
        raise KeyboardInterrupt
    assert out.read_bytes() == before
    assert str(stopped.value) == (
        f"output {str(out)!r} is as it was; the 2 new record(s) are in "
        f"{str(journal_path(out))!r}: run the command with --resume in place of --overwrite to "
        "finish replacing it"
    )
    with pytest.raises(InvalidInputError, match="pass --resume to continue it"):
        open_writer(out)
    with open_writer(out, resume=True) as again:
        assert again.existing_ids() == {"new0", "new1"}
        again.write(replace(_embedding(12), id="new2"), position=2)
    assert [k for k, _, _ in read_vectors(out)] == ["new0", "new1", "new2"]
    assert not journal_path(out).exists()

    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt) as stopped, open_writer(out, overwrite=True):
        raise KeyboardInterrupt  # before any record: nothing to keep, nothing to resume
    assert out.read_bytes() == before and not journal_path(out).exists()
    assert str(stopped.value) == f"output {str(out)!r} is as it was (nothing was replaced)"


def test_an_id_past_the_output_limit_is_refused_by_name_not_a_traceback(tmp_path: Path) -> None:
    """Records made in code skip the FASTA check: the writer refuses such an id by name (it
    crashed np.savez with a struct.error at the flush), and keeps the records before it."""
    out = tmp_path / "o.npz"
    with open_writer(out) as writer:
        writer.write(_embedding(0))
        with pytest.raises(InvalidInputError) as refused:
            writer.write(replace(_embedding(1), id="é" * 9_000))
    assert str(refused.value) == (
        f"output {str(out)!r}: record {'é' * 40 + '…'!r}: the id is 18,000 bytes long; ids up to "
        "16,384 bytes (UTF-8) fit every output format"
    )
    assert [k for k, _, _ in read_vectors(out)] == ["sp|P0/x"]
