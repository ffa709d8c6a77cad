"""`protssl token create|list|revoke`: the server's API tokens, in the store (`--db`).

Whoever can write the store's database can mint tokens, so these commands work on the database
directly: they are how the first admin token is made. The token is printed once, on stdout, by
`create`; the store keeps only its sha256. A server notices a revocation within its
`--token-cache-s` (10 s by default).
"""

from __future__ import annotations

import argparse
import sys

from protssl.cli.args import add_db_arg, missing_sqlite_file, open_store
from protssl.cli.commands import Command
from protssl.errors import NotFoundError

__all__ = ["COMMANDS"]

_ROLES = ("read", "write", "admin")  # protssl.auth.ROLES, without importing it for --help
_COLUMNS = "id, role, created, revoked, name"
"""`token list`'s columns, in the order `_list` prints them: what its help says."""


def _build(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="make a token and print it (once: only its hash is stored)"
    )
    create.add_argument(
        "--role",
        required=True,
        choices=_ROLES,
        help="read: embed and classify; write: also create/change/delete classifiers; "
        "admin: everything",
    )
    create.add_argument("--name", default="", help="who or what the token is for")
    add_db_arg(create)
    create.set_defaults(func=_create)
    listing = actions.add_parser(
        "list",
        help=f"list tokens: {_COLUMNS}",
        description=f"List the store's API tokens, one a row: {_COLUMNS} (times in UTC; a "
        "token not revoked shows -).",
    )
    add_db_arg(listing)
    listing.set_defaults(func=_list)
    revoke = actions.add_parser("revoke", help="revoke a token by its id (see `token list`)")
    revoke.add_argument("token_id", metavar="ID", help="the token's 16-hex id, or the token")
    add_db_arg(revoke)
    revoke.set_defaults(func=_revoke)


COMMANDS = (Command("token", _build, help="manage the server's API tokens (create, list, revoke)"),)


def _create(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        row, token = store.tokens.create(args.role, name=args.name)
    print(token)
    print(
        f"token {row.id} ({row.role}) created; this is the only time it is shown: "
        "send it as `authorization: Bearer <token>` (PROTSSL_TOKEN for the SDK)",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    if (missing := missing_sqlite_file(args)) is not None:  # a typo: made an empty store there
        print(f"{missing}: no store there yet, so no tokens", file=sys.stderr)
        return 0
    with open_store(args) as store:
        tokens = store.tokens.list()
    print(f"{'id':<16}  {'role':<5}  {'created (UTC)':<19}  {'revoked (UTC)':<19}  name")
    for t in tokens:
        revoked = t.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if t.revoked_at else "-"
        created = t.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{t.id:<16}  {t.role:<5}  {created:<19}  {revoked:<19}  {t.name}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if (missing := missing_sqlite_file(args)) is not None:
        raise NotFoundError(f"no API token with id {args.token_id!r}: {missing}: no store there")
    with open_store(args) as store:
        row = store.tokens.revoke(args.token_id)
    print(f"token {row.id} ({row.role}) revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
    return 0
