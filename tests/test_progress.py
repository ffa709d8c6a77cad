"""Progress bars: redrawn in place on a terminal, plain lines (a minute apart) in a log file."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from protssl.progress import LOG_INTERVAL_S, progress_bar


def test_in_a_log_file_each_redraw_is_one_plain_line(tmp_path: Path) -> None:
    log = tmp_path / "job.err"
    with log.open("w") as stream:
        bar = progress_bar(total=3, desc="embed", file=stream, mininterval=0)
        for _ in range(3):
            bar.update(1)
        bar.close()
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split("|")[0] for line in lines] == [
        "embed:   0%",
        "embed:  33%",
        "embed:  67%",
        "embed: 100%",
    ]  # the final line once, though tqdm draws it twice


def test_in_a_log_file_a_bar_waits_a_minute_between_lines(tmp_path: Path) -> None:
    with (tmp_path / "job.err").open("w") as stream:
        bar = progress_bar(total=1000, file=stream)
        assert bar.mininterval == LOG_INTERVAL_S == 60.0
        bar.close()


def test_on_a_terminal_the_bar_is_redrawn_in_place() -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            bar = progress_bar(total=2, desc="embed", file=terminal, mininterval=0)
            assert bar.mininterval == 0
            bar.update(2)
            bar.close()
            terminal.flush()
        written = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert "\rembed: 100%" in written


def test_protssl_embed_with_stderr_to_a_file_logs_lines(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(">" + c for c in sample_fasta.read_text().split(">")[1:21]))
    log = tmp_path / "job.err"
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "protssl", "embed", str(fasta), "-o", str(tmp_path / "o.h5"),
             "--model", str(tiny_model_dir), "--no-cache", "--overlap", "16"],
            stdout=subprocess.DEVNULL, stderr=stderr, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text()
    assert lines[0].startswith("embed:   0%") and lines[-1].startswith("embed: 100%")
    assert len(lines) <= 3  # a short run: its first line, its last, at most one between


def test_a_jupyter_notebooks_output_counts_as_a_terminal() -> None:
    """ipykernel's OutStream is no TTY, but a notebook redraws a bar on \\r as a terminal does (no
    ipykernel here: a stream class from a module of that name stands in for it)."""
    written: list[str] = []
    OutStream = type(
        "OutStream",
        (),
        {"__module__": "ipykernel.iostream", "write": written.append, "flush": lambda self: None,
         "isatty": lambda self: False},
    )  # fmt: skip
    bar = progress_bar(total=1, desc="embed", file=OutStream())
    assert bar.mininterval != LOG_INTERVAL_S
    bar.update(1)
    bar.close()
    assert any(text.startswith("\r") for text in written)
