"""`protssl db upgrade|downgrade|current`: the store's schema, through Alembic's migrations;
`protssl db stats|prune`: what the embedding cache holds, and deleting part of it.

The database is `--db`, else PROTSSL_DATABASE_URL, else a SQLite file in the user's data directory
(`protssl.cli.args.store_config`). SQLAlchemy and Alembic are imported when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import string
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

from protssl.cli.args import add_db_arg, finite_number, missing_sqlite_file, store_config
from protssl.cli.commands import Command
from protssl.durable import human_bytes
from protssl.errors import InvalidInputError, NotFoundError
from protssl.pooling import POOLINGS

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from protssl.store import Store

__all__ = ["COMMANDS"]


def _build(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="migrate the store to a newer schema")
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    add_db_arg(upgrade)
    upgrade.set_defaults(func=_upgrade)
    downgrade = actions.add_parser("downgrade", help="migrate the store back to an older schema")
    downgrade.add_argument("revision", help="target revision, or `base` to drop every table")
    add_db_arg(downgrade)
    downgrade.set_defaults(func=_downgrade)
    current = actions.add_parser("current", help="print the store's schema revision")
    add_db_arg(current)
    current.set_defaults(func=_current)
    stats = actions.add_parser(
        "stats", help="what the embedding cache holds: vectors and bytes per model and pooling"
    )
    add_db_arg(stats)
    stats.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    stats.set_defaults(func=_stats)
    prune = actions.add_parser(
        "prune",
        help="delete cached vectors (by model, pooling, age) and give the space back",
        description="Delete cached vectors: those matching every filter given, or --all. They are "
        "computed again when next asked for. A SQLite file is then rewritten (VACUUM) to give "
        "the space back; PostgreSQL reuses it for new rows.",
    )
    add_db_arg(prune)
    prune.add_argument(
        "--model",
        action="append",
        metavar="NAME|SHA256",
        help="a model's name or the start of its sha256 (6+ characters, as `db stats` shows "
        "it); repeatable",
    )
    prune.add_argument("--pooling", choices=POOLINGS, help="only vectors of this pooling")
    prune.add_argument(
        "--older-than",
        type=finite_number,
        metavar="DAYS",
        help="only vectors cached more than DAYS ago",
    )
    prune.add_argument("--all", action="store_true", help="every cached vector")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    prune.set_defaults(func=_prune)


COMMANDS = (
    Command("db", _build, help="the store: schema migrations, what the cache holds, pruning it"),
)


@contextlib.contextmanager
def _engine(args: argparse.Namespace) -> Iterator[Engine]:
    """An engine on the store `--db` names, disposed of afterwards."""
    from protssl.store import engine as engines

    engine = engines.create_store_engine(store_config(args))
    try:
        yield engine
    finally:
        engine.dispose()


def _upgrade(args: argparse.Namespace) -> int:
    from protssl.store import engine as engines

    with _engine(args) as engine:
        engines.upgrade(engine, args.revision)
        print(f"{engine.url!r}: at {engines.current_revision(engine) or 'base'}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    from protssl.store import engine as engines

    if (missing := missing_sqlite_file(args)) is not None:
        print(f"{missing}: no store there yet (base)")
        return 0
    with _engine(args) as engine:
        engines.downgrade(engine, args.revision)
        print(f"{engine.url!r}: at {engines.current_revision(engine) or 'base'}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from protssl.store import engine as engines

    if (missing := missing_sqlite_file(args)) is not None:
        print(f"{missing}: no store there yet (base)")
        return 0
    with _engine(args) as engine:
        revision = engines.current_revision(engine)
    head = engines.head_revision()
    state = "head" if revision == head else f"head is {head}"
    if engines.is_newer(revision):
        state = f"newer than this protssl, whose head is {head}: upgrade protssl"
    print(f"{engine.url!r}: {revision or 'base (empty)'} ({state})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from protssl.store import Store

    if (missing := missing_sqlite_file(args)) is not None:
        if args.json:
            print(json.dumps({"store": missing, "file_bytes": None, "groups": []}))
        else:
            print(f"{missing}: no store there yet\nthe embedding cache is empty")
        return 0
    with Store(store_config(args)) as store:
        groups = store.embeddings.summary()
        on_disk = _file_size(store)
        url = repr(store.engine.url)
    if args.json:
        rows = [
            {**asdict(g), "oldest": g.oldest.isoformat(), "newest": g.newest.isoformat()}
            for g in groups
        ]
        print(json.dumps({"store": url, "file_bytes": on_disk, "groups": rows}))
        return 0
    where = f"{url}: {_size(on_disk)} on disk" if on_disk is not None else url
    print(where)
    if not groups:
        print("the embedding cache is empty")
        return 0
    width = max(len("model"), *(len(g.model_name) for g in groups)) + 2
    print(
        f"{'model':<{width}}{'sha256':<14}{'pooling':<13}{'layer':>5}  {'dtype':<10}"
        f"{'vectors':>10}{'size':>11}  newest"
    )
    for g in groups:
        print(
            f"{g.model_name:<{width}}{g.model_sha256[:12]:<14}{g.pooling:<13}{g.layer:>5}  "
            f"{g.dtype:<10}{g.vectors:>10,}{_size(g.bytes):>11}  {g.newest:%Y-%m-%d %H:%M}"
        )
    total = sum(g.bytes for g in groups)
    print(f"total: {sum(g.vectors for g in groups):,} vectors, {_size(total)} of vectors")
    return 0


def _cutoff(days: float) -> dt.datetime:
    """The moment `--older-than DAYS` means (now less DAYS); an age that is negative or reaches back
    before the year 1, which a datetime cannot hold, is refused saying what to give."""
    if days < 0:
        raise InvalidInputError(f"--older-than must be >= 0 days, not {days:g}")
    now = dt.datetime.now(dt.timezone.utc)
    most = (now - dt.datetime.min.replace(tzinfo=dt.timezone.utc)).days
    if days > most:
        raise InvalidInputError(
            f"--older-than {days:g} days reaches back before the year 1: give at most {most:,}"
        )
    return now - dt.timedelta(days=days)


def _prune(args: argparse.Namespace) -> int:
    from protssl.store import Store
    from protssl.store import engine as engines

    if not (args.model or args.pooling or args.older_than is not None or args.all):
        raise InvalidInputError(
            "say what to delete: --model, --pooling, --older-than DAYS (together: what matches "
            "all), or --all"
        )
    if args.all and (args.model or args.pooling or args.older_than is not None):
        raise InvalidInputError(
            "--all deletes every cached vector: give it alone, or leave it out to delete only "
            "what --model, --pooling and --older-than match"
        )
    older = None if args.older_than is None else _cutoff(args.older_than)
    if (missing := missing_sqlite_file(args)) is not None:
        print(f"{missing}: no store there yet; nothing to delete")
        return 0
    with Store(store_config(args)) as store:
        models = None
        if args.model:
            models = [sha for name in args.model for sha in _models(store, name)]
        before = _file_size(store)
        count, nbytes = store.embeddings.prune(
            models=models, pooling=args.pooling, older_than=older, dry_run=args.dry_run
        )
        if args.dry_run:
            print(f"would delete {count:,} cached vectors ({_size(nbytes)})")
            return 0
        if count and before is not None:  # VACUUM rewrites the whole file: minutes for gigabytes
            print(
                f"rewriting the SQLite file ({_size(before)}) to give the space back",
                file=sys.stderr,
                flush=True,
            )
        reclaimed = count > 0 and engines.reclaim_space(store.engine)
        after = _file_size(store)
    print(f"deleted {count:,} cached vectors ({_size(nbytes)})", end="")
    if reclaimed and before is not None and after is not None:
        print(f"; the SQLite file went from {_size(before)} to {_size(after)}")
    elif count:
        print("; PostgreSQL reuses the space for new rows")
    else:
        print()
    return 0


def _models(store: Store, name: str) -> list[str]:
    """The sha256 a --model names; none (or too short a start of one), or several (two models may
    share a name), is an error listing the models to choose from by sha256."""
    from protssl.store.embeddings import SHA256_PREFIX_MIN

    found = store.embeddings.models_named(name)
    if len(found) > 1:
        raise InvalidInputError(
            f"{name!r} names {len(found)} models in the store: {_listed(found)}; give the start "
            "of the sha256 of the one meant (--model repeats)"
        )
    if not found:
        known = {(g.model_sha256, g.model_name) for g in store.embeddings.summary()}
        held = f"models with cached vectors: {_listed(known) or 'none'}"
        if len(name) < SHA256_PREFIX_MIN and all(c in string.hexdigits for c in name):
            raise InvalidInputError(
                f"--model {name!r}: give at least {SHA256_PREFIX_MIN} hex digits of the sha256 "
                f"(or the model's name); {held}"
            )
        raise NotFoundError(
            f"no model in the store is named {name!r} or has a sha256 starting with it ({held})"
        )
    return [found[0][0]]


def _listed(models: Iterable[tuple[str, str]]) -> str:
    """(sha256, name) pairs as `name (sha256 prefix)`, sorted."""
    return ", ".join(sorted(f"{name} ({sha[:12]})" for sha, name in models))


def _file_size(store: Store) -> int | None:
    """Bytes of a SQLite store's file and its WAL (None for a server database)."""
    database = store.embeddings.local_file
    if database is None:
        return None
    files = [database, database.with_name(f"{database.name}-wal")]
    return sum(f.stat().st_size for f in files if f.exists())


def _size(nbytes: int | None) -> str:
    return "?" if nbytes is None else human_bytes(nbytes)
