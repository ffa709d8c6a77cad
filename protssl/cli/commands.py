"""Subcommands built on demand: a command's arguments (and the modules they need) load only when
that command is chosen, so `protssl --help` lists every command without importing torch or SQL."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, cast

__all__ = ["Build", "LazySubcommands", "add_command"]

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


def add_command(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    build: Build,
    **kwargs: Any,
) -> None:
    """Add command `name` (`kwargs`: help, description) whose arguments `build` adds: when it is
    chosen under LazySubcommands, at once under a plain `add_subparsers()`."""
    parser = subparsers.add_parser(name, **kwargs)
    if isinstance(subparsers, LazySubcommands):
        subparsers.defer(name, build)
    else:
        build(parser)
