"""Arguments several commands share: one definition of the model flags, the FASTA policy, the store."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protssl.cli import analyze, db, embed, fewshot, import_esm, info, main, token
from protssl.cli.args import add_fasta_policy_args, add_model_args, as_options, fasta_policy
from protssl.errors import RESUME_ADVICE
from protssl.fasta import FastaPolicy


def _parse(add: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_model_flags_read_protssl_model_and_the_same_names_without_the_trust_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROTSSL_MODEL", "models/x")
    digest = "AB" * 32
    full = _parse(add_model_args, ["--trust-pickle", "--allow-sha256", digest])
    bare = _parse(lambda p: add_model_args(p, trust=False), ["--dtype", "float32"])
    assert (full.model, full.trust_pickle, full.allow_sha256) == (
        "models/x",
        True,
        [digest.lower()],
    )
    for not_a_digest in ("zz", "ab" * 31):  # would allow nothing, silently
        with pytest.raises(SystemExit):
            _parse(add_model_args, ["--allow-sha256", not_a_digest])
    assert (bare.model, bare.dtype, bare.trust_pickle, bare.allow_sha256) == (
        "models/x",
        "float32",
        False,
        [],
    )
    with pytest.raises(SystemExit):
        _parse(lambda p: add_model_args(p, trust=False), ["--trust-pickle"])


def test_fasta_policy_from_the_flags_a_command_has() -> None:
    flags = ["--on-invalid", "replace", "--on-duplicate", "skip", "--gaps", "strip"]
    every = _parse(add_fasta_policy_args, flags)
    assert fasta_policy(every) == FastaPolicy(
        on_invalid="replace", on_duplicate="skip", gaps="strip"
    )
    assert fasta_policy(_parse(add_fasta_policy_args, [])) == FastaPolicy()


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ("on_duplicate skip keeps the first; on_invalid skip or replace drops or replaces it",
         "--on-duplicate skip keeps the first; --on-invalid skip or replace drops or replaces it"),
        ("an aligned sequence? gaps strip removes the gaps (the sequence as it was before the "
         "alignment); on_empty skip leaves it out",
         "an aligned sequence? --gaps strip removes the gaps (the sequence as it was before the "
         "alignment); --on-empty skip leaves it out"),
        ("record 'on_invalid' (#1): gaps in it", "record 'on_invalid' (#1): gaps in it"),
        (f"cannot reach a protssl server at h:1: x; the 64 result(s) that came back before it are "
         f"kept in 'o.h5': {RESUME_ADVICE}",
         "cannot reach a protssl server at h:1: x; the 64 result(s) that came back before it are "
         "kept in 'o.h5': the same command with --resume sends the rest"),
        ("cannot reach a protssl server at h:1 (if the server speaks TLS, connect with tls=True or "
         "root_certificates): Socket closed",
         "cannot reach a protssl server at h:1 (if the server speaks TLS, give --server-ca, the CA "
         "that signed it): Socket closed"),
        ("cannot reach a protssl server at h:1 (the server answers without TLS: connect with "
         "tls=False): x",
         "cannot reach a protssl server at h:1 (the server answers without TLS: leave out "
         "--server-ca): x"),
        ("(the server's certificate is not signed by a CA this client trusts: give "
         "root_certificates, the CA that signed it)",
         "(the server's certificate is not signed by a CA this client trusts: give --server-ca, "
         "the CA that signed it)"),
        ("max_tokens must be at least 8, got 0", "--max-tokens must be at least 8, got 0"),
        ("k must be at least 1, got 0", "--k must be at least 1, got 0"),
        ("output 'o.h5' exists: pass resume=True to continue it or overwrite=True to replace it",
         "output 'o.h5' exists: pass --resume to continue it or --overwrite to replace it"),
        ("target_precision must be in (0, 1]", "--target-precision must be in (0, 1]"),
        ("(a TLS server that asks for a client certificate closes the connection so: give "
         "certificate_chain and private_key, signed by the CA it trusts)",
         "(a TLS server that asks for a client certificate closes the connection so: give "
         "--client-cert and --client-key, signed by the CA it trusts)"),
        ("certificate_chain and private_key go together (mutual TLS)",
         "--client-cert and --client-key go together (mutual TLS)"),
        ("workers and cpus per worker must be at least 1",
         "--workers and --cpus-per-worker must be at least 1"),
        ("record 'x': max_tokens must stay", "record 'x': max_tokens must stay"),  # not a check
        ("target 'https://h:1' is a URL: give host:port (h:1) with tls=True",
         "--server 'https://h:1' is a URL: give host:port (h:1) with --server-ca, the CA that "
         "signed its certificate"),
        ("target 'http://h:1' is a URL: give host:port (h:1)",
         "--server 'http://h:1' is a URL: give host:port (h:1)"),
        ("target 'h:99999': port '99999' is not a port number (1 to 65535)",
         "--server 'h:99999': port '99999' is not a port number (1 to 65535)"),
        ("root_certificates: cannot read ca.pem (No such file or directory)",
         "--server-ca: cannot read ca.pem (No such file or directory)"),
        ("certificate_chain: cannot read me.pem (Permission denied)",
         "--client-cert: cannot read me.pem (Permission denied)"),
        ("private_key: cannot read me.key (Is a directory)",
         "--client-key: cannot read me.key (Is a directory)"),
        ("record 'target x': gaps in it", "record 'target x': gaps in it"),  # not an address
        ("no API token: send metadata `authorization: Bearer <token>` (this client has none: give "
         "Client('h:1', token=...) or set $PROTSSL_TOKEN; `protssl token create --role read` on "
         "the server's store makes one)",
         "no API token: send metadata `authorization: Bearer <token>` (this client has none: set "
         "$PROTSSL_TOKEN; `protssl token create --role read` on the server's store makes one)"),
    ],
)  # fmt: skip
def test_advice_names_the_options_on_the_command_line(message: str, said: str) -> None:
    assert as_options(message) == said


def _number_options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The options of `parser` and its subcommands' that take a number with a fraction."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _number_options(sub)
        elif action.type is not None and _takes(action.type, "0.5"):
            yield action


def _takes(kind: Callable[[str], object], value: str) -> bool:
    """Whether an argparse type reads `value` as the float it spells."""
    try:
        return bool(kind(value) == float(value))
    except (ValueError, argparse.ArgumentTypeError):
        return False


def test_every_float_option_refuses_nan_and_inf() -> None:
    """An amount of seconds, days, GPUs or precision that is nan or inf is refused as argparse
    refuses a word (`--reconnect nan` was taken silently; `db prune --older-than inf` was a
    traceback). `pretrain`'s options are its own."""
    options: dict[str, argparse.Action] = {}
    for group in (embed, import_esm, info, db, fewshot, analyze, token):
        for command in group.COMMANDS:
            parser = argparse.ArgumentParser()
            command.build(parser)
            options.update((a.option_strings[-1], a) for a in _number_options(parser))
    assert {"--reconnect", "--older-than", "--gpus-per-worker", "--target-precision"} <= set(
        options
    )
    for name, action in options.items():
        assert action.type is not None
        assert action.type("1e-3") == 0.001 and action.type("-2") == -2.0, name
        for word in ("nan", "NaN", "inf", "-inf", "1e400"):
            with pytest.raises(argparse.ArgumentTypeError, match="is not a finite number"):
                action.type(word)
        with pytest.raises(argparse.ArgumentTypeError, match="'ten' is not a number"):
            action.type("ten")


def test_a_nan_reconnect_is_refused_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["embed", "in.fasta", "-o", "x.h5", "--server", "h:1", "--reconnect", "nan"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "protssl embed: error: argument --reconnect: 'nan' is not a finite number"
    )


def test_server_advice_names_the_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL for --server and an unreadable --server-ca are told in the options' names (they said
    `with tls=True` and `root_certificates: cannot read`, the SDK's words)."""
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKV\n")
    embed = ["embed", str(fasta), "-o", str(tmp_path / "x.h5"), "--no-progress"]
    for extra, said in [
        (
            ["--server", "https://127.0.0.1:50051"],
            "--server 'https://127.0.0.1:50051' is a URL: give host:port (127.0.0.1:50051) with "
            "--server-ca, the CA that signed its certificate",
        ),
        (
            ["--server", "127.0.0.1:50051", "--server-ca", str(tmp_path / "nothere.pem")],
            f"--server-ca: cannot read {tmp_path / 'nothere.pem'} (No such file or directory)",
        ),
    ]:
        assert main([*embed, *extra]) == 2
        assert capsys.readouterr().err == f"protssl embed: error: {said}\n"
