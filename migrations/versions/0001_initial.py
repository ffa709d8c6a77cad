"""Initial schema: models, sequences, embeddings, classifiers, classifier_examples, predictions, jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"], unique=False)
    op.create_table(
        "models",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("architecture", sa.JSON(), nullable=True),
        sa.Column("card", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_models")),
    )
    op.create_table(
        "sequences",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_sequences")),
    )
    op.create_table(
        "classifiers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=50), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_sha256"], ["models.sha256"], name=op.f("fk_classifiers_model_sha256_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_classifiers")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_classifiers_name_version")),
    )
    op.create_table(
        "embeddings",
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("sequence_sha256", sa.String(length=64), nullable=False),
        sa.Column("pooling", sa.String(length=20), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("window_policy", sa.String(length=64), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("vector_dtype", sa.String(length=16), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_sha256"], ["models.sha256"], name=op.f("fk_embeddings_model_sha256_models")
        ),
        sa.ForeignKeyConstraint(
            ["sequence_sha256"],
            ["sequences.sha256"],
            name=op.f("fk_embeddings_sequence_sha256_sequences"),
        ),
        sa.PrimaryKeyConstraint(
            "model_sha256",
            "sequence_sha256",
            "pooling",
            "layer",
            "window_policy",
            "dtype",
            "vector_dtype",
            name=op.f("pk_embeddings"),
        ),
    )
    op.create_table(
        "classifier_examples",
        sa.Column("classifier_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.String(length=500), nullable=False),
        sa.Column("sequence_sha256", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["classifier_id"],
            ["classifiers.id"],
            name=op.f("fk_classifier_examples_classifier_id_classifiers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sequence_sha256"],
            ["sequences.sha256"],
            name=op.f("fk_classifier_examples_sequence_sha256_sequences"),
        ),
        sa.PrimaryKeyConstraint("classifier_id", "position", name=op.f("pk_classifier_examples")),
    )
    op.create_table(
        "predictions",
        sa.Column("classifier_id", sa.Integer(), nullable=False),
        sa.Column("sequence_sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["classifier_id"],
            ["classifiers.id"],
            name=op.f("fk_predictions_classifier_id_classifiers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sequence_sha256"],
            ["sequences.sha256"],
            name=op.f("fk_predictions_sequence_sha256_sequences"),
        ),
        sa.PrimaryKeyConstraint("classifier_id", "sequence_sha256", name=op.f("pk_predictions")),
    )


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("classifier_examples")
    op.drop_table("embeddings")
    op.drop_table("classifiers")
    op.drop_table("sequences")
    op.drop_table("models")
    op.drop_index(op.f("ix_jobs_status"), table_name="jobs")
    op.drop_table("jobs")
