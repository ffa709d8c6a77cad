"""The server's command line: its flags, how they become a ServiceConfig, and the handler that serves.

Each flag is also a variable (--max-queue, PROTSSL_MAX_QUEUE); a flag overrides the variable, which
overrides ServiceConfig's default. `python -m service` and `protssl serve` parse
the same flags and call `run`; grpc is imported only when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from protssl.errors import InvalidInputError
from service.config import ServiceConfig

__all__ = ["OPTIONS", "add_arguments", "config_kwargs", "run"]

log = logging.getLogger(__name__)


def _optional_port(text: str) -> int | None:
    return None if text.lower() in ("", "none", "off") else int(text)


def _boolean(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 in any case."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    # argparse shows this one's message; a ValueError's it replaces with "invalid _boolean value"
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (give true or false)")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""What --log-level takes, in any case."""


def _log_level(text: str) -> str:
    """A logging level name, checked here: logging itself refused an unknown one with a traceback."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a level: give one of {', '.join(LOG_LEVELS)}"
        )
    return text


OPTIONS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("host", str, "address to bind (default 127.0.0.1)"),
    ("port", int, "gRPC port; 0 = any free port (default 50051)"),
    ("model", str, "model folder, fair-esm .pt or preset (default: the shipped model)"),
    ("device", str, "torch device of the model worker (default cpu)"),
    ("dtype", str, "compute dtype: auto, float32, bfloat16 or int8 (lossy) (default auto)"),
    ("database_url", str, "SQLAlchemy URL of the store (default: the default SQLite file)"),
    ("store", _boolean, "cache-through to the store: true or false (default true)"),
    ("memory_cache_mb", int, "MiB of recent vectors kept in memory before the store (default 256)"),
    ("max_batch_tokens", int, "token budget of one batched forward (default 4096)"),
    ("max_group_tokens", int, "tokens taken off the queue at once (default 65536)"),
    ("min_batch_fill", float, "least share of real tokens in a forward (default 0.85)"),
    ("max_queue_delay_ms", float, "wait for more requests before a batch runs (default 5)"),
    ("max_queue", int, "requests waiting before RESOURCE_EXHAUSTED (default 256)"),
    ("max_sequences", int, "sequences per request (default 1000)"),
    ("max_residues", int, "residues per request (default 1000000)"),
    ("max_sequence_length", int, "residues per sequence (default 40000)"),
    ("max_message_mb", int, "largest gRPC message in MiB (default 64)"),
    ("max_id_length", int, "characters in a sequence or example id (default 500)"),
    ("max_examples", int, "examples one classifier version holds (default 10000)"),
    ("max_classes", int, "labels one classifier version holds (default 1000)"),
    ("max_streams", int, "EmbedStream calls open at once, at most workers/2 (default 16)"),
    ("max_calls", int, "calls in progress or waiting, past it RESOURCE_EXHAUSTED (default 1000)"),
    ("max_connection_streams", int, "calls open at once on one connection (default 100)"),
    ("stream_idle_timeout_s", float, "end a stream silent this long (default 60)"),
    ("stream_id_memory", int, "ids per stream checked for duplicates (default 100000)"),
    ("database_connect_timeout_s", float, "PostgreSQL connect timeout (default 5)"),
    ("database_statement_timeout_s", float, "PostgreSQL statement timeout (default 30)"),
    ("embed_without_store", _boolean, "embed uncached while the database is down (default false)"),
    ("health_check_interval_s", float, "seconds between store pings for Health (default 2)"),
    ("workers", int, "gRPC handler threads (default 64)"),
    ("grace_s", float, "seconds in-flight calls get on SIGTERM (default 10)"),
    ("metrics_port", _optional_port, "Prometheus port; 0 = any, off = none (default 9464)"),
    ("processes", int, "server processes sharing the port, one GIL and model each (default 1)"),
    (
        "insecure_no_auth",
        _boolean,
        "serve without API tokens; binds 127.0.0.1 unless --host is given (default off)",
    ),
    ("token_cache_s", float, "seconds a token check is remembered = revocation delay (default 10)"),
    ("tls_cert", str, "PEM certificate chain: serve TLS only (with --tls-key)"),
    ("tls_key", str, "PEM private key of --tls-cert"),
    ("tls_client_ca", str, "PEM CA bundle: clients need a certificate it signed (mutual TLS)"),
)
"""(ServiceConfig field, parser, help): flag --field-name, environment variable PROTSSL_FIELD_NAME."""


# Other spellings of a flag: `--db` is what every other protssl command calls the store's URL.
_ALIASES = {"database_url": ("--db",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's flags (every one also read from PROTSSL_<NAME>)."""
    for name, kind, text in OPTIONS:
        switch = {"nargs": "?", "const": True} if kind is _boolean else {}  # `--flag` = true
        parser.add_argument(
            _flag(name),
            *_ALIASES.get(name, ()),
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{text} [env {_env(name)}]",
            **switch,  # type: ignore[arg-type]
        )
    parser.add_argument(
        "--log-level", default="INFO", type=_log_level, help="logging level (default INFO)"
    )


def config_kwargs(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """ServiceConfig keyword arguments: a flag if given, else PROTSSL_<NAME> if set, else omitted.

    Without authentication only an explicit `--host` moves the server off loopback."""
    kwargs: dict[str, Any] = {}
    for name, kind, _ in OPTIONS:
        env_name = _env(name)
        if hasattr(args, name):
            kwargs[name] = getattr(args, name)
        elif env_name in environ:
            try:
                kwargs[name] = kind(environ[env_name])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise InvalidInputError(f"{env_name}={environ[env_name]!r}: {exc}") from None
    if kwargs.get("insecure_no_auth") and not hasattr(args, "host") and "host" in kwargs:
        log.warning(
            "--insecure-no-auth: binding 127.0.0.1, not PROTSSL_HOST=%s (give --host to expose "
            "a server without authentication)",
            kwargs["host"],
        )
        kwargs["host"] = ServiceConfig.host
    return kwargs


def named_as_given(message: str, args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """A ServiceConfig check's message with each setting it names as the operator gave it: the
    flag (`--max-queue`), else the variable (`PROTSSL_MAX_QUEUE`), else the flag. It named the
    field (`max_queue must be at least 1, got 0`), which a manifest of PROTSSL_* never spells."""

    def given(name: str) -> str:
        env_name = _env(name)
        return env_name if not hasattr(args, name) and env_name in environ else _flag(name)

    for name, _, _ in OPTIONS:  # a one-word field (port, host) only where a message starts
        pattern = rf"\b{name}\b" if "_" in name else rf"^{name}\b"
        message = re.sub(pattern, given(name), message)
    return message


def _flag(name: str) -> str:
    """A ServiceConfig field's flag: `--max-queue`."""
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    """A ServiceConfig field's environment variable: `PROTSSL_MAX_QUEUE`."""
    return f"PROTSSL_{name.upper()}"


def run(args: argparse.Namespace) -> int:
    """Serve with the config the parsed flags and PROTSSL_* variables give, until SIGTERM or SIGINT;
    one process's torch threads fitted to a container's CPU limit (`--processes` shares it out)."""
    from protssl.hardware import fit_threads_to_cpu_budget
    from service.server import serve

    try:
        config = ServiceConfig(**config_kwargs(args, os.environ))
    except InvalidInputError as exc:
        raise InvalidInputError(named_as_given(str(exc), args, os.environ)) from None
    if config.processes == 1:
        fit_threads_to_cpu_budget()
    return serve(config)
