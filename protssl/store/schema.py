"""The store's tables as a SQLAlchemy 2.0 typed ORM; migrations in `migrations/` create the same.

Content addressing: a model is its weights' sha256, a sequence is the sha256 of its normalised
residues. An embedding's primary key is everything its vector depends on, so a cache lookup is one
primary-key probe and a concurrent duplicate insert is a no-op.

| table | key | what it holds |
|---|---|---|
| models | sha256 | name, architecture and model card (JSON) |
| sequences | sha256 | length and the normalised sequence |
| embeddings | model, sequence, pooling, layer, window policy, dtype, vector dtype | dim, rows, vector bytes |
| classifiers | id; unique (name, version) | model, method, params, blob, metrics |
| classifier_examples | classifier, position | record id, sequence, labels |
| predictions | classifier, sequence | label (or none: abstained), scores |
| jobs | id | kind, status, counts, params, error, timestamps |
| api_tokens | id; unique secret sha256 | name, role, created, revoked (never the secret) |
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "JOB_STATUSES",
    "MODEL_NAME_LENGTH",
    "ApiToken",
    "Base",
    "Classifier",
    "ClassifierExample",
    "EmbeddingRow",
    "Job",
    "Model",
    "Prediction",
    "Sequence",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATUSES: tuple[str, ...] = ("pending", "running", "succeeded", "failed", "cancelled")

SHA256 = String(64)
MODEL_NAME_LENGTH = 200
"""Characters `models.name` holds; a longer card name is stored as the sha256 placeholder."""
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base whose constraints get stable names (Alembic needs them to drop or alter)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Model(Base):
    """A model known to the store, by the sha256 of its weights."""

    __tablename__ = "models"

    sha256: Mapped[str] = mapped_column(SHA256, primary_key=True)
    name: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH))
    architecture: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp)


class Sequence(Base):
    """A normalised protein sequence, by the sha256 of its residues."""

    __tablename__ = "sequences"

    sha256: Mapped[str] = mapped_column(SHA256, primary_key=True)
    length: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[str] = mapped_column(Text)


class EmbeddingRow(Base):
    """One cached vector: little-endian float32/float16 bytes, (dim,) or (rows, dim) per residue."""

    __tablename__ = "embeddings"

    model_sha256: Mapped[str] = mapped_column(ForeignKey("models.sha256"), primary_key=True)
    sequence_sha256: Mapped[str] = mapped_column(ForeignKey("sequences.sha256"), primary_key=True)
    pooling: Mapped[str] = mapped_column(String(20), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_policy: Mapped[str] = mapped_column(String(64), primary_key=True)
    dtype: Mapped[str] = mapped_column(String(16), primary_key=True)
    vector_dtype: Mapped[str] = mapped_column(String(16), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp)


class Classifier(Base):
    """One version of a named few-shot classifier."""

    __tablename__ = "classifiers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    model_sha256: Mapped[str] = mapped_column(ForeignKey("models.sha256"))
    method: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp)

    __table_args__ = (
        UniqueConstraint("name", "version"),
        {"sqlite_autoincrement": True},  # a deleted classifier's id is never handed out again
    )


class ClassifierExample(Base):
    """A labelled example a classifier version was fitted on, in the order given."""

    __tablename__ = "classifier_examples"

    classifier_id: Mapped[int] = mapped_column(
        ForeignKey("classifiers.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[str] = mapped_column(String(500))
    sequence_sha256: Mapped[str] = mapped_column(ForeignKey("sequences.sha256"))
    labels: Mapped[list[str]] = mapped_column(JSON)


class Prediction(Base):
    """A classifier version's answer for a sequence: the label (none when it abstained) and scores."""

    __tablename__ = "predictions"

    classifier_id: Mapped[int] = mapped_column(
        ForeignKey("classifiers.id", ondelete="CASCADE"), primary_key=True
    )
    sequence_sha256: Mapped[str] = mapped_column(ForeignKey("sequences.sha256"), primary_key=True)
    label: Mapped[str | None] = mapped_column(String(200))
    scores: Mapped[dict[str, float]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp)


class Job(Base):
    """A batch job: what it does, how far it got, and whether it finished."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), index=True)
    total: Mapped[int | None] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status",
        ),
    )


class ApiToken(Base):
    """An API token: its public id, name and role, and the sha256 of the token (never the token)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))
    secret_sha256: Mapped[str] = mapped_column(SHA256, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    __table_args__ = (CheckConstraint("role IN ('read', 'write', 'admin')", name="role"),)
