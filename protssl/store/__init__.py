"""The SQL store: content-addressed embedding cache, classifiers, jobs.

Open it with `Store(StoreConfig(url=...))` (SQLite by default, PostgreSQL via psycopg 3); it is
migrated to the newest schema on open. No SQL lives outside this package: one module per
repository (`embeddings`, `classifiers`, `jobs`, `tokens`), `repository` for the `Store` that holds them,
`common` for what they share, `schema` for the tables and `engine` for connections and migrations.
"""

from protssl.store.classifiers import StoredClassifier
from protssl.store.common import sequence_sha256
from protssl.store.config import URL_ENV, StoreConfig, default_url
from protssl.store.embeddings import EmbeddingCache, EmbeddingItem, EmbeddingKey
from protssl.store.jobs import StoredJob
from protssl.store.repository import Store

__all__ = [
    "URL_ENV",
    "EmbeddingCache",
    "EmbeddingItem",
    "EmbeddingKey",
    "Store",
    "StoreConfig",
    "StoredClassifier",
    "StoredJob",
    "default_url",
    "sequence_sha256",
]
