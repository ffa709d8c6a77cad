"""The server's command line: flags over PROTSSL_* variables over defaults, one way from the CLI to it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from protssl.errors import InvalidInputError
from service.cli import OPTIONS, add_arguments, config_kwargs
from service.config import ServiceConfig


def test_serve_flags_override_environment_over_defaults() -> None:
    assert tuple(name for name, _, _ in OPTIONS) == ServiceConfig.field_names()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "6000", "--metrics-port", "off"])
    env = {"PROTSSL_PORT": "7000", "PROTSSL_MAX_QUEUE": "9", "PROTSSL_STORE": "false"}
    config = ServiceConfig(**config_kwargs(args, env))
    assert (config.port, config.max_queue, config.metrics_port, config.store) == (
        6000,
        9,
        None,
        False,
    )
    assert config.host == "127.0.0.1" and config.max_batch_tokens == 4096
    with pytest.raises(InvalidInputError, match="PROTSSL_MAX_QUEUE"):
        config_kwargs(parser.parse_args([]), {"PROTSSL_MAX_QUEUE": "many"})


def test_python_m_service_imports_neither_the_protssl_cli_nor_grpc_before_serving() -> None:
    code = (
        "import sys, service.__main__\n"
        "print(sorted(m for m in sys.modules if m.startswith(('protssl.cli', 'grpc'))))"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


def test_protssl_serve_delegates_to_the_service_flags_and_handler() -> None:
    from protssl.cli import build_parser
    from service.cli import run

    args = build_parser().parse_args(["serve", "--port", "0", "--log-level", "debug"])
    assert (args.func, args.port, args.log_level, args.log_timestamps) == (run, 0, "debug", True)
    assert not hasattr(args, "metrics_port")  # unset flags fall back to PROTSSL_* variables


def test_serve_takes_the_store_url_as_db_like_every_other_command() -> None:
    from protssl.cli import build_parser

    url = "sqlite:///store.sqlite3"
    for flag in ("--db", "--database-url"):
        args = build_parser().parse_args(["serve", flag, url])
        config = ServiceConfig(**config_kwargs(args, {"PROTSSL_DATABASE_URL": "sqlite:///env"}))
        assert config.database_url == url
    embed = build_parser().parse_args(["embed", "in.fasta", "-o", "out.h5", "--db", url])
    assert embed.db == url


@pytest.mark.parametrize("command", [["-m", "protssl", "serve"], ["-m", "service"]])
def test_an_unknown_log_level_is_one_line_and_exit_2(command: list[str]) -> None:
    """`--log-level LOUD` was a ValueError traceback out of logging.basicConfig (exit 1)."""
    done = subprocess.run(
        [sys.executable, *command, "--log-level", "LOUD"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "argument --log-level: 'LOUD' is not a level: give one of DEBUG, INFO" in done.stderr


def test_a_switch_that_is_not_a_boolean_says_so_by_flag_and_by_variable() -> None:
    """`--store maybe` said "invalid _boolean value" (the parser's function name)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^not a boolean: 'maybe' \(give true"):
        next(kind for name, kind, _ in OPTIONS if name == "store")("maybe")
    with pytest.raises(InvalidInputError, match=r"^PROTSSL_STORE='maybe': not a boolean: 'maybe'"):
        config_kwargs(parser.parse_args([]), {"PROTSSL_STORE": "maybe"})
    done = subprocess.run(
        [sys.executable, "-m", "service", "--store", "maybe"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "argument --store: not a boolean: 'maybe' (give true or false)" in done.stderr


@pytest.mark.parametrize(
    ("argv", "environ", "said"),
    [
        ([], {"PROTSSL_MAX_QUEUE": "0"}, "PROTSSL_MAX_QUEUE must be at least 1, got 0"),
        (["--max-queue", "0"], {"PROTSSL_MAX_QUEUE": "5"}, "--max-queue must be at least 1, got 0"),
        ([], {"PROTSSL_PORT": "70000"}, "PROTSSL_PORT must be in 0..65535, got 70000"),
        (
            [],
            {"PROTSSL_TLS_CERT": "/x"},
            "PROTSSL_TLS_CERT and --tls-key go together: give both or neither",
        ),
    ],
)
def test_a_bad_setting_is_named_as_it_was_given(
    argv: list[str], environ: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ServiceConfig's checks named its fields (`max_queue must be at least 1`), which a
    deployment's PROTSSL_* variables never spell."""
    from protssl.cli import build_parser
    from service.cli import run

    for name in [n for n in os.environ if n.startswith("PROTSSL_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["serve", *argv])
    with pytest.raises(InvalidInputError) as refused:
        run(args)
    assert str(refused.value) == said
