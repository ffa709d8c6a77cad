"""N-way K-shot episodes: sampling them from a labelled pool, and the part of the pool they use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from protssl.errors import InvalidInputError

__all__ = ["Episode", "sample_episodes", "subset_episodes"]

T = TypeVar("T")


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task: row indices into the labelled pool, and the ways' class names."""

    classes: tuple[str, ...]
    support: tuple[int, ...]
    query: tuple[int, ...]


def sample_episodes(
    labels: Sequence[Sequence[str]],
    *,
    episodes: int,
    ways: int,
    shots: int,
    queries: int = 2,
    seed: int = 0,
) -> list[Episode]:
    """Sample N-way K-shot episodes from single-label rows: K support + `queries` per class."""
    if episodes < 1 or ways < 2 or shots < 1 or queries < 1:
        raise InvalidInputError("episodes >= 1, ways >= 2, shots >= 1 and queries >= 1 are needed")
    by_class: dict[str, list[int]] = {}
    for row, names in enumerate(labels):
        if len(names) == 1:
            by_class.setdefault(names[0], []).append(row)
    eligible = sorted(c for c, rows in by_class.items() if len(rows) >= shots + queries)
    if len(eligible) < ways:
        raise InvalidInputError(
            f"only {len(eligible)} classes have {shots + queries} single-label examples "
            f"(shots {shots} + queries {queries}); {ways} ways need more"
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        classes = tuple(sorted(rng.choice(eligible, size=ways, replace=False).tolist()))
        support: list[int] = []
        query: list[int] = []
        for cls in classes:
            rows = rng.choice(by_class[cls], size=shots + queries, replace=False).tolist()
            support += rows[:shots]
            query += rows[shots:]
        out.append(Episode(classes, tuple(support), tuple(query)))
    return out


def subset_episodes(
    pool: Sequence[T], episodes: Sequence[Episode]
) -> tuple[list[T], list[Episode]]:
    """The pool items some episode uses (in pool order) and the episodes re-indexed into them.

    Embedding only those items is enough to run the episodes: each sees the same items in the same
    order as in the whole pool.
    """
    used = sorted({row for e in episodes for row in (*e.support, *e.query)})
    position = {row: index for index, row in enumerate(used)}
    remapped = [
        Episode(
            e.classes,
            tuple(position[row] for row in e.support),
            tuple(position[row] for row in e.query),
        )
        for e in episodes
    ]
    return [pool[row] for row in used], remapped
