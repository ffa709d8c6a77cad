"""Vector files: dataset names stay flat whatever the record id holds; OUTPUT replaced whole, a
journal of chunks while a job runs, one writer at a time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from protssl.embedding import Embedding, Provenance
from protssl.errors import InvalidInputError
from protssl.output import check_writable, dataset_name, journal_path, open_writer, read_vectors


def test_ids_with_slashes_stay_flat() -> None:
    assert dataset_name("sp|P1/2%x") == "sp|P1%2F2%25x"


PROVENANCE = Provenance("m", "ab" * 32, 2, "mean", "float32", "window:62:16", False, 1)


def _embedding(index: int) -> Embedding:
    vector = np.arange(4, dtype=np.float32) + index
    return Embedding(f"sp|P{index}/x", 10 + index, vector, PROVENANCE, ("a", "b"))


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
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

    with pytest.raises(InvalidInputError, match=r"o\.(h5|npz)\.partial'?: pass --resume"):
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


def test_h5_and_npz_hold_the_same(tmp_path: Path) -> None:
    for suffix in (".h5", ".npz"):
        with open_writer(tmp_path / f"o{suffix}") as writer:
            for index in range(5):
                writer.write(_embedding(index))
                if index % 2:
                    writer.flush()
    h5 = list(read_vectors(tmp_path / "o.h5"))
    npz = list(read_vectors(tmp_path / "o.npz"))
    assert [(k, v.tolist(), a) for k, v, a in h5] == [
        (k, v.tolist(), {**a, "protssl_version": h5[0][2]["protssl_version"]}) for k, v, a in npz
    ]


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
