"""SQLite: classifier ids are never handed out again (AUTOINCREMENT).

Without AUTOINCREMENT SQLite gives a new row the largest id + 1, so deleting the newest classifier
let the next one take its id. The table is rebuilt with AUTOINCREMENT; its examples and predictions
are copied aside and back, since dropping the old table cascades to them (foreign keys are on and
cannot be switched off inside the migration's transaction). PostgreSQL's sequence never reuses an
id: nothing to do there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHILDREN = ("classifier_examples", "predictions")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    for child in _CHILDREN:
        op.execute(f"CREATE TEMP TABLE _keep_{child} AS SELECT * FROM {child}")
    with op.batch_alter_table(
        "classifiers", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
    for child in _CHILDREN:
        op.execute(f"INSERT INTO {child} SELECT * FROM _keep_{child}")
        op.execute(f"DROP TABLE _keep_{child}")
