"""What entry points share: errors become one line and the error table's exit code; one log format."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from protssl.entrypoint import Terminated, keeping, run_main
from protssl.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    ClassifierNotFoundError,
    InvalidInputError,
    StoreError,
)


def _raises(exc: BaseException) -> Callable[[], int]:
    def run() -> int:
        raise exc

    return run


@pytest.mark.parametrize(
    ("exc", "code", "said"),
    [
        (InvalidInputError("no such file"), EXIT_USER_ERROR, "prog: error: no such file\n"),
        (ClassifierNotFoundError("no 'x'"), EXIT_USER_ERROR, "prog: error: no 'x'\n"),
        (StoreError("database is locked"), EXIT_USER_ERROR, "prog: error: database is locked\n"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "prog: interrupted; work done so far is kept\n"),
        (Terminated(), EXIT_INTERRUPTED, "prog: terminated (SIGTERM); work done so far is kept\n"),
        (BrokenPipeError(), 0, ""),
        (
            PermissionError(errno.EACCES, "Permission denied", "/home/other/x.fasta"),
            EXIT_USER_ERROR,
            "prog: error: Permission denied (/home/other/x.fasta)\n",
        ),
    ],
)
def test_errors_leave_as_one_line_and_their_exit_code(
    exc: BaseException, code: int, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(_raises(exc), prog="prog") == code
    assert capsys.readouterr().err == said


@pytest.mark.parametrize(
    ("exc", "said"), [(KeyboardInterrupt(), "interrupted"), (Terminated(), "terminated (SIGTERM)")]
)
def test_a_command_that_keeps_something_else_says_what(
    exc: KeyboardInterrupt, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def run() -> int:
        with keeping("the cache keeps the vectors"):
            raise exc

    assert run_main(run, prog="prog") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == f"prog: {said}; the cache keeps the vectors\n"


def test_the_command_s_own_code_passes_and_unexpected_errors_keep_their_traceback() -> None:
    assert run_main(lambda: 3, prog="prog") == 3
    with pytest.raises(ZeroDivisionError):
        run_main(lambda: 1 // 0, prog="prog")
    with pytest.raises(FileNotFoundError):
        run_main(lambda: len(Path("/no/such/folder/x").read_text()), prog="prog")


def test_a_full_disk_no_code_caught_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def write_to_a_full_disk() -> int:
        with open("/dev/full", "w") as full:  # Linux's always-full device: writes are ENOSPC
            full.write("x")
        return 0

    assert run_main(write_to_a_full_disk, prog="prog") == EXIT_USER_ERROR
    assert capsys.readouterr().err == "prog: error: No space left on device\n"


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ("", r"INFO x: shown"),
        ("timestamps=True", r"\S+ \S+ INFO x: shown"),
        ("timestamps=True, process='server 1'", r"\S+ \S+ INFO \[server 1\] x: shown"),
    ],
)
def test_logging_has_one_format_with_optional_timestamps(options: str, line: str) -> None:
    """The second call changes nothing: one configuration per process, the entry point's."""
    code = (
        "import logging, sys\n"
        "from protssl.entrypoint import configure_logging\n"
        f"configure_logging('info', {options})\n"
        "configure_logging('debug')\n"
        "logging.getLogger('x').info('shown'); logging.getLogger('x').debug('hidden')\n"
    )
    err = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stderr
    assert re.fullmatch(line, err.strip()), err


def test_sigterm_inside_is_handled_like_ctrl_c_and_the_handler_is_put_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    closed: list[str] = []

    def run() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
            return 0
        finally:
            closed.append("output closed")  # what a `with` around the work would do

    started = time.monotonic()
    assert run_main(run, prog="prog") == EXIT_INTERRUPTED
    assert time.monotonic() - started < 5 and closed == ["output closed"]
    assert capsys.readouterr().err == "prog: terminated (SIGTERM); work done so far is kept\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_migration_at_info_logs_the_stores_line_not_alembics(tmp_path) -> None:
    code = (
        "import sys\n"
        "from protssl.entrypoint import configure_logging\n"
        "from protssl.store import Store, StoreConfig\n"
        "configure_logging('info')\n"
        "Store(StoreConfig(url=f'sqlite:///{sys.argv[1]}')).close()\n"
    )
    err = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.sqlite3")],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "store schema migrated from empty" in err and "alembic" not in err, err
