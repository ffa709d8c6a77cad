"""The `protssl` command as a whole: every command's help builds, and builds without the heavy stack.

A command's parser is built when it is chosen (`protssl.cli.commands`), so `--help`, `--version`
and most commands' `--help` import neither torch nor SQLAlchemy nor grpc.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from protssl.cli import build_parser
from protssl.cli.commands import Command, LazySubcommands, add_commands

HEAVY = {"torch", "sqlalchemy", "alembic", "grpc"}

LIGHT = [
    [],
    ["embed"],
    ["import-esm"],
    ["info"],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["db", "current"],
    ["pretrain-export"],
    ["plot-run"],
    ["classifier"],
    ["classifier", "add"],
    ["classifier", "show"],
    ["classifier", "list"],
    ["classifier", "delete"],
    ["classify"],
    ["analyze"],
    ["serve"],
    ["token"],
    ["token", "create"],
]
"""Commands whose help needs nothing heavy."""

NEEDS_TORCH = [["pretrain"], ["classifier", "create"], ["fewshot-eval"]]
"""Their help shows values that live in torch modules today: the model presets and PretrainConfig's
defaults (`protssl.model`, `protssl.pretrain`), the few-shot heads (`protssl.fewshot.METHODS`)."""


def _imported(argv: list[str]) -> tuple[str, set[str]]:
    """`python -X importtime -m protssl ARGV`: its stdout, and the top-level packages it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "protssl", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    names = (line.rpartition("|")[2].strip() for line in proc.stderr.splitlines())
    return proc.stdout, {name.split(".")[0] for name in names if name}


@pytest.mark.parametrize("command", LIGHT, ids=lambda c: " ".join(c) or "protssl")
def test_help_imports_no_torch_sql_or_grpc(command: list[str]) -> None:
    out, imported = _imported([*command, "--help"])
    assert out.startswith(f"usage: {' '.join(['protssl', *command])} ")
    assert imported & HEAVY == set()


def test_version_imports_no_torch_sql_or_grpc() -> None:
    out, imported = _imported(["--version"])
    assert out.startswith("protssl ") and imported & HEAVY == set()


@pytest.mark.parametrize("command", NEEDS_TORCH, ids=" ".join)
def test_help_that_needs_torch_still_loads_no_rpc_stack(command: list[str]) -> None:
    out, imported = _imported([*command, "--help"])
    assert out.startswith(f"usage: {' '.join(['protssl', *command])} ")
    assert imported & {"grpc", "service"} == set()


def test_every_command_is_listed_and_each_builds_its_own_parser() -> None:
    listing = build_parser().format_help()
    commands = ["embed", "import-esm", "info", "db", "pretrain", "pretrain-export", "plot-run"]
    commands += ["classifier", "classify", "fewshot-eval", "serve", "token"]
    found = [re.search(rf"\n    {re.escape(name)}\s", listing) for name in commands]
    positions = [match.start() for match in found if match]
    assert len(positions) == len(commands) and positions == sorted(positions)
    args = build_parser().parse_args(["plot-run", "runs/a"])
    assert (args.command, str(args.run_dir), args.func.__module__) == (
        "plot-run",
        "runs/a",
        "protssl.cli.pretrain",
    )


def test_only_the_chosen_command_is_built_and_plain_subparsers_build_at_once() -> None:
    built: list[str] = []

    def build(parser: argparse.ArgumentParser) -> None:
        built.append(parser.prog)
        parser.add_argument("--x", default=parser.prog)

    lazy = argparse.ArgumentParser(prog="p")
    commands = lazy.add_subparsers(dest="command", action=LazySubcommands)
    add_commands(commands, [Command("a", build, help="a"), Command("b", build, help="b")])
    assert lazy.parse_args(["b"]).x == "p b" and built == ["p b"]
    assert lazy.parse_args(["b", "--x", "1"]).x == "1" and built == ["p b"]
    eager = argparse.ArgumentParser(prog="q").add_subparsers()
    add_commands(eager, [Command("c", build, help="c")])
    assert built == ["p b", "q c"]
