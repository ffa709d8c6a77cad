"""The SQL store: content-addressed embedding cache, models, classifiers, predictions, jobs.

Open it with `Store(StoreConfig(url=...))` (SQLite by default, PostgreSQL via psycopg 3); it is
migrated to the newest schema on open. No SQL lives outside this package.
"""

from protssl.store.config import URL_ENV, StoreConfig, default_url
from protssl.store.repository import (
    EmbeddingCache,
    EmbeddingItem,
    EmbeddingKey,
    PredictionItem,
    Store,
    StoredClassifier,
    StoredJob,
    StoredModel,
    StoredPrediction,
    sequence_sha256,
)

__all__ = [
    "URL_ENV",
    "EmbeddingCache",
    "EmbeddingItem",
    "EmbeddingKey",
    "PredictionItem",
    "Store",
    "StoreConfig",
    "StoredClassifier",
    "StoredJob",
    "StoredModel",
    "StoredPrediction",
    "default_url",
    "sequence_sha256",
]
