"""`protssl db upgrade|downgrade|current|stats|prune` on SQLite and PostgreSQL, and where `--db`
comes from."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protssl.checkpoint import load_model
from protssl.cli import build_parser, main
from protssl.cli.args import store_config
from protssl.errors import InvalidInputError, NotFoundError
from protssl.fasta import read_fasta
from protssl.store import EmbeddingItem, EmbeddingKey, Store, StoreConfig, sequence_sha256
from protssl.store import engine as engines


def test_db_commands(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = engines.head_revision()
    for argv, shown in (
        (["db", "current"], "base"),  # SQLite: no file yet; PostgreSQL: "base (empty)"
        (["db", "upgrade"], f"at {head}"),
        (["db", "current"], f"{head} (head)"),
        (["db", "downgrade", "base"], "at base"),
        (["db", "upgrade", head], f"at {head}"),
    ):
        args = build_parser().parse_args([*argv, "--db", store_url])
        assert args.func(args) == 0
        assert shown in capsys.readouterr().out


def test_a_store_a_newer_protssl_migrated_says_to_upgrade_protssl(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command read alembic's "Can't locate revision identified by '0099'", and `db
    current` "0099 (head is 0003)", as if the store were behind, not this protssl."""
    args = build_parser().parse_args(["db", "upgrade", "--db", store_url])
    assert args.func(args) == 0
    with Store(StoreConfig(url=store_url)) as store, store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    capsys.readouterr()
    head = engines.head_revision()
    args = build_parser().parse_args(["db", "current", "--db", store_url])
    assert args.func(args) == 0
    assert capsys.readouterr().out.endswith(
        f": 0099 (newer than this protssl, whose head is {head}: upgrade protssl)\n"
    )
    for argv in (["db", "upgrade"], ["db", "downgrade", "base"], ["db", "stats"]):
        assert main([*argv, "--db", store_url]) == 2
        said = capsys.readouterr().err.strip()
        assert said.endswith(
            f"is at schema 0099, newer than this protssl's (its newest is {head}): upgrade "
            "protssl to the version that migrated it"
        ), said
    back = Store(StoreConfig(url=store_url, migrate=False))  # so its schema can be dropped
    with back, back.engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{head}'")


def test_reading_a_store_that_is_not_there_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db stats`, `db current`, `db prune` and `db downgrade` on a SQLite path with no file (a
    typo, a fresh machine) say so and leave no empty store, nor its folder, behind."""
    url = f"sqlite:///{tmp_path / 'typo' / 'store.sqlite3'}"
    for argv, said in (
        (["db", "stats"], "store.sqlite3: no store there yet\nthe embedding cache is empty\n"),
        (["db", "current"], "store.sqlite3: no store there yet (base)\n"),
        (["db", "prune", "--all"], "store.sqlite3: no store there yet; nothing to delete\n"),
        (["db", "downgrade", "base"], "store.sqlite3: no store there yet (base)\n"),
    ):  # prune and downgrade had made a migrated, empty store there
        args = build_parser().parse_args([*argv, "--db", url])
        assert args.func(args) == 0
        assert capsys.readouterr().out.endswith(said)
    args = build_parser().parse_args(["db", "stats", "--json", "--db", url])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == []
    assert not (tmp_path / "typo").exists()


def test_db_url_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("PROTSSL_DATABASE_URL", sqlite_url)
    parse = build_parser().parse_args
    assert store_config(parse(["db", "current"])).url == sqlite_url
    assert store_config(parse(["db", "current", "--db", "sqlite:///x"])).url == "sqlite:///x"


@pytest.mark.slow
def test_db_upgrade_from_another_working_directory(tmp_path: Path) -> None:
    """Migrations are found beside the package, not in the cwd."""
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "-m", "protssl", "db", "upgrade", "--db", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert engines.head_revision() in result.stdout
    engine = engines.create_store_engine(StoreConfig(url=url))
    try:
        assert engines.current_revision(engine) == engines.head_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize("action", [["upgrade"], ["current"]])
def test_a_database_that_refuses_connections_is_one_line(action: list[str]) -> None:
    """psycopg's message has three lines (and SQLAlchemy adds a link); the error keeps the first."""
    url = "postgresql+psycopg://nobody@127.0.0.1:1/x"  # port 1: refused at once
    result = subprocess.run(
        [sys.executable, "-m", "protssl", "db", *action, "--db", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("protssl db: error: reading the schema revision of postgresql+psycopg")
    assert line.endswith("Connection refused")


def test_db_stats_and_prune(
    store_url: str, sample_fasta: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-residue vectors of 40 real proteins (what filled a user's home quota), shown, then pruned."""
    records = [r for r, _ in zip(read_fasta(sample_fasta), range(40), strict=False)]
    rng = np.random.default_rng(0)
    model = "b6" * 32
    with Store(StoreConfig(url=store_url)) as store:
        store.embeddings.put_many(
            EmbeddingItem(
                EmbeddingKey(
                    model, sequence_sha256(r.sequence), pooling, 6, "window:1022:256", "bfloat16"
                ),
                r.sequence,
                rng.standard_normal((len(r), 320) if pooling == "per-residue" else 320),
            )
            for r in records
            for pooling in ("mean", "per-residue")
        )

    def run(*argv: str) -> tuple[int, str]:
        args = build_parser().parse_args(["db", *argv, "--db", store_url])
        code = args.func(args)
        return code, capsys.readouterr().out

    residue_bytes = sum(len(r) for r in records) * 320 * 4
    code, out = run("stats")
    assert code == 0
    lines = out.splitlines()
    named = f"sha256:{model[:12]}"  # written without the model's name
    assert lines[2].split()[:6] == [named, model[:12], "per-residue", "6", "bfloat16", "40"]
    assert lines[3].split()[:6] == [named, model[:12], "mean", "6", "bfloat16", "40"]
    code, out = run("stats", "--json")
    groups = json.loads(out)["groups"]
    assert [(g["pooling"], g["bytes"]) for g in groups] == [
        ("per-residue", residue_bytes),
        ("mean", 40 * 320 * 4),
    ]
    size_before = json.loads(out)["file_bytes"]
    with pytest.raises(InvalidInputError, match="say what to delete"):
        run("prune")
    with pytest.raises(InvalidInputError, match="--all deletes every cached vector: give it alone"):
        run("prune", "--all", "--pooling", "mean")  # not read as "all mean vectors"
    with pytest.raises(
        NotFoundError,
        match=rf"named 'ffffff' .*\(models with cached vectors: {named} \({model[:12]}\)\)",
    ):
        run("prune", "--model", "ffffff")
    with pytest.raises(InvalidInputError) as short:  # b6 is the start of its sha256: too short
        run("prune", "--model", "b6", "--dry-run")
    assert str(short.value) == (
        "--model 'b6': give at least 6 hex digits of the sha256 (or the model's name); "
        f"models with cached vectors: {named} ({model[:12]})"
    )
    assert run("prune", "--model", model[:8], "--pooling", "per-residue", "--dry-run")[1] == (
        f"would delete 40 cached vectors ({residue_bytes / 1e6:.1f} MB)\n"
    )
    code, out = run("prune", "--model", model[:8], "--pooling", "per-residue")
    assert code == 0 and out.startswith(
        f"deleted 40 cached vectors ({residue_bytes / 1e6:.1f} MB); "
    )
    groups = json.loads(run("stats", "--json")[1])["groups"]
    assert [(g["pooling"], g["vectors"]) for g in groups] == [("mean", 40)]
    if store_url.startswith("sqlite"):
        size_after = json.loads(run("stats", "--json")[1])["file_bytes"]
        assert size_after < size_before - residue_bytes * 0.9, (size_before, size_after)
        assert "the SQLite file went from" in out
    else:
        assert "PostgreSQL reuses the space" in out
    assert run("prune", "--all")[1].startswith("deleted 40 cached vectors")
    assert run("stats")[1].splitlines()[-1] == "the embedding cache is empty"


def test_prune_refuses_an_age_that_is_no_number_of_days_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--older-than` 1e9, 1e6, inf or nan: exit 2 and one line saying what to give (each was an
    OverflowError or ValueError traceback), before the store is opened."""
    prune = ["db", "prune", "--dry-run", "--db", f"sqlite:///{tmp_path / 'store.sqlite3'}"]
    for days in ("inf", "nan"):
        with pytest.raises(SystemExit) as refused:
            main([*prune, "--older-than", days])
        assert refused.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"protssl db prune: error: argument --older-than: {days!r} is not a finite number"
        )
    for days in ("1e9", "1e6"):
        assert main([*prune, "--older-than", days]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(
            f"protssl db: error: --older-than {float(days):g} days reaches back before the year 1: "
            "give at most "
        ), line
    assert not (tmp_path / "store.sqlite3").exists()
    assert main(["db", "upgrade", "--db", prune[-1]]) == 0
    capsys.readouterr()
    assert main([*prune, "--older-than", "700000"]) == 0
    assert capsys.readouterr().out == "would delete 0 cached vectors (0 B)\n"


def test_db_stats_and_prune_know_the_model_by_its_name(
    store_url: str,
    tiny_model_dir: Path,
    sample_fasta: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The audit's `db prune --model protssl-default`: every model was stored as `sha256:<12 hex>`,
    so no name was ever found. A store holding such a row names it when `protssl embed` next
    writes that model's vectors; a name two models share is told apart by sha256."""
    records = list(itertools.islice(read_fasta(sample_fasta), 3))
    fasta = tmp_path / "three.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records))
    sha = load_model(tiny_model_dir, dtype="float32").sha256
    old = records[0]
    with Store(StoreConfig(url=store_url)) as store:  # what the store held: an unnamed vector
        key = EmbeddingKey(sha, sequence_sha256(old.sequence), "bos", 2, "x", "float32")
        store.embeddings.put_many([EmbeddingItem(key, old.sequence, np.ones(64))])
    embed = ["embed", str(fasta), "-o", str(tmp_path / "three.h5"), "--no-progress"]
    tiny = ["--model", str(tiny_model_dir), "--dtype", "float32", "--overlap", "16"]
    assert main([*embed, *tiny, "--db", store_url]) == 0
    capsys.readouterr()

    def db(*argv: str) -> tuple[int, str, str]:
        code = main(["db", *argv, "--db", store_url])
        out, err = capsys.readouterr()
        return code, out, err

    lines = db("stats")[1].splitlines()
    assert [line.split()[:3] for line in lines[2:4]] == [
        ["tiny-test", sha[:12], "mean"],
        ["tiny-test", sha[:12], "bos"],
    ]
    groups = json.loads(db("stats", "--json")[1])["groups"]
    assert {g["model_name"] for g in groups} == {"tiny-test"}
    assert db("prune", "--model", "tiny-test", "--dry-run")[1].startswith(
        "would delete 4 cached vectors ("
    )
    twin = "ab" * 32
    with Store(StoreConfig(url=store_url)) as store:
        store.embeddings.put_many(
            [EmbeddingItem(replace(key, model_sha256=twin), old.sequence, np.ones(64))],
            {twin: "tiny-test"},
        )
    code, out, err = db("prune", "--model", "tiny-test")
    assert (code, out) == (2, "")
    both = ", ".join(sorted(f"tiny-test ({s[:12]})" for s in (sha, twin)))
    assert err.splitlines() == [
        f"protssl db: error: 'tiny-test' names 2 models in the store: {both}; give the start of "
        "the sha256 of the one meant (--model repeats)"
    ]
    assert db("prune", "--model", sha[:8])[1].startswith("deleted 4 cached vectors (")
