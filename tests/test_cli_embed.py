"""`protssl embed`: FASTA to HDF5/.npz/tables, resume, the FASTA policy, the store's cache, one-line errors."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from file_limits import file_size_limit
from other_process import another_process_holding
from ports import free_port
from service_support import load_tiny, running_server

from protssl.cli import main
from protssl.fasta import read_fasta
from protssl.output import journal_path, read_vectors
from protssl.pooling import SEGMENTS
from protssl.store import Store, StoreConfig


def _first_records(src: Path, n: int, dest: Path) -> Path:
    text = src.read_text()
    chunks = text.split(">")[1 : n + 1]
    dest.write_text("".join(">" + c for c in chunks))
    return dest


def _tiny_args(model_dir: Path) -> list[str]:
    """The tiny test model in float32, without a progress bar, windows that fit its 62 residues."""
    return ["--model", str(model_dir), "--no-progress", "--dtype", "float32", "--overlap", "16"]


def _summary(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_embed_h5_then_resume_skips_done_ids(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.h5"
    part = _first_records(sample_fasta, 10, tmp_path / "part.fasta")
    full = _first_records(sample_fasta, 25, tmp_path / "full.fasta")
    base = _tiny_args(tiny_model_dir)
    assert main(["embed", str(part), "-o", str(out), *base]) == 0
    first = _summary(capsys)
    assert first["records"] == 10 and first["errors"] == 0
    assert main(["embed", str(full), "-o", str(out), *base]) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["embed", str(full), "-o", str(out), "--resume", "--overwrite", *base]) == 2
    assert capsys.readouterr().err == (
        "protssl embed: error: --resume and --overwrite contradict each other (--resume "
        "continues OUTPUT, --overwrite replaces it): pass one\n"
    )
    assert main(["embed", str(full), "-o", str(out), "--resume", *base]) == 0
    second = _summary(capsys)
    assert second["resumed"] == 10 and second["records"] == 15
    rows = list(read_vectors(out))
    assert len({r[0] for r in rows}) == 25
    _, vector, attrs = rows[0]
    assert vector.shape == (64,) and vector.dtype == np.float32
    assert attrs["model_name"] == "tiny-test" and attrs["pooling"] == "mean"
    assert len(attrs["model_sha256"]) == 64 and attrs["windowed"] in (0, 1, False, True)


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".csv"])
def test_segments_pooling_writes_four_stretch_means_per_record(
    tiny_model_dir: Path,
    sample_fasta: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
) -> None:
    part = _first_records(sample_fasta, 6, tmp_path / "part.fasta")
    out = tmp_path / f"out{suffix}"
    args = _tiny_args(tiny_model_dir)
    assert main(["embed", str(part), "-o", str(out), "--pooling", "segments", *args]) == 0
    assert _summary(capsys)["records"] == 6
    rows = list(read_vectors(out))
    assert len(rows) == 6
    for _, vector, attrs in rows:
        assert vector.shape == (SEGMENTS * 64,) and attrs["pooling"] == "segments"


def test_a_tsv_holds_the_h5s_vectors_and_resumes(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = _first_records(sample_fasta, 8, tmp_path / "part.fasta")
    full = _first_records(sample_fasta, 20, tmp_path / "full.fasta")
    base = [*_tiny_args(tiny_model_dir), "--no-cache"]
    table, h5 = tmp_path / "v.tsv", tmp_path / "v.h5"
    assert main(["embed", str(part), "-o", str(table), *base]) == 0
    assert main(["embed", str(full), "-o", str(table), "--resume", *base]) == 0
    assert _summary(capsys)["resumed"] == 8
    assert main(["embed", str(full), "-o", str(h5), *base]) == 0
    capsys.readouterr()
    rows = {k: (v.tobytes(), a["length"]) for k, v, a in read_vectors(table)}
    assert rows == {k: (v.tobytes(), a["length"]) for k, v, a in read_vectors(h5)}
    assert len(table.read_text().splitlines()) == 21  # the header and one row per record
    fasta = list(read_fasta(full))
    ids = [r.id for r in fasta]
    assert [k for k, _, _ in read_vectors(table)] == ids  # the input's order
    assert [k for k, _, _ in read_vectors(h5)] == ids  # so is an .h5's (it was sorted by id)
    assert sorted(fasta, key=len) != fasta  # which is not the order the batches ran in
    assert sorted(ids) != ids  # nor the ids' order
    assert (
        main(
            [
                "embed",
                str(full),
                "-o",
                str(tmp_path / "r.tsv"),
                "--pooling",
                "per-residue",
                "--model",
                "no-such-model",
            ]
        )
        == 2
    )  # refused before the model is looked for
    line, _ = _one_line_error(capsys)
    assert line.endswith(
        "a .tsv table holds one vector per record; per-residue vectors go to .h5 or .npz"
    )


def test_embed_through_a_server_writes_what_a_local_run_writes(
    tiny_model_dir: Path,
    sample_fasta: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--server`: the server's model and store compute (a second run is all cache hits), OUTPUT
    is written here; what only a local run decides is refused, as is a server nobody runs."""
    fasta = _first_records(sample_fasta, 12, tmp_path / "twelve.fasta")
    local, remote = tmp_path / "local.tsv", tmp_path / "remote.tsv"
    quiet = ["--no-progress", "--no-cache"]
    model = ["--model", str(tiny_model_dir), "--dtype", "float32"]  # as the server loads it
    assert main(["embed", str(fasta), "-o", str(local), *model, *quiet]) == 0
    capsys.readouterr()
    monkeypatch.setenv("PROTSSL_MODEL", "/a/path/on/this/machine")  # not the server's business
    url = f"sqlite:///{tmp_path / 'server.sqlite3'}"
    with running_server(load_tiny(tiny_model_dir), store=True, database_url=url) as (_, addr, _r):
        remote_args = ["embed", str(fasta), "--server", addr, "--no-progress"]
        assert main([*remote_args, "-o", str(remote)]) == 0
        first = _summary(capsys)
        assert main([*remote_args, "-o", str(tmp_path / "again.h5")]) == 0
        second = _summary(capsys)
        assert main([*remote_args, "-o", str(tmp_path / "x.h5"), "--dtype", "float32"]) == 2
        line, _ = _one_line_error(capsys)
        assert line.endswith(
            "--dtype: with --server the server's settings apply (its model, dtype and store; "
            "`protssl serve --help`): leave them out"
        )
    assert (first["records"], first["computed"], first["cached"]) == (12, 12, 0)
    assert (second["records"], second["computed"], second["cached"]) == (12, 0, 12)
    mine = list(read_vectors(local))
    theirs = list(read_vectors(remote))
    assert [k for k, _, _ in theirs] == [k for k, _, _ in mine]
    np.testing.assert_allclose(
        np.stack([v for _, v, _ in theirs]), np.stack([v for _, v, _ in mine]), atol=1e-5
    )
    assert theirs[0][2]["model_sha256"] == mine[0][2]["model_sha256"]
    gone = ["embed", str(fasta), "-o", str(tmp_path / "y.h5"), "--no-progress"]
    assert main([*gone, "--server", f"127.0.0.1:{free_port()}"]) == 2
    line, _ = _one_line_error(capsys)
    assert "cannot reach a protssl server at 127.0.0.1:" in line
    assert main([*gone, "--server-ca", str(fasta)]) == 2  # a CA with no server to trust
    line, _ = _one_line_error(capsys)
    assert line == "protssl embed: error: --server-ca goes with --server"
    assert main([*gone, "--reconnect", "60"]) == 2
    line, _ = _one_line_error(capsys)
    assert line == "protssl embed: error: --reconnect goes with --server"
    assert main([*gone, "--server", f"127.0.0.1:{free_port()}", "--reconnect", "-1"]) == 2
    line, _ = _one_line_error(capsys)
    assert line == "protssl embed: error: --reconnect must be >= 0 seconds, got -1"
    table = tmp_path / "records.tsv"  # FASTA under a table's name: -o the same would replace it
    table.write_text(fasta.read_text())
    assert main(["embed", str(table), "-o", str(table), "--no-progress", "--overwrite"]) == 2
    line, _ = _one_line_error(capsys)
    assert line == f"protssl embed: error: output {str(table)!r} is the input file: give another -o"
    assert table.read_text() == fasta.read_text()
    assert main([*gone, "--workers", "3", "--ray-address", "auto"]) == 2  # the local engine
    line, _ = _one_line_error(capsys)
    assert line == "protssl embed: error: --ray-address, --workers: go with --engine ray"


def test_embed_through_a_server_takes_its_token_from_the_environment(
    tiny_model_dir: Path,
    sample_fasta: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fasta = _first_records(sample_fasta, 3, tmp_path / "three.fasta")
    url = f"sqlite:///{tmp_path / 'server.sqlite3'}"
    with Store(StoreConfig(url=url)) as store:
        _, token = store.tokens.create("read", name="lab")
    monkeypatch.delenv("PROTSSL_TOKEN", raising=False)
    model = load_tiny(tiny_model_dir)
    with running_server(model, store=True, database_url=url, insecure_no_auth=False) as (
        _,
        address,
        _r,
    ):
        args = ["embed", str(fasta), "-o", str(tmp_path / "o.h5"), "--server", address]
        assert main([*args, "--no-progress"]) == 2
        line, _ = _one_line_error(capsys)
        assert (
            "(this client has none: set $PROTSSL_TOKEN; `protssl token create --role read`" in line
        )
        monkeypatch.setenv("PROTSSL_TOKEN", token)
        assert main([*args, "--no-progress"]) == 0
    assert _summary(capsys)["records"] == 3


def test_resume_refuses_other_provenance(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.h5"
    part = _first_records(sample_fasta, 3, tmp_path / "p.fasta")
    base = ["--model", str(tiny_model_dir), "--no-progress", "--overlap", "16"]
    assert main(["embed", str(part), "-o", str(out), *base]) == 0
    code = main(["embed", str(part), "-o", str(out), "--resume", "--pooling", "bos", *base])
    assert code == 2
    assert "pooling" in capsys.readouterr().err


def test_bad_records_in_a_file_stop_the_job_before_any_work_all_named(
    tiny_model_dir: Path,
    sample_fasta: Path,
    edge_cases: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A job used to embed for hours up to its first bad record, then stop there; the next bad one
    waited for the next run. Now the file is checked first and every problem is named at once."""
    mixed = tmp_path / "mixed.fasta"
    good = _first_records(sample_fasta, 5, tmp_path / "good.fasta").read_text()
    gaps = (edge_cases / "emboss_protgap.fasta").read_text()
    mixed.write_text(good + gaps + good.split(">", 2)[1].join([">", ""]) + ">empty\n")
    out = tmp_path / "mixed.npz"
    code = main(
        [
            "embed",
            str(mixed),
            "-o",
            str(out),
            "--db",
            f"sqlite:///{tmp_path}/s.db",
            *_tiny_args(tiny_model_dir),
        ]
    )
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "mixed.fasta: 3 records break the FASTA policy" in err[0]
    for problem in ("(#6) at position 3", "duplicate id", "record 'empty' (#8)"):
        assert problem in err[0]
    for advice in ("--gaps strip", "--on-invalid skip", "--on-duplicate skip", "--on-empty skip"):
        assert advice in err[0]  # the options the user types; the SDK's field names elsewhere
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["errors"] == 1 and summary["records"] == summary["computed"] == 0
    assert summary["output"] == str(out) and summary["job"] is None
    assert "--on-invalid skip" in summary["error"] and "on_invalid" not in summary["error"]
    assert not out.exists() and not journal_path(out).exists()


def test_a_warning_names_the_options_a_user_types(
    tiny_model_dir: Path, edge_cases: Path, tmp_path: Path
) -> None:
    """Gaps that --on-invalid replace turns into X: the warning names the command's options."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "protssl", "embed", str(edge_cases / "emboss_protgap.fasta")),
            *("-o", str(tmp_path / "gaps.h5"), "--on-invalid", "replace"),
            *_tiny_args(tiny_model_dir),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "1 record(s) with alignment gaps, which --on-invalid replace makes X" in done.stderr
    assert "--gaps strip removes them" in done.stderr and "on_invalid" not in done.stderr


def test_a_bad_record_on_stdin_keeps_the_records_before_it(
    tiny_model_dir: Path,
    sample_fasta: Path,
    edge_cases: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stdin is read once, as it comes: there the first bad record ends the job after the ones before it."""
    good = _first_records(sample_fasta, 5, tmp_path / "good.fasta").read_text()
    data = (good + (edge_cases / "emboss_protgap.fasta").read_text()).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = tmp_path / "piped.npz"
    assert main(["embed", "-", "-o", str(out), *_tiny_args(tiny_model_dir)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "<stdin>: record 'FASTA' (#6) at position 3" in err[0]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["errors"] == 1 and summary["records"] == 5
    assert len(list(read_vectors(out))) == 5


def test_an_input_the_policy_skips_whole_is_refused_and_writes_nothing(
    tiny_model_dir: Path,
    edge_cases: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every record skipped leaves no OUTPUT: exit 2 saying so (it said 0 and wrote nothing, so a
    pipeline failed later on a missing file), as classify does, from a file, stdin or a server;
    an OUTPUT that --overwrite would replace is left as it was."""
    stops = edge_cases / "prokka_IS_internal_stops.fasta"  # each record has an internal stop
    n = stops.read_text().count(">")
    said = f"all {n} records were skipped ({n} by --on-invalid skip); nothing was written"
    out = tmp_path / "stops.h5"
    skip = ["--on-invalid", "skip", *_tiny_args(tiny_model_dir)]
    assert main(["embed", str(stops), "-o", str(out), *skip, "--no-cache"]) == 2
    line, stdout = _one_line_error(capsys)
    assert line == f"protssl embed: error: {stops}: {said}"
    summary = json.loads(stdout.splitlines()[-1])
    assert (summary["records"], summary["skipped"], summary["errors"]) == (0, n, 1)
    assert not out.exists() and not journal_path(out).exists()
    db = ["--db", f"sqlite:///{tmp_path / 'store.sqlite3'}"]
    ray = tmp_path / "parts"
    assert main(["embed", str(stops), "-o", str(ray), "--engine", "ray", *skip, *db]) == 2
    assert _one_line_error(capsys)[0] == f"protssl embed: error: {stops}: {said}"
    assert not ray.exists()
    out.write_text("kept\n")
    assert main(["embed", str(stops), "-o", str(out), "--overwrite", *skip, *db]) == 2
    assert _one_line_error(capsys)[0] == f"protssl embed: error: {stops}: {said}"
    assert out.read_text() == "kept\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stops.read_bytes())))
    assert main(["embed", "-", "-o", str(tmp_path / "piped.h5"), *skip, "--no-cache"]) == 2
    line, stdout = _one_line_error(capsys)
    assert line == f"protssl embed: error: <stdin>: {said}"
    assert json.loads(stdout.splitlines()[-1])["skipped"] == n
    assert not (tmp_path / "piped.h5").exists()
    with running_server(load_tiny(tiny_model_dir)) as (_, address, _r):
        remote = ["--on-invalid", "skip", "--no-progress", "--server", address]
        assert main(["embed", str(stops), "-o", str(tmp_path / "r.h5"), *remote]) == 2
    line, stdout = _one_line_error(capsys)
    assert line == f"protssl embed: error: {stops}: {said}"
    assert json.loads(stdout.splitlines()[-1])["skipped"] == n
    assert not (tmp_path / "r.h5").exists()


def test_skip_policy_counts_and_names(
    tiny_model_dir: Path,
    sample_fasta: Path,
    edge_cases: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stops = (edge_cases / "prokka_IS_internal_stops.fasta").read_text()
    mixed = _first_records(sample_fasta, 3, tmp_path / "mixed.fasta")
    mixed.write_text(mixed.read_text() + stops)
    args = ["embed", str(mixed), "-o", str(tmp_path / "s.h5"), "--on-invalid", "skip"]
    assert main([*args, *_tiny_args(tiny_model_dir)]) == 0
    summary = _summary(capsys)
    assert summary["records"] == 3 and summary["skipped"] == stops.count(">")
    assert summary["skipped_ids"][0] == stops.split()[0].lstrip(">")


def test_console_script_user_errors_are_one_line(tmp_path: Path, edge_cases: Path) -> None:
    env = {**os.environ, "PROTSSL_MODEL": str(tmp_path / "missing-model")}
    cases = [
        ["embed", str(tmp_path / "nope.fasta"), "-o", str(tmp_path / "x.h5")],
        ["embed", str(edge_cases / "emboss_protgap.fasta"), "-o", str(tmp_path / "y.h5")],
        ["embed", str(edge_cases / "emboss_protgap.fasta"), "-o", str(tmp_path / "y.csv")],
    ]
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "protssl", *args], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("protssl embed: error:"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_second_embed_reads_everything_from_the_store(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fasta = _first_records(sample_fasta, 12, tmp_path / "twelve.fasta")
    base = ["--model", str(tiny_model_dir), "--no-progress", "--overlap", "16"]
    base += ["--db", f"sqlite:///{tmp_path / 'cache.sqlite3'}"]
    assert main(["embed", str(fasta), "-o", str(tmp_path / "a.h5"), *base]) == 0
    first = _summary(capsys)
    assert main(["embed", str(fasta), "-o", str(tmp_path / "b.h5"), *base]) == 0
    second = _summary(capsys)
    assert (first["computed"], first["cached"]) == (12, 0)
    assert (second["computed"], second["cached"]) == (0, 12)
    a = {i: v for i, v, _ in read_vectors(tmp_path / "a.h5")}
    b = {i: v for i, v, _ in read_vectors(tmp_path / "b.h5")}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """(the one stderr line, stdout) of a command that failed with a user error."""
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("protssl embed: error:"), captured.err
    return lines[0], captured.out


def _summary_of_error(line: str, stdout: str) -> dict:
    """The JSON summary, the last line on stdout, which names the error of the one stderr line."""
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["errors"] == 1 and summary["records"] == 0
    assert summary["error"] == line.removeprefix("protssl embed: error: ")
    return summary


def test_user_errors_are_one_line_before_any_work(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fasta = _first_records(sample_fasta, 3, tmp_path / "three.fasta")
    base = ["--model", str(tiny_model_dir), "--no-progress", "--no-cache"]
    packed = gzip.compress(fasta.read_bytes())
    (tmp_path / "truncated.fasta.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "corrupt.fasta.gz").write_bytes(packed[:12] + b"\xff" * 40 + packed[52:])
    (tmp_path / "a-folder.h5").mkdir()
    (tmp_path / "not-hdf5.h5").write_text("hello\n")
    (tmp_path / "not-npz.npz").write_text("hello\n")
    (tmp_path / "empty.fasta").write_text("")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = str(tmp_path / "o.h5")
    cases = [
        ([str(tmp_path / "truncated.fasta.gz"), "-o", out], "truncated.fasta.gz: corrupt or trunc"),
        ([str(tmp_path / "corrupt.fasta.gz"), "-o", out], "corrupt.fasta.gz: corrupt or truncated"),
        ([str(tmp_path), "-o", out], "is a folder, not a FASTA file"),
        ([str(fasta), "-o", str(tmp_path / "missing" / "o.npz")], "does not exist"),
        ([str(fasta), "-o", str(a_file / "o.npz")], "is not a folder"),
        ([str(fasta), "-o", "/proc/o.npz"], "cannot write in folder '/proc'"),
        ([str(fasta), "-o", str(tmp_path / "a-folder.h5"), "--overwrite"], "is a folder"),
        ([str(fasta), "-o", str(tmp_path / "not-hdf5.h5"), "--resume"], "not an HDF5 file"),
        ([str(fasta), "-o", str(tmp_path / "not-npz.npz"), "--resume"], "not a .npz file"),
        ([str(fasta), "-o", out, "--overlap", "100000"], "must be smaller than the window"),
        ([str(fasta), "-o", out, "--max-tokens", "0"], "--max-tokens must be at least 8, got 0"),
        ([str(fasta), "-o", out, "--read-ahead", "0"], "--read-ahead must be positive"),
        ([str(fasta), "-o", out, "--overlap", "-3"], "--overlap must be >= 0, got -3"),
        ([str(fasta), "-o", out, "--overlap", "40"], "--overlap 40 is over half the window"),
        ([str(fasta), "-o", out, "--max-tokens", "20"], "--max-tokens 20 is below one full window"),
        ([str(tmp_path / "nothing.fa"), "-o", out], "nothing.fa: no such file"),
        ([str(fasta), "-o", str(tmp_path / "o.txt")], "unknown format .txt"),
        ([str(fasta), "-o", str(tmp_path / "o.tsv"), "--pooling", "per-residue"], "one vector"),
        ([str(fasta), "-o", out, "--layer", "7"], "layer 7 is out of range for a 2-layer model"),
        ([str(fasta), "-o", out, "--resume", "--overwrite"], "contradict each other"),
    ]  # the overlap: said at once, though no record here is long enough to be windowed
    for args, said in cases:
        assert main(["embed", *args, *base]) == 2, args
        line, stdout = _one_line_error(capsys)
        assert said in line, (args, line)
        assert _summary_of_error(line, stdout)["output"] == args[2]
    assert main(["embed", str(fasta), "-o", out, "--model", "no-such-model", *base[2:]]) == 2
    line, stdout = _one_line_error(capsys)
    assert "no-such-model" in line and _summary_of_error(line, stdout)
    assert (tmp_path / "not-hdf5.h5").read_text() == "hello\n"  # left as it was
    assert main(["embed", str(tmp_path / "empty.fasta"), "-o", out, *base]) == 2
    line, stdout = _one_line_error(capsys)
    assert "empty.fasta: no FASTA records in it" in line
    assert json.loads(stdout.splitlines()[-1])["records"] == 0 and not Path(out).exists()
    for url, said in [
        (f"sqlite:///{a_file}/s.sqlite3", "cannot create its folder"),
        (
            f"sqlite:///{a_file}/s.sqlite3",
            "give another store (--db URL, or PROTSSL_DATABASE_URL) or none (--no-cache)",
        ),
        (f"sqlite:///{tmp_path}", "is a folder"),
    ]:
        args = ["embed", str(fasta), "-o", out, "--model", str(tiny_model_dir), "--db", url]
        assert main([*args, "--no-progress"]) == 2
        line, stdout = _one_line_error(capsys)
        assert said in line, line
        _summary_of_error(line, stdout)


def test_a_layer_the_model_lacks_is_refused_before_a_job_is_recorded(
    tiny_model_dir: Path,
    sample_fasta: Path,
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fasta = _first_records(sample_fasta, 3, tmp_path / "three.fasta")
    out = tmp_path / "o.h5"
    base = [str(fasta), "-o", str(out), *_tiny_args(tiny_model_dir), "--db", sqlite_url]
    assert main(["embed", *base, "--layer", "99"]) == 2
    line, _ = _one_line_error(capsys)
    assert line == "protssl embed: error: layer 99 is out of range for a 2-layer model"
    assert not out.exists()
    with Store(StoreConfig(url=sqlite_url)) as store:
        assert store.jobs.list() == []  # no failed job left for a typo
    assert main(["embed", *base, "--layer", "-1"]) == 0  # the same run with a layer it has
    with Store(StoreConfig(url=sqlite_url)) as store:
        assert [job.status for job in store.jobs.list()] == ["succeeded"]


def test_a_corrupt_h5_to_resume_says_what_to_do(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an in-place HDF5 writer killed midway used to leave: one line, then --overwrite works."""
    fasta = _first_records(sample_fasta, 4, tmp_path / "four.fasta")
    out = tmp_path / "o.h5"
    base = ["--model", str(tiny_model_dir), "--no-progress", "--no-cache", "--overlap", "16"]
    assert main(["embed", str(fasta), "-o", str(out), *base]) == 0
    capsys.readouterr()
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 3])
    assert main(["embed", str(fasta), "-o", str(out), "--resume", *base]) == 2
    line, _ = _one_line_error(capsys)
    assert str(out) in line and "not an HDF5 file" in line and "--overwrite" in line
    npz = tmp_path / "o.npz"
    assert main(["embed", str(fasta), "-o", str(npz), *base]) == 0
    capsys.readouterr()
    npz.write_bytes(npz.read_bytes()[:200])  # a zip cut short
    assert main(["embed", str(fasta), "-o", str(npz), "--resume", *base]) == 2
    line, _ = _one_line_error(capsys)
    assert str(npz) in line and "not a .npz file" in line and "--overwrite" in line
    assert main(["embed", str(fasta), "-o", str(out), "--overwrite", *base]) == 0
    assert _summary(capsys)["records"] == 4 and len(list(read_vectors(out))) == 4


def test_gzip_on_stdin_is_detected_by_its_magic_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "in.fasta"
    plain.write_text(">a desc\nMKVLAAGIVG\n>b\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n")
    out = {}
    for name, data in (("plain", plain.read_bytes()), ("gz", gzip.compress(plain.read_bytes()))):
        target = tmp_path / f"{name}.npz"
        args = ["-", "-o", str(target), "--model", str(tiny_model_dir), "--overlap", "16"]
        done = subprocess.run(
            [sys.executable, "-m", "protssl", "embed", *args, "--no-cache", "--no-progress"],
            input=data,
            capture_output=True,
        )
        assert done.returncode == 0, done.stderr.decode()
        out[name] = {key: vector for key, vector, _ in read_vectors(target)}
    assert sorted(out["gz"]) == ["a", "b"]
    for key, vector in out["plain"].items():
        np.testing.assert_array_equal(out["gz"][key], vector)


def _embed_child(
    fasta: Path, out: Path, model_dir: Path, *extra: str, max_file_bytes: int | None
) -> subprocess.CompletedProcess[str]:
    """`protssl embed` in a child whose files stop at `max_file_bytes` (a full disk, for real)."""
    args = ["-o", str(out), "--model", str(model_dir), "--overlap", "16", "--dtype", "float32"]
    args += ["--no-cache", "--no-progress", *extra]
    return subprocess.run(
        [sys.executable, "-m", "protssl", "embed", str(fasta), *args],
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit(max_file_bytes) if max_file_bytes else None,
    )


def test_a_full_disk_at_the_merge_keeps_the_chunks_and_resume_finishes(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    """100 records: two journal chunks (64 + 36 records, ~62 and ~36 kB) fit under 80 kB, the
    merged OUTPUT (~95 kB) does not. One line, exit 2, the chunks kept, no temp file, no crash."""
    fasta = _first_records(sample_fasta, 100, tmp_path / "hundred.fasta")
    out = tmp_path / "o.h5"
    failed = _embed_child(fasta, out, tiny_model_dir, max_file_bytes=80_000)
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, failed.stderr  # no traceback, no HDF5 noise
    assert lines[0].startswith(f"protssl embed: error: output {str(out)!r}: writing {str(out)!r}")
    assert "File too large" in lines[0] and "the 100 record(s) written before it" in lines[0]
    assert repr(str(journal_path(out))) in lines[0] and "--resume" in lines[0]
    assert json.loads(failed.stdout.splitlines()[-1])["error"] in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in journal_path(out).iterdir()) == [
        "chunk-000001.npz",
        "chunk-000002.npz",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hundred.fasta", "o.h5.partial"]

    resumed = _embed_child(fasta, out, tiny_model_dir, "--resume", max_file_bytes=None)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])["resumed"] == 100
    whole = tmp_path / "whole.h5"
    assert _embed_child(fasta, whole, tiny_model_dir, max_file_bytes=None).returncode == 0
    got = {key: vector for key, vector, _ in read_vectors(out)}
    want = {key: vector for key, vector, _ in read_vectors(whole)}
    assert sorted(got) == sorted(want) and len(got) == 100
    for key, vector in want.items():
        np.testing.assert_array_equal(got[key], vector)


def test_a_store_that_refuses_writes_is_one_line_not_a_traceback(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only SQLite store (here opened read-only; a file the user may not write, or a
    PostgreSQL role without INSERT, alike) failed recording the job: a traceback, exit 1."""
    fasta = _first_records(sample_fasta, 3, tmp_path / "three.fasta")
    store = tmp_path / "s.sqlite3"
    assert main(["db", "upgrade", "--db", f"sqlite:///{store}"]) == 0
    read_only = f"sqlite:///file:{store}?mode=ro&uri=true"
    out = tmp_path / "o.h5"
    assert (
        main(["embed", str(fasta), "-o", str(out), *_tiny_args(tiny_model_dir), "--db", read_only])
        == 2
    )
    line, stdout = _one_line_error(capsys)
    assert line == (
        "protssl embed: error: the store refuses this user's writes (a read-only file, or no "
        "permission on its tables): recording the job failed; give a store it may write (--db) "
        "or none (--no-cache)"
    )
    assert _summary_of_error(line, stdout)["records"] == 0 and not out.exists()


def test_ctrl_c_during_overwrite_keeps_output_and_resume_finishes(
    tiny_model_dir: Path,
    sample_fasta: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C after the first flush of an --overwrite run (130 records, 2 flushes) left OUTPUT
    with the 64 new records and the old 30 gone; now OUTPUT is as it was, the stop says how to
    go on, and --resume (the store's job continued) finishes with the new input's records only."""
    old = _first_records(sample_fasta, 30, tmp_path / "old.fasta")
    after_old = tmp_path / "after-old.fasta"
    after_old.write_text(">" + sample_fasta.read_text().split(">", 31)[-1])  # record 31 on
    new = _first_records(after_old, 130, tmp_path / "new.fasta")
    out = tmp_path / "o.h5"
    db = ["--db", f"sqlite:///{tmp_path / 's.sqlite3'}"]
    base = [*_tiny_args(tiny_model_dir), *db]
    assert main(["embed", str(old), "-o", str(out), *base]) == 0
    before = out.read_bytes()
    capsys.readouterr()

    class StopAfterFirstFlush:
        def __call__(self) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr("protssl.embed_file.MemoryReleaser", StopAfterFirstFlush)
    assert main(["embed", str(new), "-o", str(out), "--overwrite", *base]) == 130
    err = capsys.readouterr().err
    assert out.read_bytes() == before
    assert err == (
        f"protssl embed: interrupted; output {str(out)!r} is as it was; the 64 new record(s) are "
        f"in {str(journal_path(out))!r}: run the command with --resume in place of --overwrite "
        "to finish replacing it\n"
    )
    monkeypatch.undo()
    assert main(["embed", str(new), "-o", str(out), "--resume", *base]) == 0
    summary = _summary(capsys)
    assert summary["resumed"] == 64 and summary["records"] == 66 and summary["continued"]
    ids = [key for key, _, _ in read_vectors(out)]
    assert ids == [record.id for record in read_fasta(new)]


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".tsv"])
def test_an_id_too_long_for_the_output_is_refused_by_name_before_any_work(
    suffix: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 70,000-character id crashed every format at the first flush (struct.error: a .npz
    entry's name holds 65,535 bytes) after its forward; now the FASTA check refuses it."""
    fasta = tmp_path / "long.fa"
    fasta.write_text(f">x\nMKTAYIAKQR\n>{'L' * 70_000}\nMSEQLK\n")
    out = tmp_path / f"o{suffix}"
    args = ["embed", str(fasta), "-o", str(out), "--no-cache", *_tiny_args(tiny_model_dir)]
    assert main(args) == 2
    line, stdout = _one_line_error(capsys)
    assert line == (
        f"protssl embed: error: {fasta}: record 'LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL…' (#2): "
        "the id is 70,000 bytes long; ids up to 16,384 bytes (UTF-8) fit every output format"
    )
    assert json.loads(stdout.splitlines()[-1])["computed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.fa"]


def test_a_job_that_crashes_is_recorded_failed_not_left_running(
    tiny_model_dir: Path,
    sample_fasta: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unexpected error (exit 1, traceback) skipped the job's finish: it stayed `running` in
    the store for ever. Now any exception marks it failed, and is raised as it came."""
    fasta = _first_records(sample_fasta, 70, tmp_path / "seventy.fasta")
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"

    class BrokenAfterFirstFlush:
        def __call__(self) -> None:
            raise RuntimeError("a bug")

    monkeypatch.setattr("protssl.embed_file.MemoryReleaser", BrokenAfterFirstFlush)
    args = ["embed", str(fasta), "-o", str(tmp_path / "o.h5"), "--db", url]
    with pytest.raises(RuntimeError, match="a bug"):
        main([*args, *_tiny_args(tiny_model_dir)])
    with Store(StoreConfig(url=url)) as store:
        (job,) = store.jobs.list()
    assert (job.status, job.done, job.error) == ("failed", 64, "unexpected RuntimeError: a bug")
    assert _summary(capsys)["error"] == "unexpected RuntimeError: a bug"


def test_a_full_disk_before_any_chunk_leaves_nothing_to_resume(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    fasta = _first_records(sample_fasta, 100, tmp_path / "hundred.fasta")
    out = tmp_path / "o.npz"
    failed = _embed_child(fasta, out, tiny_model_dir, max_file_bytes=20_000)
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    chunk = journal_path(out) / "chunk-000001.npz"
    assert lines == [
        f"protssl embed: error: output {str(out)!r}: writing {str(chunk)!r} failed: File too "
        "large; no record was written before it"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hundred.fasta"]  # no journal to resume
    again = _embed_child(fasta, out, tiny_model_dir, max_file_bytes=None)
    assert again.returncode == 0, again.stderr
    assert len(list(read_vectors(out))) == 100


def test_a_second_embed_to_an_output_being_written_is_refused(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    """The same command started twice (with the store, the second would continue the first's job
    and write into its journal): the second stops before any work, naming the first's pid."""
    fasta = _first_records(sample_fasta, 4, tmp_path / "four.fasta")
    out = tmp_path / "o.h5"
    setup = f"from protssl.output import open_writer\nwriter = open_writer({str(out)!r})"
    with another_process_holding(setup) as pid:
        for extra in ((), ("--resume",), ("--overwrite",)):
            refused = _embed_child(fasta, out, tiny_model_dir, *extra, max_file_bytes=None)
            assert refused.returncode == 2, refused.stderr
            assert refused.stderr.splitlines() == [
                f"protssl embed: error: output {str(out)!r} is being written by another process "
                f"(pid {pid}): wait for it to end, or write to another file"
            ]
    done = _embed_child(fasta, out, tiny_model_dir, "--resume", max_file_bytes=None)
    assert done.returncode == 0, done.stderr
    assert len(list(read_vectors(out))) == 4


def test_a_job_whose_output_cannot_fit_is_refused_before_any_work(
    tiny_model_dir: Path,
    sample_fasta: Path,
    small_disk: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Per-residue vectors take ~1 kB per residue for ESM-2 8M: the 36 MB corpus would need 84 GB
    at the merge (measured: refused on a disk with 81.5 GB free). Here a real 2 MiB disk."""
    fasta = _first_records(sample_fasta, 40, tmp_path / "forty.fasta")
    out = small_disk / "o.h5"
    args = ["embed", str(fasta), "-o", str(out), "--no-cache", *_tiny_args(tiny_model_dir)]
    assert main([*args, "--pooling", "per-residue"]) == 2
    line, stdout = _one_line_error(capsys)
    assert "not enough disk space for this job: " in line and "40 per-residue vectors" in line
    assert json.loads(stdout.splitlines()[-1])["computed"] == 0
    assert list(small_disk.iterdir()) == []  # no output, no parts folder
    assert main(args) == 0  # mean vectors of the same records fit
    assert _summary(capsys)["computed"] == 40 and out.is_file()


def test_a_store_without_room_for_the_job_is_warned_about_then_says_it_is_full(
    tiny_model_dir: Path,
    sample_fasta: Path,
    small_disk: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store may hold some of a job's vectors already, so its room is a warning, not a refusal;
    on a real 2 MiB disk the job then stops at the full store with what to do."""
    fasta = _first_records(sample_fasta, 40, tmp_path / "forty.fasta")
    out = tmp_path / "o.h5"
    args = ["embed", str(fasta), "-o", str(out), *_tiny_args(tiny_model_dir)]
    db = ["--db", f"sqlite:///{small_disk / 's.sqlite3'}", "--pooling", "per-residue"]
    assert main([*args, *db]) == 2
    warned = [r.getMessage() for r in caplog.records if "free on its disk" in r.getMessage()]
    assert len(warned) == 1 and "--no-cache leaves the store out" in warned[0]
    line, _ = _one_line_error(capsys)
    assert "the store is full" in line and "--no-cache" in line


def test_window_policy_refuse_names_the_file_the_record_and_the_flag(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records before the long one are written and kept; the summary times what was done."""
    window = load_tiny(tiny_model_dir).encoder.config.max_residues
    records = list(read_fasta(sample_fasta))
    short = [r for r in records if len(r) <= window][:3]
    long = next(r for r in records if len(r) > window)
    fasta = tmp_path / "some.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in [*short, long]))
    first_long = len(short)
    out = tmp_path / "out.h5"
    argv = ["embed", str(fasta), "-o", str(out), "--window-policy", "refuse", "--no-cache"]
    assert main([*argv, *_tiny_args(tiny_model_dir)]) == 2
    line, stdout = _one_line_error(capsys)
    assert line == (
        f"protssl embed: error: {fasta}: record {long.id!r} (#{first_long + 1}) has {len(long)} "
        f"residues, more than the model's window of {window}; --window-policy window embeds it "
        "in overlapping windows"
    )
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["records"] == first_long == len(list(read_vectors(out))) > 0
    assert summary["seconds"] > 0 and summary["res_per_s"] > 0
