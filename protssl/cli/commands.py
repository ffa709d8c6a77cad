"""Subcommands built on demand: a command's arguments (and the modules they need) load only when
that command is chosen, so `protssl --help` lists every command without importing torch or SQL."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

__all__ = ["Build", "Command", "LazySubcommands", "add_commands"]

Build = Callable[[argparse.ArgumentParser], None]
"""Adds a command's arguments and its handler (`set_defaults(func=...)`) to its parser."""


class LazySubcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """A subparsers action (`add_subparsers(action=LazySubcommands)`) that builds the chosen
    command's parser just before parsing the rest of the command line with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, Build] = {}

    def defer(self, name: str, build: Build) -> None:
        """Build `name`'s parser with `build` when it is chosen."""
        self._pending[name] = build

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        name = cast("list[str]", values)[0]  # a PARSER action gets the command and what follows
        build = self._pending.pop(name, None)
        if build is not None:
            build(self._name_parser_map[name])
        super().__call__(parser, namespace, values, option_string)


@dataclass(frozen=True)
class Command:
    """A command: its name, its line in the `--help` listing, and what builds its parser."""

    name: str
    build: Build
    help: str
    description: str | None = None
    """The command's own `--help` text, above its arguments."""


def add_commands(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    commands: Iterable[Command],
) -> None:
    """Add `commands`: built when chosen under LazySubcommands, at once under plain add_subparsers()."""
    for command in commands:
        parser = subparsers.add_parser(
            command.name, help=command.help, description=command.description
        )
        if isinstance(subparsers, LazySubcommands):
            subparsers.defer(command.name, command.build)
        else:
            command.build(parser)
