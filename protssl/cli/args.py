"""Arguments that several commands share, each defined once: the model, the FASTA policy, the store.

This module (with `service.cli` for the server) is where the CLI reads the environment:
PROTSSL_MODEL for `--model`, PROTSSL_DATABASE_URL for `--db`. What the arguments open (a model,
a store) is imported when a command runs, so building a parser stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from protssl.dtypes import DTYPE_NAMES
from protssl.endpoint import RECONNECT_S
from protssl.errors import RESUME_ADVICE, WINDOW_ADVICE, InvalidInputError

if TYPE_CHECKING:
    from protssl.checkpoint import LoadedModel
    from protssl.client import Client
    from protssl.fasta import FastaPolicy
    from protssl.store import Store, StoreConfig

__all__ = [
    "add_db_arg",
    "add_fasta_policy_args",
    "add_model_arg",
    "add_model_args",
    "add_runtime_args",
    "add_server_args",
    "add_store_args",
    "add_trust_args",
    "as_options",
    "fasta_policy",
    "finite_number",
    "given_options",
    "load_model",
    "open_store",
    "refuse_beside_server",
    "served_model",
    "server_client",
    "store_config",
]

MODEL_HELP = (
    "model folder, fair-esm .pt, or preset name (default: $PROTSSL_MODEL or the shipped model)"
)


def add_model_arg(parser: argparse.ArgumentParser, *, help_text: str = MODEL_HELP) -> None:
    """`--model SPEC`, defaulting to $PROTSSL_MODEL (None: the shipped model)."""
    parser.add_argument("--model", default=os.environ.get("PROTSSL_MODEL"), help=help_text)


def add_trust_args(parser: argparse.ArgumentParser) -> None:
    """`--trust-pickle` and `--allow-sha256`: what it takes to load a fair-esm .pt (a pickle)."""
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a fair-esm .pt (pickles can run code)",
    )
    parser.add_argument(
        "--allow-sha256",
        action="append",
        default=[],
        type=_sha256_hex,
        metavar="HEX",
        help="allow a fair-esm .pt with this sha256 (repeatable)",
    )


def _sha256_hex(value: str) -> str:
    """A whole sha256 in hex (what `sha256sum` prints), lowercased; anything else can match no
    file, so it is refused rather than silently allowing nothing."""
    digest = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise argparse.ArgumentTypeError(f"{value!r} is not a sha256 (64 hex digits)")
    return digest


def finite_number(value: str) -> float:
    """The argparse type of an option that takes an amount (seconds, days, GPUs, a precision): a
    float, and a finite one. `nan` and `inf` parse as floats, but NaN passes every bound check
    (`< 0` is false) and means no amount, and either overflows what is computed from it."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """`--dtype` and `--device`: where and in which precision a model runs."""
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="auto: bf16 where the CPU has AVX512-BF16/AMX or on CUDA, else float32; int8: the "
        "linears in int8 on CPU, faster where there is no bf16, lossy (cosine ~0.999 to float32)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")


def add_model_args(parser: argparse.ArgumentParser, *, trust: bool = True, note: str = "") -> None:
    """`--model`, `--dtype`, `--device`, and with `trust` the pickle flags, for `load_model(args)`.

    `note` is appended to --model's help; without `trust` a fair-esm .pt needs its sha256 known."""
    add_model_arg(parser, help_text=MODEL_HELP + (f"; {note}" if note else ""))
    add_runtime_args(parser)
    if trust:
        add_trust_args(parser)
    else:
        parser.set_defaults(trust_pickle=False, allow_sha256=[])


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model that `add_model_args`' flags name, loaded; torch's threads fitted to a container's
    CPU limit first, unless the command's `--threads` set them."""
    from protssl.checkpoint import load_model
    from protssl.hardware import fit_threads_to_cpu_budget

    if not getattr(args, "threads", None):
        fit_threads_to_cpu_budget()
    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_pickle=args.trust_pickle,
        allowed_sha256=args.allow_sha256,
    )


def add_fasta_policy_args(parser: argparse.ArgumentParser) -> None:
    """`--on-invalid`, `--gaps`, `--on-empty` and `--on-duplicate`: what the FASTA policy's advice
    names, so every command that reads FASTA takes all four."""
    parser.add_argument(
        "--on-invalid",
        default="fail",
        choices=("fail", "skip", "replace"),
        help="records with gaps, internal stops, digits...: fail (default), skip, or replace with X",
    )
    parser.add_argument(
        "--gaps",
        default="invalid",
        choices=("invalid", "strip"),
        help="alignment gaps - and . (aligned FASTA, A2M): invalid (default) or strip them, "
        "which gives the unaligned sequence",
    )
    parser.add_argument(
        "--on-empty",
        default="fail",
        choices=("fail", "skip"),
        help="records with a header and no residues: fail (default) or skip",
    )
    parser.add_argument(
        "--on-duplicate",
        default="fail",
        choices=("fail", "skip"),
        help="an id seen before in the input: fail (default) or skip it (the first is kept)",
    )


def fasta_policy(args: argparse.Namespace) -> FastaPolicy:
    """The FASTA policy that `add_fasta_policy_args`' flags set (FastaPolicy's default where absent)."""
    from protssl.fasta import FastaPolicy

    return FastaPolicy(**{name: getattr(args, name) for name in _POLICY_FIELDS if name in args})


_POLICY_FIELDS = ("on_invalid", "gaps", "on_empty", "on_duplicate")
"""FastaPolicy's fields, each set by the option of the same name (`--on-invalid`...)."""
_POLICY_ADVICE = re.compile(rf"\b({'|'.join(_POLICY_FIELDS)}) (fail|skip|replace|strip)\b")
_SDK_TOKEN_ADVICE = re.compile(r"give Client\([^)]*\) or set ")
_SDK_FLAG = re.compile(r"\b(resume|overwrite)=True\b")
_SDK_ADVICE = (
    (RESUME_ADVICE, "the same command with --resume sends the rest"),
    (WINDOW_ADVICE, "--window-policy window embeds it in overlapping windows"),
    ("connect with tls=False", "leave out --server-ca"),
    ("connect with tls=True or root_certificates", "give --server-ca, the CA that signed it"),
    ("give root_certificates, the CA that signed it", "give --server-ca, the CA that signed it"),
    (
        "give certificate_chain and private_key, signed by the CA it trusts",
        "give --client-cert and --client-key, signed by the CA it trusts",
    ),
    ("certificate_chain and private_key go together", "--client-cert and --client-key go together"),
    (") with tls=True", ") with --server-ca, the CA that signed its certificate"),
)
"""The SDK's advice (`protssl.client`, `protssl.endpoint`, the window policy) and what a command
says instead."""
_FIELD_OPTIONS = (
    ("max_tokens ", "--max-tokens "),
    ("overlap ", "--overlap "),
    ("read_ahead_residues must", "--read-ahead must"),
    ("window overlap must", "--overlap must"),
    ("workers and cpus per worker must", "--workers and --cpus-per-worker must"),
    ("worker retries must", "--worker-retries must"),
    ("gpus per worker must", "--gpus-per-worker must"),
    ("reconnect must", "--reconnect must"),
    ("k must", "--k must"),
    ("target_precision must", "--target-precision must"),
    ("target '", "--server '"),
    ("root_certificates: ", "--server-ca: "),
    ("certificate_chain: ", "--client-cert: "),
    ("private_key: ", "--client-key: "),
)
"""Checks that open a library message with the field (a config's, the SDK Client's arguments),
and the option that sets it."""


def as_options(message: str) -> str:
    """A library message's advice in the CLI's spelling: `on_invalid skip` (what the SDK and gRPC
    call the field) reads `--on-invalid skip`, the option a CLI user types, as does a config check
    on a field (`max_tokens must ...`: `--max-tokens must ...`; `root_certificates: cannot read`:
    `--server-ca: cannot read`); the SDK's advice names the command's options (`--resume`,
    `--server-ca`, $PROTSSL_TOKEN, `--window-policy window`)."""
    for sdk, cli in _SDK_ADVICE:
        message = message.replace(sdk, cli)
    for field, option in _FIELD_OPTIONS:
        if message.startswith(field):
            message = option + message[len(field) :]
    message = _SDK_TOKEN_ADVICE.sub("set ", message)
    message = _SDK_FLAG.sub(r"--\1", message)
    return _POLICY_ADVICE.sub(lambda m: f"--{m.group(1).replace('_', '-')} {m.group(2)}", message)


_SERVER_ONLY: dict[str, object] = {
    "server_ca": None,
    "client_cert": None,
    "client_key": None,
    "reconnect": RECONNECT_S,
}
"""`add_server_args`' options that mean nothing without --server, and their defaults."""


def add_server_args(parser: argparse.ArgumentParser, what: str) -> None:
    """`--server ADDR`, `--server-ca PEM`, `--client-cert PEM --client-key PEM` and `--reconnect
    SECONDS`: run the command on a protssl server instead, waiting for it through a restart."""
    remote = parser.add_argument_group("remote")
    remote.add_argument(
        "--server",
        metavar="ADDR",
        default=None,
        help=f"{what} on a protssl server at host[:port] (its model, dtype and store; the token "
        "from $PROTSSL_TOKEN) instead of in this process",
    )
    remote.add_argument(
        "--server-ca",
        metavar="PEM",
        default=_SERVER_ONLY["server_ca"],
        help="CA certificate of a TLS server (--server)",
    )
    remote.add_argument(
        "--client-cert",
        metavar="PEM",
        default=_SERVER_ONLY["client_cert"],
        help="this client's certificate, for a server that asks for one (mutual TLS; with "
        "--client-key)",
    )
    remote.add_argument(
        "--client-key",
        metavar="PEM",
        default=_SERVER_ONLY["client_key"],
        help="the private key of --client-cert",
    )
    remote.add_argument(
        "--reconnect",
        metavar="SECONDS",
        type=finite_number,
        default=_SERVER_ONLY["reconnect"],
        help="with --server: how long to keep trying when the server goes away midway (a "
        "restart) before stopping with what came back kept (default %(default)g; 0: stop at once)",
    )


def server_client(args: argparse.Namespace) -> Client:
    """The SDK client a `--server` command talks through, with its TLS and reconnect options."""
    from protssl.client import Client

    return Client(
        args.server,
        root_certificates=args.server_ca,
        certificate_chain=args.client_cert,
        private_key=args.client_key,
        reconnect=args.reconnect,
    )


def refuse_beside_server(
    args: argparse.Namespace, build: Callable[[argparse.ArgumentParser], None], names: Sequence[str]
) -> None:
    """Refuse the options among `names` given other values than their defaults (in the parser
    `build` makes): with --server, the server decides them."""
    if args.server is None:
        for name, default in _SERVER_ONLY.items():
            if getattr(args, name, default) != default:
                raise InvalidInputError(f"--{name.replace('_', '-')} goes with --server")
        return
    if options := given_options(args, build, names):
        raise InvalidInputError(
            f"{options}: with --server the server's settings apply (its model, dtype and store; "
            "`protssl serve --help`): leave them out"
        )


def given_options(
    args: argparse.Namespace, build: Callable[[argparse.ArgumentParser], None], names: Sequence[str]
) -> str:
    """The options among `names` given other values than their defaults (in the parser `build`
    makes), as a user typed them (`--workers, --ray-address`); '' when none was."""
    defaults = argparse.ArgumentParser()
    build(defaults)
    given = [n for n in names if getattr(args, n) != defaults.get_default(n)]
    return ", ".join(f"--{n.replace('_', '-')}" for n in given)


def served_model(args: argparse.Namespace) -> str:
    """The model to ask a server for: `--model` when given on the command line, else the server's
    own ($PROTSSL_MODEL names one on this machine, not the server's)."""
    return "" if args.model in (None, os.environ.get("PROTSSL_MODEL")) else str(args.model)


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    """`--db URL`: the store to use, for every command that opens one."""
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="store URL (sqlite:///file or postgresql+psycopg://user@host/db); "
        "default $PROTSSL_DATABASE_URL, else a SQLite file in the user data folder",
    )


def add_store_args(parser: argparse.ArgumentParser) -> None:
    """`--db URL` and `--no-cache`, for commands that read through the embedding cache."""
    add_db_arg(parser)
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="compute every vector, neither reading nor writing the store",
    )


def store_config(args: argparse.Namespace) -> StoreConfig:
    """The store config for parsed args: `--db`, else PROTSSL_DATABASE_URL, else the default."""
    from protssl.store import StoreConfig

    return StoreConfig.from_environ(os.environ, url=args.db)


def missing_sqlite_file(args: argparse.Namespace) -> str | None:
    """The SQLite file `--db` names when it does not exist: a command that only reads the store,
    deletes from it or takes it back says so instead of creating an empty store there (a mistyped
    path would leave one behind)."""
    from protssl.store.engine import sqlite_file

    path = sqlite_file(store_config(args))
    return None if path is None or path.exists() else str(path)


def open_store(args: argparse.Namespace) -> Store:
    """The store `--db` names, migrated and ready; the caller closes it (or uses `with`)."""
    from protssl.store import Store

    return Store(store_config(args))
