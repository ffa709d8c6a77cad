"""The SDK against a real server: results, retries on UNAVAILABLE, typed errors with the server's message."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord
from ports import free_port
from service_support import load_tiny, real_records, running_server, save_tiny_model

import protssl
from protssl import endpoint
from protssl._proto import protssl_pb2 as pb
from protssl.checkpoint import LoadedModel, update_card_training
from protssl.embed_file import JobSummary
from protssl.embedding import CacheStats, EmbedConfig, embed_records
from protssl.errors import (
    DeadlineExceededError,
    FastaFormatError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from protssl.fasta import ProteinRecord, read_fasta
from protssl.output import journal_path, read_vectors
from protssl.pooling import SEGMENTS
from protssl.store import Store, StoreConfig

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_tiny(save_tiny_model(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def address(model: LoadedModel) -> Iterator[str]:
    with running_server(model, max_sequences=8) as (_, addr, _registry):
        yield addr


@pytest.fixture(scope="module")
def by_family(shared_file) -> dict[str, list[ProteinRecord]]:
    """Pfam seed records by family."""
    families: dict[str, list[ProteinRecord]] = {}
    for record in read_fasta(shared_file("families/pfam_seed_small.fasta")):
        families.setdefault(record.labels[0], []).append(record)
    return families


@pytest.fixture(scope="module")
def records(sample_fasta: Path) -> list[ProteinRecord]:
    return real_records(sample_fasta, 6, max_length=500)


def test_embed_returns_ids_and_vectors_equal_to_in_process(address, model, records):
    with protssl.Client(address) as client:
        result = client.embed(records)
    expected = {e.id: e.vector for e in embed_records(records, model)}
    assert result.ids == [r.id for r in records]
    assert result.vectors.shape == (len(records), 64) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(
        result.vectors, np.stack([expected[i] for i in result.ids]), atol=1e-5
    )
    assert result.embeddings[0].provenance.model_sha256 == model.sha256
    assert result.cached == (False,) * len(records)


def test_each_embedding_keeps_its_own_provenance(address, model, records, sample_fasta):
    """One response mixes whole and windowed sequences: the SDK shares a provenance between
    consecutive equal ones only, so every vector still carries its own."""
    long = next(r for r in read_fasta(sample_fasta) if len(r) > 1100)
    chosen = [records[0], long, records[1], records[2]]
    with protssl.Client(address) as client:
        result = client.embed(chosen)
    expected = {e.id: e.provenance for e in embed_records(chosen, model)}
    assert [e.provenance for e in result.embeddings] == [expected[r.id] for r in chosen]
    assert [e.provenance.windowed for e in result.embeddings] == [False, True, False, False]


def test_embed_strings_mapping_and_per_residue(address, records):
    with protssl.Client(address) as client:
        plain = client.embed([records[0].sequence, records[1].sequence.lower()])
        mapped = client.embed({"a": records[0].sequence})
        residues = client.embed(records[:2], pooling="per-residue", dtype="float16")
    assert plain.ids == ["seq0", "seq1"] and mapped.ids == ["a"]
    np.testing.assert_allclose(plain.vectors[0], mapped.vectors[0], atol=1e-6)
    assert residues.embeddings[1].vector.shape == (len(records[1]), 64)
    assert residues[1] is residues.embeddings[1] and list(residues) == list(residues.embeddings)
    with pytest.raises(InvalidInputError, match=r"one \(length, dim\) array per sequence"):
        residues.vectors  # noqa: B018 (one sequence had been told 'they differ in length')


def test_embed_fasta_streams_in_input_order(address, sample_fasta, tmp_path):
    fasta = tmp_path / "few.fasta"
    chosen = real_records(sample_fasta, 20, max_length=400)
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    with protssl.Client(address) as client:
        streamed = client.embed_fasta(fasta, chunk=6, progress=False)
        unary = client.embed(chosen[:8])
    assert streamed.ids == [r.id for r in chosen]
    np.testing.assert_allclose(streamed.vectors[:8], unary.vectors, atol=1e-5)


def test_a_result_saves_as_protssl_embed_writes(address, sample_fasta, tmp_path):
    """`.save` writes the formats `protssl embed -o` does; a table's rows in request order."""
    chosen = real_records(sample_fasta, 8, max_length=400)
    with protssl.Client(address) as client:
        result = client.embed(chosen)
        per_residue = client.embed(chosen[:2], pooling="per-residue")
    for name in ("r.h5", "r.tsv"):
        result.save(tmp_path / name)
        rows = list(read_vectors(tmp_path / name))
        assert {k: v.tobytes() for k, v, _ in rows} == {e.id: e.vector.tobytes() for e in result}
        assert rows[0][2]["model_sha256"] == result[0].provenance.model_sha256
    assert [k for k, _, _ in read_vectors(tmp_path / "r.tsv")] == [r.id for r in chosen]
    with pytest.raises(InvalidInputError, match=r"exists: save\(..., overwrite=True\) replaces"):
        result.save(tmp_path / "r.h5")
    result.save(tmp_path / "r.h5", overwrite=True)
    with pytest.raises(InvalidInputError, match=r"a \.csv table holds one vector per record"):
        per_residue.save(tmp_path / "res.csv")
    per_residue.save(tmp_path / "res.npz")
    saved = {k: v for k, v, _ in read_vectors(tmp_path / "res.npz")}
    assert [saved[e.id].shape for e in per_residue] == [e.vector.shape for e in per_residue]


def test_embed_file_writes_each_result_as_it_comes_and_resumes(address, sample_fasta, tmp_path):
    """Into a table in the file's order; a second run with resume=True sends only what is missing
    (this server has no store: the batches differ, so the vectors agree to float32's 1e-5)."""
    chosen = real_records(sample_fasta, 30, max_length=400)
    fasta = tmp_path / "thirty.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    head = tmp_path / "ten.fasta"
    head.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen[:10]))
    out = tmp_path / "v.tsv"
    with protssl.Client(address) as client:
        first = client.embed_file(head, out, chunk=4, progress=False)
        with pytest.raises(
            InvalidInputError,
            match=r"exists: pass resume=True to continue it or overwrite=True to replace it$",
        ):
            client.embed_file(fasta, out, progress=False)
        with pytest.raises(InvalidInputError, match=r"^resume=True and overwrite=True contradict"):
            client.embed_file(fasta, out, progress=False, resume=True, overwrite=True)
        second = client.embed_file(fasta, out, chunk=4, progress=False, resume=True)
        whole = client.embed_fasta(fasta, chunk=4, progress=False)
    assert (first.records, first.resumed) == (10, 0)
    assert (second.records, second.resumed) == (20, 10)
    assert second.residues == sum(len(r) for r in chosen[10:])
    rows = list(read_vectors(out))
    assert [k for k, _, _ in rows] == [r.id for r in chosen]
    np.testing.assert_allclose(np.stack([v for _, v, _ in rows]), whole.vectors, atol=1e-5)


def _stop_after_a_chunk(
    server: object, out: Path, *, grace: float | None = None, took: list[float] | None = None
) -> threading.Thread:
    """A thread that stops `server` (a ProtsslServer) with `grace` once `out`'s first chunk is on
    disk, appending to `took` how long the stop took."""

    def stop() -> None:
        deadline = time.monotonic() + 60
        while not list(journal_path(out).glob("chunk-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        start = time.monotonic()
        server.stop(grace=grace)  # type: ignore[attr-defined]
        if took is not None:
            took.append(time.monotonic() - start)

    thread = threading.Thread(target=stop)
    thread.start()
    return thread


@contextmanager
def _back_after(
    stop: Callable[[], object], model: LoadedModel, port: int, **settings: object
) -> Iterator[list[object]]:
    """While the block runs, a thread runs `stop` (the first server goes; what it returns goes in
    the list yielded), then a second later serves `model` on `port` again (with `settings`) until
    the block ends."""
    done = threading.Event()
    stopped: list[object] = []

    def restart() -> None:
        stopped.append(stop())
        time.sleep(1.0)
        with running_server(model, port=port, **settings):
            done.wait(120)

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        yield stopped
    finally:
        done.set()
        restarter.join()


def test_embed_file_of_an_input_the_policy_skips_whole_raises_and_writes_nothing(
    address, edge_cases, tmp_path
):
    """No record left to send: InvalidInputError saying so (it returned a summary of 0 records,
    with its skipped count 0, and no OUTPUT, which a caller found missing later); the summary
    passed in keeps the count; an OUTPUT that overwrite=True would replace is left as it was."""
    stops = edge_cases / "prokka_IS_internal_stops.fasta"  # each record has an internal stop
    n = stops.read_text().count(">")
    said = re.escape(f"all {n} records were skipped ({n} by on_invalid skip); nothing was written")
    out = tmp_path / "v.h5"
    summary = JobSummary()
    skip = protssl.FastaPolicy(on_invalid="skip")
    with protssl.Client(address) as client, pytest.raises(InvalidInputError, match=said):
        client.embed_file(stops, out, policy=skip, progress=False, summary=summary)
    assert (summary.records, summary.skipped, summary.errors) == (0, n, 1)
    assert not out.exists()
    out.write_text("kept\n")
    with protssl.Client(address) as client, pytest.raises(InvalidInputError, match=said):
        client.embed_file(stops, out, policy=skip, progress=False, overwrite=True)
    assert out.read_text() == "kept\n"


def test_embed_file_keeps_what_came_back_when_the_server_goes(model, sample_fasta, tmp_path):
    """The server stops mid-stream and does not come back within `reconnect`: the call fails as
    UNAVAILABLE saying how long it tried and what is kept, OUTPUT holds the results written before
    it, and resume=True against a new server finishes the file."""
    chosen = real_records(sample_fasta, 400, max_length=300)
    fasta = tmp_path / "many.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    out = tmp_path / "v.h5"
    with running_server(model) as (server, address, _):
        stopper = _stop_after_a_chunk(server, out)
        with (
            protssl.Client(address, retries=0, reconnect=1.0) as client,
            pytest.raises(UnavailableError) as gone,
        ):
            client.embed_file(fasta, out, chunk=8, progress=False)
        stopper.join()
    said = str(gone.value)
    assert isinstance(gone.value, UnavailableError), said
    assert re.search(
        r" \(tried again for 1 s\); the \d+ result\(s\) that came back before it are kept in "
        r".*v\.h5'",
        said,
    ), said
    assert said.endswith("embed_file(..., resume=True) sends the rest")
    kept = {k for k, _, _ in read_vectors(out)}
    assert 64 <= len(kept) < len(chosen) and not journal_path(out).exists()
    with running_server(model) as (_, address, _), protssl.Client(address) as client:
        summary = client.embed_file(fasta, out, chunk=8, progress=False, resume=True)
    assert summary.resumed == len(kept) and summary.records == len(chosen) - len(kept)
    assert sorted(k for k, _, _ in read_vectors(out)) == sorted(r.id for r in chosen)


@pytest.mark.parametrize("suffix", [".h5", ".tsv"])
def test_embed_file_goes_on_when_the_server_comes_back(
    model, sample_fasta, tmp_path, caplog, suffix
):
    """The server stops mid-stream (a resumed run, a fifth of the file already in OUTPUT) and a new
    one starts on the same port a second later: the same call waits, reconnects and sends only
    what OUTPUT lacks. Every record once, in the file's order for a table, each counted once, the
    vectors a local run's (no store: the batches differ, so to float32's 1e-5)."""
    chosen = real_records(sample_fasta, 300, max_length=300)  # 135 from examples/ alone
    head_count = len(chosen) // 5  # the rest: OUTPUT's first chunk (64 records), then 44 or more
    fasta = tmp_path / "many.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    head = tmp_path / "head.fasta"
    head.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen[:head_count]))
    out = tmp_path / f"v{suffix}"
    port = free_port()
    with running_server(model, port=port) as (server, address, _):
        with protssl.Client(address) as client:
            client.embed_file(head, out, chunk=8, progress=False)
        stopper = _stop_after_a_chunk(server, out)
        with (
            _back_after(stopper.join, model, port),
            caplog.at_level("WARNING", logger="protssl.client"),
            protssl.Client(address, reconnect=60) as client,
        ):
            summary = client.embed_file(fasta, out, chunk=8, progress=False, resume=True)
    said = caplog.text
    assert "trying again for up to 1 min" in said and "answers again: going on" in said, said
    assert (summary.resumed, summary.records) == (head_count, len(chosen) - head_count)
    assert summary.computed + summary.cached == len(chosen) - head_count
    rows = list(read_vectors(out))
    assert [k for k, _, _ in rows] == [r.id for r in chosen] or suffix == ".h5"
    assert sorted(k for k, _, _ in rows) == sorted(r.id for r in chosen)
    local = {e.id: e.vector for e in embed_records(chosen, model)}
    for record_id, vector, _ in rows:
        np.testing.assert_allclose(vector, local[record_id], atol=1e-5)


def test_a_stopping_server_hands_its_streams_over(model, sample_fasta, tmp_path):
    """A server stopped with a grace period (SIGTERM) reads no more of an open stream, sends what it
    has in flight and ends it UNAVAILABLE, saying so, well before the grace runs out; the client
    keeps every result sent, and the next server is sent only the rest."""
    chosen = real_records(sample_fasta, 400, max_length=300)
    fasta = tmp_path / "many.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    out = tmp_path / "v.h5"
    stopped: list[float] = []
    with running_server(model) as (server, address, _):
        stopper = _stop_after_a_chunk(server, out, grace=60, took=stopped)
        with (
            protssl.Client(address, retries=0, reconnect=0) as client,
            pytest.raises(UnavailableError) as gone,
        ):
            client.embed_file(fasta, out, chunk=8, progress=False)
        stopper.join()
    said = str(gone.value)
    assert "the server is shutting down (a restart?) after sending" in said, said
    sent = int(re.search(r"after sending (\d+) result", said)[1])  # type: ignore[index]
    assert stopped[0] < 30  # the stream ended itself; the grace did not run out
    kept = {k for k, _, _ in read_vectors(out)}
    assert len(kept) == sent and 64 <= sent < len(chosen)
    with running_server(model) as (_, address, _), protssl.Client(address) as client:
        summary = client.embed_file(fasta, out, chunk=8, progress=False, resume=True)
    assert (summary.resumed, summary.records) == (sent, len(chosen) - sent)


def _stopped_once_computed(server: object, registry: object, vectors: int) -> None:
    """Wait until `server` (a ProtsslServer) has computed `vectors` vectors, then stop it without
    a grace period."""
    deadline = time.monotonic() + 60
    computed = {"source": "computed"}
    while (
        time.monotonic() < deadline
        and (registry.get_sample_value("protssl_embeddings_total", computed) or 0) < vectors  # type: ignore[attr-defined]
    ):
        time.sleep(0.005)
    server.stop(grace=None)  # type: ignore[attr-defined]


@pytest.mark.parametrize("call", ["embed_fasta", "embed_stream"])
def test_in_memory_calls_go_on_when_the_server_comes_back(
    model, sample_fasta, tmp_path, caplog, call
):
    """embed_fasta and embed_stream (results in memory) across a restart: once the server has
    computed 64 vectors it stops, a new one starts on the same port, and the call returns every
    record once, in input order, with a local run's vectors (no store: to float32's 1e-5).
    embed_stream's input, a generator, is read once: what the lost server had taken and not
    answered is held and sent again, then the rest, and plain sequences keep the ids the first
    server gave them (it failed UNAVAILABLE, every result lost)."""
    chosen = real_records(sample_fasta, 300, max_length=300)
    fasta = tmp_path / "many.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    read: list[int] = []

    def sequences() -> Iterator[str]:
        for index, record in enumerate(chosen):
            read.append(index)
            yield record.sequence

    port = free_port()
    with (
        running_server(model, port=port) as (server, address, registry),
        _back_after(partial(_stopped_once_computed, server, registry, 64), model, port),
        caplog.at_level("WARNING", logger="protssl.client"),
        protssl.Client(address, reconnect=60) as client,
    ):
        if call == "embed_fasta":
            result = client.embed_fasta(fasta, chunk=8, progress=False)
        else:
            result = client.embed_stream(sequences(), chunk=8)
    assert "result(s) so far, kept in memory" in caplog.text, caplog.text
    assert "answers again: going on" in caplog.text
    if call == "embed_fasta":
        assert result.ids == [r.id for r in chosen]
    else:
        assert read == list(range(len(chosen)))  # the generator was read once
        assert result.ids == [f"seq{i}" for i in range(len(chosen))]
    local = {e.id: e.vector for e in embed_records(chosen, model)}
    np.testing.assert_allclose(result.vectors, np.stack([local[r.id] for r in chosen]), atol=1e-5)


# A server that holds every chunk in its queue for a minute: a call it accepted has no result yet.
_HOLDS_CHUNKS = {"max_queue_delay_ms": 60_000.0, "min_batch_fill": 1.0, "max_batch_tokens": 60_000}


def _killed_once_queued(server: object, registry: object) -> bool:
    """Wait until `server` (a ProtsslServer) has work queued, then end it as a killed process ends:
    every call cut off, no hand-over. True when nothing had been computed by then."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not registry.get_sample_value("protssl_queue_depth"):  # type: ignore[attr-defined]
        time.sleep(0.005)
    computed = registry.get_sample_value("protssl_embeddings_total", {"source": "computed"})  # type: ignore[attr-defined]
    server.grpc_server.stop(None)  # type: ignore[attr-defined]
    return not computed


def test_embed_fasta_goes_on_when_the_server_dies_before_its_first_result(
    model, sample_fasta, tmp_path, caplog
):
    """A server that took the stream and was killed before any result (SIGKILL, an OOM kill) was
    there: the call says it went away and waits for the next one, as after a result, instead of
    failing at once as for an address where no server ever answered."""
    chosen = real_records(sample_fasta, 40, max_length=300)
    fasta = tmp_path / "some.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    port = free_port()
    with (
        running_server(model, port=port, **_HOLDS_CHUNKS) as (server, address, registry),
        _back_after(partial(_killed_once_queued, server, registry), model, port) as before,
        caplog.at_level("WARNING", logger="protssl.client"),
        protssl.Client(address, reconnect=60, retries=0) as client,
    ):
        result = client.embed_fasta(fasta, chunk=8, progress=False)
    assert before == [True]
    said = caplog.text
    assert f"{address} went away during the call (stopped or killed?)" in said, said
    assert "0 result(s) so far, kept in memory" in said and "answers again: going on" in said
    assert result.ids == [r.id for r in chosen]
    local = {e.id: e.vector for e in embed_records(chosen, model)}
    np.testing.assert_allclose(result.vectors, np.stack([local[i] for i in result.ids]), atol=1e-5)


def test_embed_file_waits_for_a_stream_slot(model, sample_fasta, tmp_path, caplog):
    """A server whose one stream slot is taken refuses a second stream (RESOURCE_EXHAUSTED):
    embed_file waits and starts once the first stream ends, instead of failing an overnight job."""
    chosen = real_records(sample_fasta, 40, max_length=300)
    fasta = tmp_path / "few.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    release = threading.Event()

    def slow() -> Iterator[str]:  # holds the slot until told
        yield chosen[0].sequence
        release.wait(60)

    with (
        running_server(model, max_streams=1) as (_, address, registry),
        protssl.Client(address) as first,
    ):
        holder = threading.Thread(target=lambda: first.embed_stream(slow(), chunk=1))
        holder.start()
        deadline = time.monotonic() + 60  # the first stream holds the slot once it has a result
        while not registry.get_sample_value("protssl_embeddings_total", {"source": "computed"}):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        threading.Timer(1.5, release.set).start()
        with (
            caplog.at_level("WARNING", logger="protssl.client"),
            protssl.Client(address, reconnect=60) as second,
        ):
            summary = second.embed_file(fasta, tmp_path / "v.h5", progress=False)
        holder.join()
    assert "max_streams" in caplog.text and "answers again: going on" in caplog.text, caplog.text
    assert summary.records == len(chosen)


def test_embed_file_fails_at_once_when_no_server_answers(tmp_path, sample_fasta):
    """Reconnecting is for a server lost midway: a server never reached (a wrong address) fails the
    call at once, not after `reconnect` seconds."""
    fasta = tmp_path / "few.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in real_records(sample_fasta, 4)))
    start = time.monotonic()
    with (
        protssl.Client(f"127.0.0.1:{free_port()}", reconnect=600) as client,
        pytest.raises(UnavailableError, match="cannot reach a protssl server"),
    ):
        client.embed_file(fasta, tmp_path / "v.h5", progress=False)
    assert time.monotonic() - start < 30


def test_a_port_that_never_speaks_grpc_is_said_plainly_with_the_tls_hint() -> None:
    """What a plaintext client sees of a TLS server that has not answered its bytes yet (a busy
    host): the connection opens and no HTTP/2 settings come. The hint names TLS as the likely
    cause, as it does when a TLS server closes the connection."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with (
            protssl.Client(address, retries=0, timeout=10) as client,
            pytest.raises(UnavailableError) as raised,
        ):
            client.embed(["MKV"])
    message = str(raised.value)
    assert message.startswith(
        f"cannot reach a protssl server at {address} (if the server speaks TLS, connect with "
        "tls=True or root_certificates): "
    )
    assert message.endswith("before receiving SETTINGS frame")


def test_embed_fasta_progress_knows_its_total(address, sample_fasta, tmp_path, capsys):
    """The file is checked whole before it is sent, so the bar has a total: a percentage and an
    estimate of the time left, not a bare count."""
    fasta = tmp_path / "few.fasta"
    chosen = real_records(sample_fasta, 12, max_length=400)
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    with protssl.Client(address) as client:
        client.embed_fasta(fasta, chunk=4)
    residues = sum(map(len, chosen))
    last = capsys.readouterr().err.strip().splitlines()[-1]  # not a terminal: log lines
    assert "100%" in last and f"{residues / 1000:.2f}k/{residues / 1000:.2f}k" in last


def test_embed_stream_takes_more_than_max_sequences_lazily_in_input_order(address, sample_fasta):
    chosen = real_records(sample_fasta, 20, max_length=400)  # the server takes 8 per request
    with protssl.Client(address) as client:
        with pytest.raises(InvalidInputError, match="max_sequences"):
            client.embed(chosen)
        streamed = client.embed_stream((r for r in chosen), chunk=6)  # a generator: read lazily
        unary = [client.embed(chosen[i : i + 8]) for i in range(0, 20, 8)]
        plain = client.embed_stream(
            [chosen[0].sequence, "MKV-L", chosen[1].sequence], on_invalid="skip", chunk=2
        )
        with pytest.raises(InvalidInputError, match="2 ids given for more than 2 sequences"):
            client.embed_stream([r.sequence for r in chosen[:3]], ids=["a", "b"])
    assert streamed.ids == [r.id for r in chosen]
    np.testing.assert_allclose(
        streamed.vectors, np.concatenate([u.vectors for u in unary]), atol=1e-5
    )
    assert plain.ids == ["seq0", "seq2"]  # the server's default ids; the invalid one skipped
    np.testing.assert_allclose(plain.vectors, streamed.vectors[:2], atol=1e-5)


def test_calls_of_many_sequences_fit_a_servers_lower_limits(
    model, sample_fasta, tmp_path, by_family
):
    """A server started with --max-sequences under the SDK's chunk (64 a stream message, 256 a
    Classify request) or a low --max-residues refused every message: `protssl embed --server`
    failed with '64 sequences in one stream message; the limit is 5', and no flag could help.
    The server now says its limits (ListModels) and the SDK sizes its messages by them."""
    chosen = real_records(sample_fasta, 23, max_length=400)
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    support = [r for family in ("fn3", "RRM_1") for r in by_family[family][:4]]
    with (
        running_server(model, store=True, database_url=url, max_sequences=5, max_residues=900) as (
            _,
            addr,
            _registry,
        ),
        protssl.Client(addr) as client,
    ):
        streamed = client.embed_stream(chosen)
        summary = client.embed_file(fasta, tmp_path / "out.npz", progress=False)
        client.create_classifier("small", support[:5], method="prototype")
        labels = client.classify("small", chosen)
    assert streamed.ids == [r.id for r in chosen]
    assert summary.records == len(chosen)
    assert [k for k, _, _ in read_vectors(tmp_path / "out.npz")] == [r.id for r in chosen]
    assert [p.id for p in labels] == [r.id for r in chosen]


def test_a_call_cut_off_by_a_server_stopping_says_so_not_that_none_was_reached(model, sample_fasta):
    """A unary call a server was working on when its grace ran out (a restart) ended, after its
    retries found nobody, as 'cannot reach a protssl server at ...', as if the address were
    wrong."""
    chosen = real_records(sample_fasta, 8, max_length=400)
    with running_server(model, **_HOLDS_CHUNKS) as (server, address, registry):
        client = protssl.Client(address, retries=2, backoff=0.05)
        failed: list[Exception] = []

        def call() -> None:
            try:
                client.embed(chosen)
            except UnavailableError as exc:
                failed.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 60  # the call is held in the queue (_HOLDS_CHUNKS) ...
        while time.monotonic() < deadline and not registry.get_sample_value("protssl_queue_depth"):
            time.sleep(0.005)
        server.stop(0.1)  # ... when the server's grace runs out
        thread.join(60)
    client.close()
    assert len(failed) == 1
    message = str(failed[0])
    assert message.startswith(f"{address} went away during the call"), message
    assert "cannot reach" not in message


def test_embed_fasta_names_a_files_bad_records_before_sending_any(model, sample_fasta, tmp_path):
    chosen = real_records(sample_fasta, 5, max_length=400)
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(
        "".join(f">{r.id}\n{r.sequence}\n" for r in chosen) + ">gap\nMKT-AYI\n>after\n\n"
    )
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with (
        running_server(model, store=True, database_url=url) as (_, addr, _registry),
        protssl.Client(addr) as client,
    ):
        with pytest.raises(FastaFormatError, match=r"2 records break .* record 'gap' \(#6\) at "):
            client.embed_fasta(fasta, chunk=2, progress=False)
        again = client.embed(chosen)
    assert again.cached == (False,) * len(chosen)  # nothing was sent


def test_embed_fasta_from_stdin_raises_the_bad_records_error_after_the_ones_before_it(
    model, sample_fasta, tmp_path, monkeypatch
):
    """grpcio swallowed an error raised while reading the input: the call ended as a bare
    'Exception iterating requests!' ServiceError, the record and position lost."""
    chosen = real_records(sample_fasta, 5, max_length=400)
    text = "".join(f">{r.id}\n{r.sequence}\n" for r in chosen) + ">gap\nMKT-AYI\n>after\nMKV\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with (
        running_server(model, store=True, database_url=url) as (_, addr, _registry),
        protssl.Client(addr) as client,
    ):
        with pytest.raises(FastaFormatError, match=r"<stdin>: record 'gap' \(#6\) at position 4"):
            client.embed_fasta("-", chunk=2, progress=False)
        again = client.embed(chosen)  # the records before it were computed and cached
    assert again.cached == (True,) * len(chosen)


def test_segments_pooling_unary_and_streamed_equal_in_process(
    address, model, sample_fasta, tmp_path
):
    fasta = tmp_path / "few.fasta"
    chosen = real_records(sample_fasta, 7, max_length=400)
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    with protssl.Client(address) as client:
        unary = client.embed(chosen, pooling="segments")
        streamed = client.embed_fasta(fasta, chunk=3, pooling="segments", progress=False)
    expected = {
        e.id: e.vector for e in embed_records(chosen, model, EmbedConfig(pooling="segments"))
    }
    assert unary.vectors.shape == (len(chosen), SEGMENTS * 64)
    np.testing.assert_allclose(unary.vectors, np.stack([expected[r.id] for r in chosen]), atol=1e-5)
    np.testing.assert_allclose(streamed.vectors, unary.vectors, atol=1e-5)
    assert {e.provenance.pooling for e in streamed.embeddings} == {"segments"}


def test_list_models(address, model):
    with protssl.Client(address) as client:
        (info,) = client.list_models()
    assert info.sha256 == model.sha256 and info.is_default


def test_typed_errors_carry_the_server_message(address, records):
    with protssl.Client(address) as client:
        with pytest.raises(InvalidInputError, match=r"record 'x' \(#1\) at position 2"):
            client.embed({"x": "M1KV"})
        with pytest.raises(InvalidInputError, match="limit is 8"):
            client.embed(["MKV"] * 9)
        with pytest.raises(NotFoundError, match="not served here"):
            client.embed(records[:1], model="esm2-650m")
        with pytest.raises(DeadlineExceededError):
            client.embed(["MKV" * 300] * 8, timeout=0.001)
        for call, said in (  # refused here, by name, not a TypeError from protobuf
            (lambda: client.embed(["MKV", 5]), r"sequences\[1\] is int 5, not a sequence"),
            (lambda: client.embed(["MKV", "MKT"], ids=[1, 2]), r"ids\[0\] is int 1: ids are"),
            (lambda: client.embed({"a": "MKV"}, ids=["x"]), "ids given twice"),
            (lambda: client.embed(["MKV"], layer="3"), "layer must be a whole number"),
        ):
            with pytest.raises(InvalidInputError, match=said):
                call()


def test_chunked_calls_name_a_bad_record_by_its_place_in_the_whole_input(
    model, by_family, tmp_path
):
    """embed_stream and classify send chunks; a bad record is still #7 of the input, whatever the
    chunk, and an id repeated across classify's chunks is refused as within one (not answered
    twice), an unnamed query's default id included."""
    records = [r for f in ("fn3", "RRM_1") for r in by_family[f][:5]]
    bad = [*records[:6], ProteinRecord("gapped", "MKTA-YIAK"), *records[6:]]
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with (
        running_server(model, store=True, database_url=url) as (_, address, _),
        protssl.Client(address) as client,
    ):
        with pytest.raises(InvalidInputError, match=r"record 'gapped' \(#7\) at position 5"):
            client.embed_stream(bad, chunk=2)
        client.create_classifier("two", records[:6], method="knn")
        with pytest.raises(InvalidInputError, match=r"record 'gapped' \(#7\) at position 5"):
            client.classify("two", bad, chunk=2)
        for chunk in (1, 256):
            with pytest.raises(
                InvalidInputError, match=r"record 'a' \(#2\): duplicate id \(seen earlier"
            ):
                client.classify(
                    "two", [ProteinRecord("a", "MKTA"), ProteinRecord("a", "MKTAA")], chunk=chunk
                )
        with pytest.raises(InvalidInputError, match=r"record 'seq2' \(#3\): duplicate id"):
            client.classify("two", [ProteinRecord("seq2", "MKTA"), "MKTAA", "MKTAAA"], chunk=1)


def test_a_stream_may_run_longer_than_the_timeout_while_it_moves(address):
    """`timeout` bounds a stream's silence, not its length: 30 records fed 0.1 s apart take ~3 s
    against a 1 s timeout (this used to end in DEADLINE_EXCEEDED after 1 s)."""

    def fed_slowly() -> Iterator[str]:
        for _ in range(30):
            time.sleep(0.1)
            yield "MKTAYIAKQRQISFVKSHFSRQ"

    start = time.monotonic()
    with protssl.Client(address, timeout=1) as client:
        result = client.embed_stream(fed_slowly(), chunk=1)
    assert len(result) == 30 and time.monotonic() - start > 2.5


def test_a_call_whose_server_stops_answering_ends_after_the_timeout():
    """A server that takes the call and never answers (hung, or behind a dead connection): a
    stream ends after `timeout` without a message, a unary call at its deadline, each saying so."""
    hang = threading.Event()

    def never_answers(requests, context):
        hang.wait(30)
        return iter(())

    asked: list[object] = []

    def never_returns(request, context):  # but once, as a server without limits to tell
        asked.append(request)
        if len(asked) > 1:
            hang.wait(30)
        return pb.ListModelsResponse()

    handler = grpc.method_handlers_generic_handler(
        "protssl.v1.EmbeddingService",
        {
            "EmbedStream": grpc.stream_stream_rpc_method_handler(never_answers),
            "ListModels": grpc.unary_unary_rpc_method_handler(
                never_returns,
                request_deserializer=pb.ListModelsRequest.FromString,
                response_serializer=pb.ListModelsResponse.SerializeToString,
            ),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        start = time.monotonic()
        client = protssl.Client(f"127.0.0.1:{port}", timeout=1)
        with pytest.raises(DeadlineExceededError) as stalled:
            client.embed_stream(["MKTAYIAKQR"] * 3)
        waited = time.monotonic() - start
        with client, pytest.raises(DeadlineExceededError) as unary:
            client.list_models(timeout=0.5)
    finally:
        hang.set()
        server.stop(None)
    assert 1 <= waited < 5
    assert str(stalled.value) == (
        f"no result from 127.0.0.1:{port} for 1 s (the client's timeout, counted from the last "
        "message each way): the call was cancelled"
    )
    assert str(unary.value) == f"no answer from 127.0.0.1:{port} within the call's timeout of 0.5 s"


def test_retries_until_a_late_server_is_up(model, records):
    port = free_port()
    started, done = threading.Event(), threading.Event()

    def start_late() -> None:
        time.sleep(0.6)
        with running_server(model, port=port):
            started.set()
            done.wait(30)

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    begin = time.monotonic()
    with protssl.Client(f"127.0.0.1:{port}", retries=8, backoff=0.1, max_backoff=0.5) as client:
        result = client.embed(records[:1])
    assert started.is_set() and time.monotonic() - begin >= 0.5
    done.set()
    thread.join()
    assert result.ids == [records[0].id]


def test_unavailable_after_retries():
    client = protssl.Client(f"127.0.0.1:{free_port()}", retries=2, backoff=0.05)
    with client, pytest.raises(UnavailableError):
        client.list_models()


def test_overloaded_is_a_typed_error(model):
    with running_server(model, max_queue=1, max_queue_delay_ms=0) as (_, addr, registry):
        client = protssl.Client(addr)
        errors: list[Exception] = []
        rng = np.random.default_rng(1)
        big = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 1000)) for _ in range(48)]

        def call(sequences: list[str]) -> None:
            try:
                client.embed(sequences)
            except OverloadedError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(big,))]
        threads[0].start()
        deadline = time.monotonic() + 30
        while not registry.get_sample_value("protssl_batch_requests_count"):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        threads += [threading.Thread(target=call, args=(["MKV" * 10],)) for _ in range(4)]
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join()
        client.close()
    assert errors and "queue is full" in str(errors[0])


@pytest.mark.slow
def test_import_protssl_does_not_load_grpc():
    code = (
        "import sys, protssl, protssl.cli, protssl.cli.serve, protssl.embedding, protssl.fasta\n"
        "assert 'grpc' not in sys.modules and 'service' not in sys.modules, 'grpc imported'\n"
        "client = protssl.Client\n"
        "assert 'grpc' in sys.modules and client.__module__ == 'protssl.client'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_classifiers_through_the_sdk(model, by_family, tmp_path):
    support = [r for f in ("fn3", "RRM_1") for r in by_family[f][:4]]
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with (
        running_server(model, store=True, database_url=url) as (_, addr, _registry),
        protssl.Client(addr) as client,
    ):
        info = client.create_classifier("two", support, method="knn")
        assert (info.name, info.version, info.method, info.examples) == ("two", 1, "knn", 8)
        pairs = [(r.sequence, r.labels[0]) for r in by_family["fn3"][4:6]]
        assert client.add_examples("two", pairs).version == 2
        assert [c.name for c in client.list_classifiers()] == ["two"]
        first_version = client.get_classifier("two", version=1)
        assert first_version.examples == 8
        with Store(
            StoreConfig(url=url, migrate=False)
        ) as store:  # the cuts `classifier show` gives
            cuts = store.classifiers.get("two", 1).cuts
        assert cuts["threshold"] is not None and cuts["back_off_levels"] == []
        assert {name: getattr(first_version, name) for name in cuts} == {
            **cuts,
            "back_off_levels": (),
        }
        queries = {r.id: r.sequence for r in by_family["RRM_1"][4:7]}
        first, again = CacheStats(), CacheStats()
        predictions = client.classify("two", queries, stats=first)
        assert client.classify("two", queries, stats=again) == predictions
        assert (first.computed, first.cached, again.computed, again.cached) == (3, 0, 0, 3)
        assert [p.id for p in predictions] == [r.id for r in by_family["RRM_1"][4:7]]
        for p in predictions:
            assert p.status in ("answered", "backed_off", "unknown")
            assert {label for label, _ in p.top} == {"fn3", "RRM_1"}
            assert p.abstained == (p.label == "")
        client.delete_classifier("two")
        with pytest.raises(NotFoundError, match="'two'"):
            client.classify("two", ["MKV"])


def test_biopython_records_go_through_the_sdk_as_protssl_records(model, by_family, tmp_path):
    """What `SeqIO.parse` gives: embedded under their ids, and as classifier examples with their
    labels from `label=` in the description."""
    chosen = [r for f in ("fn3", "RRM_1") for r in by_family[f][:3]]
    theirs = [
        SeqRecord(Seq(r.sequence.lower()), id=r.id, description=f"{r.id} label={r.labels[0]}")
        for r in chosen
    ]
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with (
        running_server(model, store=True, database_url=url) as (_, addr, _registry),
        protssl.Client(addr) as client,
    ):
        embedded = client.embed(theirs)
        assert embedded.ids == [r.id for r in chosen]
        np.testing.assert_allclose(embedded.vectors, client.embed(chosen).vectors, atol=1e-6)
        info = client.create_classifier("two", theirs, method="knn")
        assert (info.examples, sorted(info.labels)) == (6, ["RRM_1", "fn3"])
        (prediction,) = client.classify("two", [theirs[0]])
        assert prediction.id == chosen[0].id


def test_classify_waits_for_a_server_that_restarts(model, by_family, tmp_path, caplog):
    """The server stops between two chunks of one classify call and comes back on the same port
    (the same store) a second later: the call waits, asks again and answers every query as an
    uninterrupted call does. A client that never reached a server fails at once."""
    support = [r for f in ("fn3", "RRM_1") for r in by_family[f][:3]]
    queries = [r.sequence for f in ("fn3", "RRM_1") for r in by_family[f][3:9]]
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    port = free_port()
    back = threading.Event()
    with running_server(model, store=True, database_url=url, port=port) as (server, addr, _):
        client = protssl.Client(addr, reconnect=60, retries=0)  # the outage, not _call, waits
        client.create_classifier("two", support, method="knn")
        whole = client.classify("two", queries, chunk=4)

        def restart() -> None:
            time.sleep(1.0)
            with running_server(model, store=True, database_url=url, port=port):
                back.wait(120)

        restarter = threading.Thread(target=restart)

        def stopping() -> Iterator[str]:  # the server goes after the first chunk was answered
            for index, sequence in enumerate(queries):
                if index == 4:
                    server.stop(grace=None)
                    restarter.start()
                yield sequence

        try:
            with caplog.at_level("WARNING", logger="protssl.client"):
                again = client.classify("two", stopping(), chunk=4)
        finally:
            back.set()
            restarter.join()
            client.close()
    assert "4 of the queries answered so far: trying again for up to 1 min" in caplog.text
    assert "answers again: going on" in caplog.text
    assert [(p.id, p.label, p.status) for p in again] == [(p.id, p.label, p.status) for p in whole]
    start = time.monotonic()
    with (
        protssl.Client(f"127.0.0.1:{free_port()}", reconnect=600, retries=0) as stranger,
        pytest.raises(UnavailableError, match="cannot reach a protssl server"),
    ):
        stranger.classify("two", queries)
    assert time.monotonic() - start < 30


def test_classify_waits_when_the_server_dies_on_its_first_chunk(model, by_family, tmp_path, caplog):
    """Killed while it embeds the first chunk of queries (nothing answered yet), the server was
    still reached: the call waits for the next one on the same store and answers every query as
    an uninterrupted call on a store of its own does."""
    support = [r for f in ("fn3", "RRM_1") for r in by_family[f][:3]]
    queries = [r.sequence for f in ("fn3", "RRM_1") for r in by_family[f][3:9]]
    url, elsewhere = (f"sqlite:///{tmp_path / name}" for name in ("store.sqlite3", "other.sqlite3"))
    port = free_port()
    for store_url in (elsewhere, url):
        with (
            running_server(model, store=True, database_url=store_url) as (_, addr, _),
            protssl.Client(addr) as client,
        ):
            client.create_classifier("two", support, method="knn")
            if store_url == elsewhere:
                whole = client.classify("two", queries, chunk=4)
    stored = {"store": True, "database_url": url}
    with (
        running_server(model, port=port, **stored, **_HOLDS_CHUNKS) as (server, address, registry),
        _back_after(
            partial(_killed_once_queued, server, registry), model, port, **stored
        ) as before,
        caplog.at_level("WARNING", logger="protssl.client"),
        protssl.Client(address, reconnect=60, retries=0) as client,
    ):
        again = client.classify("two", queries, chunk=4)
    assert before == [True]
    assert "went away during the call (stopped or killed?)" in caplog.text, caplog.text
    assert "0 of the queries answered so far: trying again for up to 1 min" in caplog.text
    assert "answers again: going on" in caplog.text
    assert [(p.id, p.label, p.status) for p in again] == [(p.id, p.label, p.status) for p in whole]


def test_classify_takes_any_number_in_chunks_pinned_to_the_first_answers_version(
    model, by_family, tmp_path
):
    third = next(
        f for f, members in by_family.items() if f not in ("fn3", "RRM_1") and len(members) >= 3
    )
    support = [r for f in ("fn3", "RRM_1") for r in by_family[f][:3]]
    queries = [r.sequence for f in ("fn3", "RRM_1", third) for r in by_family[f][3:7]][:10]
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with (
        running_server(model, store=True, database_url=url, max_sequences=6) as (_, addr, _),
        protssl.Client(addr) as client,
    ):
        assert client.create_classifier("two", support, method="knn").version == 1
        # a chunk past the server's max_sequences is cut to it (it was refused)
        assert len(client.classify("two", queries, chunk=10)) == len(queries)

        def meanwhile() -> Iterator[str]:  # version 2, with a third label, lands after chunk one
            for index, sequence in enumerate(queries):
                if index == 4:
                    added = client.add_examples(
                        "two", [(r.sequence, third) for r in by_family[third][:3]]
                    )
                    assert added.version == 2
                yield sequence

        pinned = client.classify("two", meanwhile(), chunk=4)
        latest = client.classify("two", queries[4:6])
        one_by_one = [client.classify("two", [q], version=1)[0] for q in queries]
    assert [p.id for p in pinned] == [f"seq{i}" for i in range(10)]  # numbered across requests
    assert all({label for label, _ in p.top} == {"fn3", "RRM_1"} for p in pinned)  # all version 1
    assert any(third in {label for label, _ in p.top} for p in latest)  # version 2 knows it
    assert [p.label for p in pinned] == [p.label for p in one_by_one]
    for got, alone in zip(pinned, one_by_one, strict=True):  # batch neighbours move last bits only
        assert [label for label, _ in got.top] == [label for label, _ in alone.top]
        assert [x for _, x in got.top] == pytest.approx([x for _, x in alone.top], abs=1e-6)


@pytest.mark.slow
def test_service_demo_runs_end_to_end(tmp_path, capsys):
    from protssl import demo

    model_dir = save_tiny_model(tmp_path / "model")
    update_card_training(model_dir, {"recommended_pooling": "segments"})  # as analyze writes it
    assert demo.main(["--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "embedded 300 proteins" in out
    assert "the first 8 again: 8/8 from the cache" in out and "bit-identical: True" in out
    assert (
        "classifier is-families v1: 6 families from 72 examples, hybrid head, segments pooling"
        in out
    )
    assert "classified 48 held-out transposases" in out and "server stopped" in out
    shown = [line.split() for line in out.splitlines() if " true " in line]
    assert [words[2] for words in shown] == [
        family
        for family in ("IS5", "IS3", "IS1595", "IS200/IS605", "IS110", "IS4")
        for _ in range(2)
    ]
    assert all(words[3] in ("said", "abstains:") for words in shown)


def test_demo_says_why_each_query_abstained():
    from protssl.client import ClassifierInfo, ClientPrediction
    from protssl.demo import _reason

    def prediction(label: str, probability: float, nearest: float, why: str) -> ClientPrediction:
        top = (("IS5", 0.74), ("IS4", 0.14))
        status = "answered" if label else "unknown"
        return ClientPrediction(
            "q", label, probability, status, not label, top, nearest, reason=why
        )

    def fitted(threshold: float) -> ClassifierInfo:
        return ClassifierInfo("is", 1, "linear", "", ("IS5", "IS4"), 8, {}, "", "mean",
                              threshold=threshold, ood_threshold=0.9)  # fmt: skip

    assert _reason(prediction("IS5", 0.74, 0.99, ""), fitted(0.7)).startswith("said IS5 ")
    assert _reason(prediction("", 0.74, 0.85, "out_of_distribution"), fitted(0.7)) == (
        "abstains: nearest support example at cosine 0.850 < out-of-distribution gate 0.900"
    )
    assert _reason(prediction("", 0.74, 0.99, "below_threshold"), fitted(0.79)) == (
        "abstains: best IS5 0.74 < confidence cut 0.79 (set on held-out support; "
        "top: IS5 0.74, IS4 0.14)"
    )


def test_a_client_that_reaches_no_server_says_where_it_looked() -> None:
    port = free_port()
    with (
        protssl.Client(f"127.0.0.1:{port}", retries=0, timeout=5) as client,
        pytest.raises(
            UnavailableError, match=rf"^cannot reach a protssl server at 127\.0\.0\.1:{port}: "
        ),
    ):
        client.list_models()


def test_a_host_without_a_port_reaches_the_default_port(model, monkeypatch) -> None:
    """Client("localhost") went to grpcio's default, 443, not to where `protssl serve` listens.
    The default port here is a free one, so that no other server on this machine is met."""
    port = free_port()
    monkeypatch.setattr(endpoint, "DEFAULT_PORT", port)
    with running_server(model, port=port), protssl.Client("127.0.0.1", retries=0) as client:
        assert client.target == f"127.0.0.1:{port}"
        assert [m.name for m in client.list_models()] == [model.name]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:50051", r"give host:port \(127\.0\.0\.1:50051\)$"),
        ("https://embed.lab.org:443/", r"give host:port \(embed\.lab\.org:443\) with tls=True$"),
    ],
)
def test_a_url_for_a_target_is_refused_saying_what_to_give(url: str, expected: str) -> None:
    """grpcio took it as a host name: 'Misformatted domain name', after the retries."""
    with pytest.raises(
        InvalidInputError, match=rf"^target '{re.escape(url)}' is a URL: {expected}"
    ):
        protssl.Client(url)


@pytest.mark.parametrize(
    ("examples", "said"),
    [
        ("MKTAYIAKQR", r"^examples are records or \(sequence, label\) pairs, not one string"),
        ({"MKTAYIAKQR": "kinase"}, r"not a mapping \(.*list\(mapping.items\(\)\)\)"),
        ([("MKV", "a"), ("MKT",)], r"^example #2: expected a ProteinRecord or a \(sequence, label"),
        (["MKTAYIAKQR"], r"^example #1: .* got str 'MKTAYIAKQR'"),
        ([("MKV", "a"), SeqRecord(Seq(None, 40), id="q2")], r"^example #2: SeqRecord 'q2' has no"),
    ],
)
def test_examples_of_the_wrong_shape_are_refused_naming_the_example(examples, said) -> None:
    """They raised a bare ValueError ('not enough values to unpack') from inside the SDK."""
    with (
        protssl.Client("127.0.0.1:9", retries=0) as client,  # refused before any call is made
        pytest.raises(InvalidInputError, match=said),
    ):
        client.create_classifier("c", examples)


@pytest.mark.parametrize("version", [0, -1, True, 1.0])
def test_a_classifier_version_below_1_is_refused_not_read_as_the_latest(version) -> None:
    """version=0 went on the wire as 0, the latest, where the CLI's --version 0 is refused."""
    with protssl.Client("127.0.0.1:1", retries=0) as client:  # refused before any call
        for call in (
            lambda: client.get_classifier("is-fam", version=version),
            lambda: client.classify("is-fam", ["MKTAYIAKQR"], version=version),
        ):
            with pytest.raises(InvalidInputError, match=r"^version must be a whole number >= 1"):
                call()
