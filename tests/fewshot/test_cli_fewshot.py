"""The few-shot CLI face: `fewshot-eval`, and `classifier create|add|show` + `classify` on a store."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pytest
from service_support import running_server

from protssl.checkpoint import LoadedModel
from protssl.cli import fewshot as fewshot_cli
from protssl.cli import main
from protssl.errors import ClassifierNotFoundError, InvalidInputError
from protssl.evaluation import evaluate_episodes, evaluate_split
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.fewshot import (
    FewShotClassifier,
    FewShotConfig,
    embed_for_fewshot,
    sample_episodes,
    save_classifier,
)
from protssl.store import Store, StoreConfig

from .support import enzyme_slice, run_cli, two_layers, write_fasta


def test_fewshot_eval_cli_split_episodes_and_report(
    tmp_path: Path,
    windowed_model: LoadedModel,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    support = write_fasta(tmp_path / "support.fasta", is_split[0][:32])
    query = write_fasta(tmp_path / "query.fasta", is_split[1][:24])
    model_dir = str(windowed_model_dir)
    code = run_cli(
        [
            "fewshot-eval",
            "--support",
            str(support),
            "--query",
            str(query),
            "--model",
            model_dir,
            "--method",
            "knn",
            "--dtype",
            "float32",
            "--report",
            str(tmp_path / "report"),
        ]
    )
    assert code == 0
    said = capsys.readouterr()
    out = said.out.strip().splitlines()
    metrics = json.loads(out[-1])
    assert "aligning" not in said.err  # knn aligns nothing
    support_records, query_records = is_split[0][:32], is_split[1][:24]
    features = embed_for_fewshot([*support_records, *query_records], windowed_model, (1, 2, 3))
    expected = evaluate_split(
        {k: v[:32] for k, v in features.items()},
        [r.labels for r in support_records],
        {k: v[32:] for k, v in features.items()},
        [r.labels for r in query_records],
        FewShotConfig(method="knn"),
    ).metrics
    assert metrics == {
        **expected,
        "method": "knn",
        "pooling": "mean",
        "model": "tiny",
        "model_sha256": windowed_model.sha256,
        "report": str(tmp_path / "report" / "index.html"),
    }
    table = [line.strip() for line in out[:-1]]
    for key, value in expected.items():  # the table above the JSON line shows the same figures
        shown = "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else value
        assert f"{key}  {shown}" in table
    assert (tmp_path / "report" / "index.html").is_file()
    # flat labels never back off: the precision of their back-offs is not applicable, not 0.0
    assert metrics["backoff_rate"] == 0.0 and metrics["backoff_precision"] is None
    assert "backoff_precision  n/a" in table
    assert "| backoff_precision | n/a |" in (tmp_path / "report" / "report.md").read_text()

    code = run_cli(
        [
            "fewshot-eval",
            "--support",
            str(support),
            "--episodes",
            "3",
            "--ways",
            "3",
            "--shots",
            "2",
            "--model",
            model_dir,
            "--dtype",
            "float32",
        ]
    )
    said = capsys.readouterr()
    metrics = json.loads(said.out.strip().splitlines()[-1])
    assert code == 0 and metrics["episodes"] == 3 and metrics["n"] == 3 * 3 * 2
    # each episode's held-out and query searches, one bar that ends at its total
    assert _last_bar(said.err).startswith("aligning: 100%")
    # only the records the episodes use were embedded; the whole pool gives the same figures
    labels = [r.labels for r in support_records]
    episodes = sample_episodes(labels, episodes=3, ways=3, shots=2, queries=2, seed=0)
    whole_pool = evaluate_episodes(
        {k: v[:32] for k, v in features.items()},
        labels,
        episodes,
        FewShotConfig(),
        sequences=[r.sequence for r in support_records],
    ).metrics
    assert {k: metrics[k] for k in whole_pool} == pytest.approx(whole_pool)
    assert metrics["method"] == "hybrid"  # auto, the default, with the sequences at hand

    # one episode: no interval (it claimed 0.0, no uncertainty at all)
    one = ["--episodes", "1", "--ways", "3", "--shots", "2", "--model", model_dir]
    assert run_cli(["fewshot-eval", "--support", str(support), *one, "--method", "knn"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["episode_top1_ci95"] is None
    assert "episode_top1_ci95  n/a" in [line.strip() for line in out[:-1]]

    with pytest.raises(InvalidInputError, match="either --query"):
        run_cli(["fewshot-eval", "--support", str(support), "--model", model_dir])


_CLI = (
    "import sys\n"
    "from protssl.cli import build_parser\n"
    "args = build_parser().parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


@pytest.mark.slow
def test_classifier_saved_in_the_store_predicts_the_same_in_a_new_process(
    tmp_path: Path,
    store_url: str,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    support, query = is_split[0][:24], is_split[1][:12]
    support_file = write_fasta(tmp_path / "support.fasta", support)
    query_file = write_fasta(tmp_path / "query.fasta", query)
    common = ["--db", store_url, "--model", str(windowed_model_dir), "--dtype", "float32"]
    assert run_cli(["classifier", "create", "tfam", "--fasta", str(support_file), "--method",
                     "linear", "--pooling", "segments", *common]) == 0  # fmt: skip
    said = capsys.readouterr()
    created = json.loads(said.out.strip().splitlines()[-1])
    assert created["version"] == 1 and created["examples"] == 24
    assert created["pooling"] == "segments"  # classify and add below embed the same way
    assert "res/s" in said.err  # the embedding bar
    quiet = ["classify", "tfam", str(query_file), "--format", "json", "--no-progress", *common]
    assert run_cli(quiet) == 0  # the few-shot commands took no --no-progress
    said = capsys.readouterr()
    here = json.loads(said.out)
    assert "res/s" not in said.err

    done = subprocess.run(
        [sys.executable, "-c", _CLI, "classify", "tfam", str(query_file), "--format", "json",
         *common],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    there = json.loads(done.stdout)
    assert there == here
    assert [p["id"] for p in there] == [r.id for r in query]
    with monkeypatch.context() as patch:  # read, embedded and written 5 records at a time
        patch.setattr(fewshot_cli, "CLASSIFY_CHUNK", 5)
        assert run_cli(["classify", "tfam", str(query_file), "--format", "json", *common]) == 0
        _same_predictions(json.loads(capsys.readouterr().out), here)  # batches differ: 1e-5
        chunked = tmp_path / "chunked.tsv"
        assert run_cli(["classify", "tfam", str(query_file), "-o", str(chunked), *common]) == 0
    whole = tmp_path / "whole.tsv"
    assert run_cli(["classify", "tfam", str(query_file), "-o", str(whole), *common]) == 0
    rows = [line.split("\t") for line in whole.read_text().splitlines()]
    chunked_rows = [line.split("\t") for line in chunked.read_text().splitlines()]
    assert len(rows) == len(chunked_rows) == 1 + len(query) and rows[0] == chunked_rows[0]
    for row, other in zip(rows[1:], chunked_rows[1:], strict=True):
        assert row[:2] + row[3:5] == other[:2] + other[3:5]  # id, label, status, top label
        assert float(row[2]) == pytest.approx(float(other[2]), abs=2e-4)

    # adding examples makes version 2; version 1 still loads and predicts as before
    more = write_fasta(tmp_path / "more.fasta", is_split[0][24:40])
    assert run_cli(["classifier", "add", "tfam", "--fasta", str(more), *common]) == 0
    added = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert added["version"] == 2 and added["examples"] == 40 and added["method"] == "linear"
    assert added["pooling"] == "segments"
    assert run_cli(["classify", "tfam", str(query_file), "--version", "1", "--format", "json",
                     *common]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == here
    assert run_cli(["classifier", "show", "tfam", "--db", store_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2 and shown["layer"] in (1, 2, 3)
    assert run_cli(["classifier", "list", "--json", "--db", store_url]) == 0
    (listed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {k: listed[k] for k in ("name", "version", "examples", "pooling", "method")} == {
        "name": "tfam", "version": 2, "examples": 40, "pooling": "segments", "method": "linear"
    }  # fmt: skip
    assert listed["classes"] == len(shown["classes"])
    assert listed["model_sha256"] == shown["model_sha256"]
    assert run_cli(["classifier", "list", "--db", store_url]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["name", "version", "method"] and row.split()[:3] == [
        "tfam", "2", "linear"
    ]  # fmt: skip

    out = tmp_path / "predictions.tsv"
    assert run_cli(["classify", "tfam", str(query_file), "-o", str(out), *common]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["id", "label", "probability", "status"]
    assert len(rows) == 1 + len(query)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp

    capsys.readouterr()
    nowhere = tmp_path / "missing" / "predictions.tsv"  # refused before any work, not after it
    with pytest.raises(InvalidInputError) as refused:
        run_cli(["classify", "tfam", str(query_file), "-o", str(nowhere), *common])
    assert str(refused.value) == (
        f"output {str(nowhere)!r}: folder {str(nowhere.parent)!r} does not exist"
    )
    said = capsys.readouterr()
    assert "embedding:" not in said.out + said.err

    assert run_cli(["classifier", "delete", "tfam", "--db", store_url]) == 0
    assert capsys.readouterr().out == "classifier 'tfam' deleted (2 versions)\n"
    assert run_cli(["classifier", "list", "--json", "--db", store_url]) == 0
    listing = capsys.readouterr()
    assert listing.out == "" and "no classifiers" in listing.err
    with pytest.raises(ClassifierNotFoundError, match="tfam"):
        run_cli(["classifier", "delete", "tfam", "--db", store_url])


def test_fewshot_eval_hybrid_and_classifier_create_reuse_the_store_vectors(
    tmp_path: Path,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second evaluation or fit on the same sequences computes nothing: the store has them."""
    support = write_fasta(tmp_path / "support.fasta", is_split[0][:24])
    query = write_fasta(tmp_path / "query.fasta", is_split[1][:12])
    common = ["--db", f"sqlite:///{tmp_path / 'store.sqlite3'}"]
    common += ["--model", str(windowed_model_dir), "--dtype", "float32"]
    evaluate = ["fewshot-eval", "--support", str(support), "--query", str(query), *common]
    runs = []
    for _ in range(2):
        assert run_cli([*evaluate, "--method", "hybrid"]) == 0
        captured = capsys.readouterr()
        runs.append((json.loads(captured.out.strip().splitlines()[-1]), captured.err))
    (first, first_err), (second, second_err) = runs
    assert _last_bar(first_err).startswith("aligning: 100%")
    assert first["method"] == "hybrid" and first == second
    assert first["top1_accuracy"] > 0.8  # the transposases' alignments carry the random model
    assert "embedding: 36 sequences computed, 0 from the cache" in first_err
    assert "embedding: 0 sequences computed, 36 from the cache" in second_err
    create = ["classifier", "create", "tfam", "--fasta", str(support), "--method", "hybrid"]
    assert run_cli([*create, *common]) == 0
    said = capsys.readouterr().err
    assert "embedding: 0 sequences computed, 24 from the cache" in said
    assert _last_bar(said).startswith("embedding, aligning: 100%")  # the held-out alignments
    assert run_cli(["classify", "tfam", str(query), "--format", "json", *common]) == 0
    captured = capsys.readouterr()
    assert "embedding: 0 sequences computed, 12 from the cache" in captured.err
    answers = json.loads(captured.out)
    assert {a["evidence"] for a in answers} <= {"alignment", "embedding"}
    assert sum(a["evidence"] == "alignment" for a in answers) >= 6
    more = write_fasta(tmp_path / "more.fasta", is_split[0][24:30])
    assert run_cli(["classifier", "add", "tfam", "--fasta", str(more), *common]) == 0
    said = capsys.readouterr().err
    assert "embedding: 6 sequences computed, 24 from the cache" in said
    # over all 30 examples (it passed its total: it counted the new ones' residues only)
    assert _last_bar(said).startswith("embedding, aligning: 100%")


def _last_bar(err: str) -> str:
    """The last line a progress bar wrote to a log (stderr is not a terminal here)."""
    return [line for line in err.splitlines() if "res/s" in line][-1]


def test_classifier_create_names_every_bad_record_of_its_fasta_before_any_work(
    tmp_path: Path, edge_cases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real internal stops (Prokka IS transposases): all counted, three named, in one line."""
    fasta = edge_cases / "prokka_IS_internal_stops.fasta"
    stops = list(read_fasta(fasta, policy=FastaPolicy(on_invalid="replace")))
    assert len(stops) > 3
    store = tmp_path / "store.db"
    argv = ["classifier", "create", "is", "--fasta", str(fasta), "--db", f"sqlite:///{store}"]
    assert main([*argv, "--model", str(tmp_path / "not-loaded-first")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert (
        f"{len(stops)} records break the FASTA policy: {len(stops)} x invalid residue '*'" in err[0]
    )
    assert f"record {stops[0].id!r} (#1) at position" in err[0]
    assert f"and {len(stops) - 3} more" in err[0]
    assert not store.exists()


def test_classifier_create_refuses_a_layer_the_model_lacks_before_any_work(
    tmp_path: Path,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One line, exit 2, no store made; a progress bar at 0% came first."""
    support = write_fasta(tmp_path / "support.fasta", is_split[0][:24])
    store = tmp_path / "store.db"
    argv = ["classifier", "create", "tfam", "--fasta", str(support), "--layers", "2,9"]
    argv += ["--db", f"sqlite:///{store}", "--model", str(windowed_model_dir)]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "protssl classifier: error: layer 9 is out of range for a 3-layer model"
    ]
    assert not store.exists()


def _same_predictions(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same decisions in the same order, probabilities to float32 batch noise."""
    assert [p["id"] for p in got] == [p["id"] for p in expected]
    for a, b in zip(got, expected, strict=True):
        assert (a["labels"], a["status"], a["top_label"]) == (
            b["labels"],
            b["status"],
            b["top_label"],
        )
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_classify_through_a_server_writes_the_local_table(
    tmp_path: Path,
    windowed_model: LoadedModel,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`classify --server`: the server's store holds the classifier, its model embeds; the table is
    the one a local run writes (probabilities to float32's batch noise)."""
    support_file = write_fasta(tmp_path / "support.fasta", is_split[0][:24])
    query_file = write_fasta(tmp_path / "query.fasta", is_split[1][:12])
    url = f"sqlite:///{tmp_path / 'lab.sqlite3'}"
    local = ["--db", url, "--model", str(windowed_model_dir), "--dtype", "float32"]
    assert run_cli(["classifier", "create", "tfam", "--fasta", str(support_file), *local]) == 0
    said, line = capsys.readouterr().out.strip().splitlines()[-2:]
    assert json.loads(line)["method"] == "hybrid"  # auto, the default: the sequences are at hand
    assert "24 examples, hybrid head, mean pooling, layer" in said
    here, there = tmp_path / "here.tsv", tmp_path / "there.tsv"
    assert run_cli(["classify", "tfam", str(query_file), "-o", str(here), *local]) == 0
    capsys.readouterr()
    with running_server(windowed_model, store=True, database_url=url) as (_, address, _r):
        remote = ["classify", "tfam", str(query_file), "--server", address]
        assert main([*remote, "-o", str(there)]) == 0
        said = capsys.readouterr().err.splitlines()
        assert said[-1] == f"classified 12 records with tfam version 1 on {address}"
        assert said[-2] == "embedding: 0 sequences computed, 12 from the cache"  # the local run's
        assert main([*remote, "--dtype", "float32"]) == 2
        assert capsys.readouterr().err.strip() == (
            "protssl classify: error: --dtype: with --server the server's settings apply (its "
            "model, dtype and store; `protssl serve --help`): leave them out"
        )
        assert main([*remote, "--version", "7"]) == 2
        assert "version 7" in capsys.readouterr().err
    local_only = ["classify", "tfam", str(query_file), "--reconnect", "5"]
    assert main(local_only) == 2
    assert capsys.readouterr().err.strip() == (
        "protssl classify: error: --reconnect goes with --server"
    )
    rows = [line.split("\t") for line in here.read_text().splitlines()]
    remote_rows = [line.split("\t") for line in there.read_text().splitlines()]
    assert len(rows) == len(remote_rows) == 13 and rows[0] == remote_rows[0]
    assert rows[0][-1] == "reason"
    for row, other in zip(rows[1:], remote_rows[1:], strict=True):
        assert row[:2] + row[3:5] == other[:2] + other[3:5]  # id, label, status, top label
        assert row[7] == other[7]  # why it is unknown: the same reason on both faces
        assert (row[7] in ("out_of_distribution", "below_threshold")) == (row[3] == "unknown")
        for column in (2, 5, 6):  # probability, top probability, nearest similarity
            assert float(row[column]) == pytest.approx(float(other[column]), abs=2e-4)


@pytest.fixture(scope="module")
def tfam(
    tmp_path_factory: pytest.TempPathFactory,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> tuple[list[str], Path]:
    """`classify tfam` arguments on a store holding a small classifier, and a query FASTA."""
    folder = tmp_path_factory.mktemp("tfam")
    common = ["--db", f"sqlite:///{folder / 'store.sqlite3'}", "--model", str(windowed_model_dir),
              "--dtype", "float32"]  # fmt: skip
    support = write_fasta(folder / "support.fasta", is_split[0][:16])
    assert main(["classifier", "create", "tfam", "--fasta", str(support), "--method", "knn",
                 *common]) == 0  # fmt: skip
    return ["classify", "tfam", *common], write_fasta(folder / "query.fasta", is_split[1][:4])


def _classify_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of a `classify` that failed with a user error, without its prefix (after the
    progress bar's line, from stdin)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("embedding: ")]
    assert len(errors) == 1 and errors[0].startswith("protssl classify: error: "), lines
    return errors[0].removeprefix("protssl classify: error: ")


def test_classify_never_writes_over_its_input_nor_an_existing_output_unasked(
    tfam: tuple[list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classify, query = tfam
    text = query.read_text()
    link = tmp_path / "link.fasta"
    link.symlink_to(query)
    for output, flags in [(query, []), (query, ["--overwrite"]), (link, ["--overwrite"])]:
        assert main([*classify, str(query), "-o", str(output), *flags]) == 2
        assert (
            _classify_error(capsys) == f"output {str(output)!r} is the input file: give another -o"
        )
        assert query.read_text() == text
    out = tmp_path / "out.tsv"
    out.write_text("kept\n")
    assert main([*classify, str(query), "-o", str(out)]) == 2
    assert _classify_error(capsys) == f"output {str(out)!r} exists: pass --overwrite to replace it"
    assert out.read_text() == "kept\n"
    assert main([*classify, str(query), "-o", str(out), "--overwrite"]) == 0
    assert out.read_text().splitlines()[0].startswith("id\tlabel\tprobability")


def test_classify_says_why_it_has_no_records_as_embed_does(
    tfam: tuple[list[str], Path],
    tmp_path: Path,
    edge_cases: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    classify, _ = tfam
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    assert main([*classify, str(empty)]) == 2
    assert _classify_error(capsys) == f"{empty}: no FASTA records in it; nothing was written"
    stops = edge_cases / "prokka_IS_internal_stops.fasta"  # each record has an internal stop
    n = stops.read_text().count(">")  # 50 (examples/ keeps 5)
    said = f"all {n} records were skipped ({n} by --on-invalid skip); nothing was written"
    assert main([*classify, str(stops), "--on-invalid", "skip"]) == 2
    assert _classify_error(capsys) == f"{stops}: {said}"
    with stops.open() as handle, _stdin(handle):  # read once, as it comes: the same count
        assert main([*classify, "-", "--on-invalid", "skip"]) == 2
    assert _classify_error(capsys) == f"<stdin>: {said}"


def _with_skipped(path: Path, records: list[ProteinRecord]) -> Path:
    """`records` as labelled FASTA followed by three records the skip policies leave out: one with
    an internal stop, one empty, one repeating the first record's id."""
    first = records[0]
    bad = [
        f">stop label={first.labels[0]}\n{first.sequence[:40]}*{first.sequence[41:]}\n",
        f">empty label={first.labels[0]}\n",
        f">{first.id} label={first.labels[0]}\n{records[1].sequence}\n",
    ]
    write_fasta(path, records)
    with path.open("a") as handle:
        handle.writelines(bad)
    return path


_SKIPS = ["--on-invalid", "skip", "--on-empty", "skip", "--on-duplicate", "skip"]


def _skipped_said(path: str | Path, kept: int) -> str:
    return (
        f"{path}: 3 of {kept + 3} records skipped (1 by --on-invalid skip, 1 by --on-empty skip, "
        "1 by --on-duplicate skip)"
    )


def test_classify_says_how_many_records_it_skipped(
    tfam: tuple[list[str], Path],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--on-invalid/--on-empty/--on-duplicate skip` left records out of the table unsaid (2 rows
    for 5 records, exit 0, nothing on stderr): one line now counts them by the setting that did, as
    the error of an input they leave empty words it; from stdin too, counted as it is read."""
    classify, _ = tfam
    query = _with_skipped(tmp_path / "query.fasta", is_split[1][:2])
    assert main([*classify, str(query), *_SKIPS]) == 0
    said = capsys.readouterr()
    assert len(said.out.splitlines()) == 1 + 2  # the header and the 2 records kept
    notes = [line for line in said.err.splitlines() if "skipped" in line]
    assert notes == [_skipped_said(query, 2)]
    with query.open() as handle, _stdin(handle):
        assert main([*classify, "-", "--format", "json", *_SKIPS]) == 0
    said = capsys.readouterr()
    assert len(json.loads(said.out)) == 2
    assert [line for line in said.err.splitlines() if "skipped" in line] == [
        _skipped_said("<stdin>", 2)
    ]
    assert main([*classify, str(write_fasta(tmp_path / "clean.fasta", is_split[1][:2]))]) == 0
    assert "skipped" not in capsys.readouterr().err  # nothing left out, nothing said


def test_classifier_create_add_and_fewshot_eval_say_how_many_records_they_skipped(
    tmp_path: Path,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The labelled files of a fit or an evaluation, each on its own line (support and query)."""
    support = _with_skipped(tmp_path / "support.fasta", is_split[0][:16])
    more = _with_skipped(tmp_path / "more.fasta", is_split[0][16:20])
    query = _with_skipped(tmp_path / "query.fasta", is_split[1][:6])
    common = ["--db", f"sqlite:///{tmp_path / 'store.sqlite3'}", "--model",
              str(windowed_model_dir), "--dtype", "float32", "--method", "knn", *_SKIPS]  # fmt: skip
    for argv, files in [
        (["classifier", "create", "tfam", "--fasta", str(support)], [(support, 16)]),
        (["fewshot-eval", "--support", str(support), "--query", str(query)],
         [(support, 16), (query, 6)]),
    ]:  # fmt: skip
        assert main([*argv, *common]) == 0
        notes = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
        assert notes == [_skipped_said(path, kept) for path, kept in files]
    add = ["classifier", "add", "tfam", "--fasta", str(more), *common[:6], *_SKIPS]
    assert main(add) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert notes == [_skipped_said(more, 4)]


@contextlib.contextmanager
def _stdin(handle: TextIO) -> Iterator[None]:
    """`handle` as sys.stdin (text, with its bytes under .buffer, as the FASTA reader reads it)."""
    saved = sys.stdin
    sys.stdin = handle
    try:
        yield
    finally:
        sys.stdin = saved


@pytest.mark.slow
def test_an_interrupted_classify_says_what_it_kept(
    tfam: tuple[list[str], Path], shared_file: Callable[..., Path], tmp_path: Path
) -> None:
    classify, _ = tfam
    many = shared_file(
        "ec/clean_split10.fasta"
    )  # thousands of records: still running at the signal
    out = tmp_path / "out.tsv"
    store = classify[classify.index("--db") + 1]
    before = _cached_vectors(store)  # the classifier's examples'
    process = subprocess.Popen(
        [sys.executable, "-c", _MAIN, *classify, str(many), "-o", str(out)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while process.poll() is None and _cached_vectors(store) == before:
        assert time.monotonic() < deadline, "classify cached no vector"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"protssl classify: interrupted; nothing was written to {str(out)!r} (it is written whole "
        "at the end); the vectors computed so far are kept in the store's cache, so the same "
        "command does not compute them again"
    )
    assert not out.exists() and _cached_vectors(store) > before


_MAIN = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored, whatever started it\n"
    "from protssl.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _cached_vectors(url: str) -> int:
    with Store(StoreConfig(url=url)) as store:
        return sum(group.vectors for group in store.embeddings.summary())


def test_classifier_create_says_when_no_cut_reaches_the_target_precision(
    tmp_path: Path,
    windowed_model_dir: Path,
    shared_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    enzymes = enzyme_slice(shared_file("ec/clean_split10.fasta"))
    support = write_fasta(tmp_path / "support.fasta", enzymes)
    create = [
        "--fasta",
        str(support),
        "--method",
        "knn",
        "--db",
        f"sqlite:///{tmp_path / 'store.sqlite3'}",
        "--no-progress",
    ]
    create += ["--model", str(windowed_model_dir), "--dtype", "float32"]
    said = {}
    for target in ("0.5", "0.99"):
        name = f"tfam{target}"
        assert run_cli(["classifier", "create", name, *create, "--target-precision", target]) == 0
        captured = capsys.readouterr()
        said[target] = (json.loads(captured.out.strip().splitlines()[-1]), captured.err)
    (reachable, quiet), (unreachable, note) = said["0.5"], said["0.99"]
    best = unreachable["support_metrics"]["best_precision"]
    assert reachable["support_metrics"]["best_precision"] == best < 0.99  # the random model
    assert "target-precision" not in quiet
    assert note.strip().splitlines()[-1] == (
        "note: no confidence cut reaches --target-precision 0.99 on held-out support (the best "
        f"reaches {best:.3f}), so it answers only where it is most sure; a lower "
        "--target-precision answers more"
    )
    answered = [s["support_metrics"]["answered_rate"] for s, _ in said.values()]
    assert answered[1] < answered[0]


def _dotted_multi_label(tmp_path: Path) -> tuple[FewShotClassifier, str]:
    """A hierarchical, multi-label classifier (EC-style labels on composition 'layers', one record
    labelled twice) saved as `ec` in a fresh SQLite store; returns it and the store's URL."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    labels = [("1.1.1.1",), ("1.1.1.2",), ("2.1.1.1",), ("1.1.1.1", "1.1.1.2")] * 4
    records = [
        ProteinRecord(f"r{i}", "".join(rng.choice(alphabet, 60)), labels=label)
        for i, label in enumerate(labels)
    ]
    classifier = FewShotClassifier.fit(
        two_layers(records), labels, FewShotConfig(method="knn", multi_label_ratio=0.5)
    )
    assert [level.depth for level in classifier.levels] == [3, 2, 1]
    url = f"sqlite:///{tmp_path / 'ec.sqlite3'}"
    with Store(StoreConfig(url=url)) as store:
        save_classifier(store, "ec", classifier, records)
    return classifier, url


def test_classifier_show_gives_the_back_off_levels_and_the_multi_label_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`classifier show` left out two of the cuts a decision is held to: each back-off level's
    threshold (a parent such as 1.1.1.- is answered when its summed probability clears it) and the
    multi-label ratio; the SDK's `get_classifier` gives the same (tests/test_wire.py)."""
    classifier, url = _dotted_multi_label(tmp_path)
    assert run_cli(["classifier", "show", "ec", "--db", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["multi_label_ratio"] == 0.5
    assert shown["back_off_levels"] == [
        {"depth": 3, "parents": 2, "threshold": classifier.levels[0].threshold},
        {"depth": 2, "parents": 2, "threshold": classifier.levels[1].threshold},
        {"depth": 1, "parents": 2, "threshold": classifier.levels[2].threshold},
    ]
    assert (shown["threshold"], shown["ood_threshold"], shown["fallback_threshold"]) == (
        classifier.threshold,
        classifier.ood_threshold,
        None,
    )


def test_a_classifier_that_answers_no_held_out_example_says_so_not_accuracy_zero() -> None:
    assert fewshot_cli._answers({"answered_rate": 0.0, "accuracy_on_answered": None}) == (
        "answers none"
    )
    assert fewshot_cli._answers({"answered_rate": 0.0, "accuracy_on_answered": 0.0}) == (
        "answers none"  # as classifiers saved before recorded it
    )
    assert fewshot_cli._answers({"answered_rate": 0.25, "accuracy_on_answered": 0.0}) == (
        "answers 25% at accuracy 0.000"
    )
