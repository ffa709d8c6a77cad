"""Named, versioned classifiers: saving a name again adds a version; old versions stay."""

from __future__ import annotations

import datetime as dt
import logging
import unicodedata
from collections import defaultdict
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

import protssl.store.common as common
import protssl.store.engine as engines
from protssl.errors import (
    AlreadyExistsError,
    ClassifierNotFoundError,
    InvalidInputError,
    StoreError,
)
from protssl.store.schema import Base

__all__ = [
    "LABEL_SEPARATOR",
    "ClassifierRepository",
    "Example",
    "StoredClassifier",
    "check_example",
    "check_name",
]

log = logging.getLogger(__name__)

_SEQUENCES = Base.metadata.tables["sequences"]
_CLASSIFIERS = Base.metadata.tables["classifiers"]
_EXAMPLES = Base.metadata.tables["classifier_examples"]


Example = tuple[str, str, tuple[str, ...]]

MAX_NAME_LENGTH = 200
"""Characters in a classifier name (the column's width)."""
MAX_RECORD_ID_LENGTH = 500
"""Characters in an example's record id (the column's width)."""
MAX_LABEL_LENGTH = 200
"""Characters in one label (a prediction's label column is this wide)."""
LABEL_SEPARATOR = ";"
"""Joins the labels of a multi-label decision, so no label may contain it."""


def check_example(record_id: str, labels: Seq[str], index: int) -> None:
    """Refuse an example the store cannot hold, one without a label (nothing to fit), or a label a
    prediction could not tell apart or a TSV row could not hold (a control character such as a tab
    or newline would split its columns or rows)."""
    where = f"example {record_id[:50]!r} (#{index + 1})"
    common.check_text(record_id, f"{where}: id", max_length=MAX_RECORD_ID_LENGTH)
    if not labels:
        raise InvalidInputError(f"{where} has no label: give it one or more labels")
    for label in labels:
        common.check_text(label, f"{where}: label {label[:50]!r}", max_length=MAX_LABEL_LENGTH)
        control = next((c for c in label if unicodedata.category(c) == "Cc"), None)
        if control is not None:
            raise InvalidInputError(
                f"{where}: label {label[:50]!r} contains the control character {control!r} "
                f"(at {label.index(control) + 1}), which would break a TSV row: remove it"
            )
        if LABEL_SEPARATOR in label:
            raise InvalidInputError(
                f"{where}: label {label[:50]!r} contains {LABEL_SEPARATOR!r}, which joins the "
                "labels of a multi-label decision: give several labels instead"
            )


def check_name(name: str) -> None:
    """Refuse a classifier name that is empty, too long or holds a NUL."""
    common.check_text(name, "classifier name", max_length=MAX_NAME_LENGTH)


@dataclass(frozen=True)
class StoredClassifier:
    """One version of a named classifier, with the examples it was fitted on."""

    id: int
    name: str
    version: int
    model_sha256: str
    method: str
    params: dict[str, Any]
    blob: bytes
    examples: tuple[Example, ...]
    """(record id, normalised sequence, labels) in the order they were saved."""
    metrics: dict[str, Any]
    created_at: dt.datetime

    @property
    def classes(self) -> tuple[str, ...]:
        """Its labels, read from its parameters (the head itself stays unpickled)."""
        return tuple(self.params.get("classes", ()))

    @property
    def pooling(self) -> str:
        """The pooling of the vectors it was fitted on (`mean` for versions saved before any other)."""
        return str(self.params.get("info", {}).get("pooling", "mean"))

    @property
    def cuts(self) -> dict[str, Any]:
        """Its decision cuts, read from its parameters: `threshold` (the confidence cut; hybrid:
        of answers an alignment hit decided), `fallback_threshold` (hybrid: of the others; else
        None), `ood_threshold` (the out-of-distribution gate's cosine), `multi_label_ratio` (extra
        labels at >= this fraction of the top probability; None: the top label only) and
        `back_off_levels`, deepest parent first (`depth`: label parts kept, `parents`: labels at
        it, `threshold`: the cut on a parent's summed probability; none unless labels are dotted),
        those its classifier decides with: not the single-parent level a version saved before they
        were left out may hold (`calibration.tells_apart`).
        """
        from protssl.fewshot.calibration import tells_apart

        params = self.params
        return {
            "threshold": params.get("threshold"),
            "fallback_threshold": params.get("fallback_threshold"),
            "ood_threshold": params.get("ood_threshold"),
            "multi_label_ratio": params.get("multi_label_ratio"),
            "back_off_levels": [
                {
                    "depth": int(level["depth"]),
                    "parents": len(level["parents"]),
                    "threshold": float(level["threshold"]),
                }
                for level in params.get("levels", ())
                if tells_apart(level["parents"])
            ],
        }


def _one_version(name: str, version: int | None, *columns: Any) -> Any:
    """SELECT `columns` of version `version` of classifier `name` (the latest if None)."""
    statement = select(*columns).where(_CLASSIFIERS.c.name == name)
    if version is None:
        return statement.order_by(_CLASSIFIERS.c.version.desc()).limit(1)
    return statement.where(_CLASSIFIERS.c.version == version)


def _not_found(name: str, version: int | None) -> str:
    which = f"version {version} of " if version is not None else ""
    return f"no classifier {which}{name!r} in the store"


class ClassifierRepository:
    """Named, versioned classifiers: saving a name again adds a version; old versions stay."""

    _SAVE_ATTEMPTS = 5

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def save(
        self,
        name: str,
        *,
        model_sha256: str,
        method: str,
        params: dict[str, Any],
        blob: bytes,
        examples: Seq[Example],
        metrics: dict[str, Any],
        model_name: str | None = None,
        new_name: bool = False,
    ) -> StoredClassifier:
        """Store a new version of `name` (1 if new) and return it.

        `model_name` is the card name of the model `model_sha256` is (`common.ensure_models`).

        `new_name` makes a name that exists an AlreadyExistsError (race-safe: the unique
        (name, version) key lets one of two concurrent creates win).
        """
        check_name(name)
        for index, (record_id, _, labels) in enumerate(examples):
            check_example(str(record_id), [str(x) for x in labels], index)
        params = common.json_object(params, "params")
        metrics = common.json_object(metrics, "metrics")
        examples = tuple(
            (str(i), str(s), tuple(str(x) for x in labels)) for i, s, labels in examples
        )
        for _ in range(self._SAVE_ATTEMPTS):
            try:
                return self._insert_version(
                    name,
                    model_sha256,
                    model_name,
                    method,
                    params,
                    bytes(blob),
                    examples,
                    metrics,
                    new_name=new_name,
                )
            except IntegrityError:
                # another writer took this version number first; the next try sees it
                log.info("classifier %s: version taken by a concurrent save, retrying", name)
            except SQLAlchemyError as exc:
                raise common.unavailable(f"saving classifier {name!r}", exc) from None
        raise StoreError(
            f"saving classifier {name!r} failed: {self._SAVE_ATTEMPTS} concurrent saves took its "
            "next version first"
        )

    def _insert_version(
        self,
        name: str,
        model_sha256: str,
        model_name: str | None,
        method: str,
        params: dict[str, Any],
        blob: bytes,
        examples: tuple[Example, ...],
        metrics: dict[str, Any],
        *,
        new_name: bool,
    ) -> StoredClassifier:
        created = common.now()
        with engines.write_transaction(self._engine) as connection:
            common.ensure_models(connection, {model_sha256: model_name})
            common.ensure_sequences(connection, (sequence for _, sequence, _ in examples))
            latest = connection.execute(
                select(func.max(_CLASSIFIERS.c.version)).where(_CLASSIFIERS.c.name == name)
            ).scalar_one()
            if new_name and latest is not None:
                raise AlreadyExistsError(
                    f"classifier {name!r} exists (version {latest}): set new_version to add a "
                    "version, or delete it first"
                )
            version = (latest or 0) + 1
            classifier_id = connection.execute(
                _CLASSIFIERS.insert()
                .values(
                    name=name,
                    version=version,
                    model_sha256=model_sha256,
                    method=method,
                    params=params,
                    blob=blob,
                    metrics=metrics,
                    created_at=created,
                )
                .returning(_CLASSIFIERS.c.id)
            ).scalar_one()
            if examples:
                connection.execute(
                    _EXAMPLES.insert(),
                    [
                        {
                            "classifier_id": classifier_id,
                            "position": position,
                            "record_id": record_id,
                            "sequence_sha256": common.sequence_sha256(sequence),
                            "labels": list(labels),
                        }
                        for position, (record_id, sequence, labels) in enumerate(examples)
                    ],
                )
        return StoredClassifier(
            id=classifier_id,
            name=name,
            version=version,
            model_sha256=model_sha256,
            method=method,
            params=params,
            blob=blob,
            examples=examples,
            metrics=metrics,
            created_at=created,
        )

    def get(self, name: str, version: int | None = None) -> StoredClassifier:
        """Version `version` of `name` (the latest if None), or ClassifierNotFoundError."""
        check_name(name)
        with common.store_errors("reading a classifier"), self._engine.connect() as connection:
            row = connection.execute(_one_version(name, version, _CLASSIFIERS)).first()
            if row is None:
                raise ClassifierNotFoundError(_not_found(name, version))
            examples = self._examples(connection, [row.id])
        return self._from_row(row, examples.get(row.id, ()))

    def identity(self, name: str, version: int | None = None) -> tuple[int, int, dt.datetime]:
        """(id, version, created_at) of `get(name, version)` without its blob or examples.

        A saved version never changes, so this triple names its content: what memos key on.
        """
        check_name(name)
        columns = (_CLASSIFIERS.c.id, _CLASSIFIERS.c.version, _CLASSIFIERS.c.created_at)
        with common.store_errors("reading a classifier"), self._engine.connect() as connection:
            row = connection.execute(_one_version(name, version, *columns)).first()
        if row is None:
            raise ClassifierNotFoundError(_not_found(name, version))
        return row.id, row.version, common.utc(row.created_at)

    def list(self) -> list[StoredClassifier]:
        """The latest version of every classifier, by name."""
        latest = (
            select(_CLASSIFIERS.c.name, func.max(_CLASSIFIERS.c.version).label("version"))
            .group_by(_CLASSIFIERS.c.name)
            .subquery()
        )
        statement = (
            select(_CLASSIFIERS)
            .join(
                latest,
                and_(
                    _CLASSIFIERS.c.name == latest.c.name,
                    _CLASSIFIERS.c.version == latest.c.version,
                ),
            )
            .order_by(_CLASSIFIERS.c.name)
        )
        with common.store_errors("listing classifiers"), self._engine.connect() as connection:
            rows = connection.execute(statement).all()
            examples = self._examples(connection, [row.id for row in rows])
        return [self._from_row(row, examples.get(row.id, ())) for row in rows]

    def delete(self, name: str) -> None:
        """Delete every version of `name` with its examples."""
        check_name(name)
        with (
            common.store_errors(f"deleting classifier {name!r}"),
            engines.write_transaction(self._engine) as connection,
        ):
            result = connection.execute(_CLASSIFIERS.delete().where(_CLASSIFIERS.c.name == name))
        if result.rowcount == 0:
            raise ClassifierNotFoundError(f"no classifier {name!r} in the store")

    @staticmethod
    def _examples(connection: Connection, ids: Seq[int]) -> dict[int, tuple[Example, ...]]:
        if not ids:
            return {}
        rows = connection.execute(
            select(
                _EXAMPLES.c.classifier_id,
                _EXAMPLES.c.record_id,
                _SEQUENCES.c.sequence,
                _EXAMPLES.c.labels,
            )
            .join(_SEQUENCES, _SEQUENCES.c.sha256 == _EXAMPLES.c.sequence_sha256)
            .where(_EXAMPLES.c.classifier_id.in_(ids))
            .order_by(_EXAMPLES.c.classifier_id, _EXAMPLES.c.position)
        )
        grouped: dict[int, list[Example]] = defaultdict(list)
        for row in rows:
            grouped[row.classifier_id].append((row.record_id, row.sequence, tuple(row.labels)))
        return {key: tuple(value) for key, value in grouped.items()}

    @staticmethod
    def _from_row(row: Any, examples: tuple[Example, ...]) -> StoredClassifier:
        return StoredClassifier(
            id=row.id,
            name=row.name,
            version=row.version,
            model_sha256=row.model_sha256,
            method=row.method,
            params=dict(row.params),
            blob=bytes(row.blob),
            examples=examples,
            metrics=dict(row.metrics),
            created_at=common.utc(row.created_at),
        )
