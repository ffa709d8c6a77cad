"""The store: one object that opens the database (migrated on open) and holds its repositories.

No SQL lives outside `protssl.store`. Every call is one short transaction; a batch is one
statement per table (never one per sequence). Each repository is its own module: `embeddings`
(the cache), `classifiers`, `jobs` and `tokens` (API tokens); `common` holds what they share.
"""

from __future__ import annotations

from types import TracebackType

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import protssl.store.engine as engines
from protssl.store.classifiers import ClassifierRepository
from protssl.store.config import StoreConfig
from protssl.store.embeddings import EmbeddingCache
from protssl.store.jobs import JobRepository
from protssl.store.tokens import TokenRepository

__all__ = ["Store"]


class Store:
    """The SQL store: open it from a `StoreConfig` (migrated on open), use it, close it.

    >>> with Store(StoreConfig(url="sqlite:///cache.sqlite3")) as store:  # doctest: +SKIP
    ...     vectors = store.embeddings.get_many(keys)
    """

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self.engine = engines.create_store_engine(self.config)
        try:
            if self.config.migrate:
                engines.upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.embeddings = EmbeddingCache(
            self.engine,
            vector_dtype=self.config.vector_dtype,
            memory_bytes=self.config.memory_cache_mb * 1024 * 1024,
            optional=self.config.cache_optional,
        )
        self.classifiers = ClassifierRepository(self.engine)
        self.jobs = JobRepository(self.engine)
        self.tokens = TokenRepository(self.engine)

    def ping(self) -> bool:
        """Whether the database answers now (one `SELECT 1`); what a health check asks."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
