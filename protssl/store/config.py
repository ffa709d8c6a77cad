"""Store configuration: where the database is and how vectors are kept.

Only entry points (the CLI, the service) read the environment: they call
`StoreConfig.from_environ(os.environ, url=...)` and hand the config down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import platformdirs

from protssl.errors import InvalidInputError, refuse_non_finite

__all__ = ["URL_ENV", "VECTOR_DTYPES", "StoreConfig", "default_url"]

URL_ENV = "PROTSSL_DATABASE_URL"
"""The environment variable entry points read for the database URL."""

VectorDType = Literal["float32", "float16"]
VECTOR_DTYPES: tuple[str, ...] = ("float32", "float16")
_DIALECTS = ("sqlite", "postgresql")
_SQLITE_URLS = ("sqlite:///", "sqlite://?")
"""A file's path after three slashes (`sqlite://` alone, or with options, is in memory): after two,
SQLAlchemy takes a host, refused deep inside (`sqlite://tmp/x.sqlite3`) or read as another path."""


def default_url() -> str:
    """A SQLite file in the user's data directory (the folder is created when the store opens)."""
    path = Path(platformdirs.user_data_dir("protssl", appauthor=False)) / "protssl.sqlite3"
    return f"sqlite:///{path}"


@dataclass(frozen=True)
class StoreConfig:
    """Where the SQL store lives and how it behaves."""

    url: str = field(default_factory=default_url)
    """SQLAlchemy URL: `sqlite:///path.sqlite3` or `postgresql+psycopg://user@host/db`."""
    vector_dtype: VectorDType = "float32"
    """How embedding vectors are stored: float32, or float16 to halve the space."""
    busy_timeout_s: float = 30.0
    """How long a SQLite writer waits for the database lock before failing (busy timeout)."""
    migrate: bool = True
    """Upgrade the schema to the newest migration when the store opens."""
    memory_cache_mb: int = 0
    """Recently read or written vectors kept in memory (MiB, least recently used dropped); 0 = off."""
    connect_timeout_s: float = 5.0
    """PostgreSQL: how long opening a connection may take (libpq rounds up to whole seconds, >= 2)."""
    statement_timeout_s: float = 30.0
    """PostgreSQL: how long one statement may run before the server cancels it (a frozen database)."""
    cache_optional: bool = False
    """While the database is unreachable, the embedding cache misses and drops writes (vectors are
    computed without it) instead of failing the call."""

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if self.dialect not in _DIALECTS:
            raise InvalidInputError(
                f"database URL must start with sqlite:// or postgresql+psycopg://, not {self.url!r}"
            )
        sqlite = self.dialect == "sqlite"
        if sqlite and self.url != "sqlite://" and not self.url.startswith(_SQLITE_URLS):
            raise InvalidInputError(
                f"a SQLite URL has three slashes and then the file's path, "
                f"sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3, not "
                f"{self.url!r}"
            )
        if self.dialect == "postgresql" and not self.url.startswith("postgresql+psycopg://"):
            raise InvalidInputError(
                f"PostgreSQL URLs need the psycopg 3 driver: postgresql+psycopg://…, not {self.url!r}"
            )
        if self.vector_dtype not in VECTOR_DTYPES:
            raise InvalidInputError(
                f"vector_dtype must be float32 or float16, not {self.vector_dtype!r}"
            )
        if self.busy_timeout_s <= 0:
            raise InvalidInputError(f"busy_timeout_s must be positive, got {self.busy_timeout_s}")
        if self.connect_timeout_s <= 0 or self.statement_timeout_s <= 0:
            raise InvalidInputError("connect_timeout_s and statement_timeout_s must be positive")
        if self.memory_cache_mb < 0:
            raise InvalidInputError(f"memory_cache_mb must be >= 0, got {self.memory_cache_mb}")

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql` (the URL scheme before any `+driver`)."""
        return self.url.split(":", 1)[0].split("+", 1)[0]

    def redacted_url(self) -> str:
        """The URL with any password masked, for logs and `protssl info`."""
        from sqlalchemy import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        url: str | None = None,
        vector_dtype: VectorDType = "float32",
    ) -> StoreConfig:
        """Config for an entry point: `url` if given, else PROTSSL_DATABASE_URL, else the default."""
        chosen = url or environ.get(URL_ENV) or default_url()
        return cls(url=chosen, vector_dtype=vector_dtype)
