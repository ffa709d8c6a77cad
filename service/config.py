"""Service configuration: one frozen dataclass; the entry points build it from flags and PROTSSL_* variables."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from protssl.dtypes import DTypeName, check_dtype_name
from protssl.endpoint import DEFAULT_PORT
from protssl.errors import InvalidInputError, refuse_non_finite

if TYPE_CHECKING:
    from protssl.store import StoreConfig

__all__ = ["ServiceConfig", "store_config"]


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the server needs; defaults serve the shipped model and the default store on loopback."""

    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 exposes the server beyond this machine."""
    port: int = DEFAULT_PORT
    """gRPC port; 0 picks a free one (create_server returns it)."""
    model: str | None = None
    """Model folder, fair-esm .pt or preset name; None = the shipped default model."""
    device: str = "cpu"
    """Torch device of the model worker (cpu, cuda, cuda:1)."""
    dtype: DTypeName = "auto"
    """Compute dtype of the model: auto = bfloat16 where the hardware has it; int8 is lossy, CPU only."""
    database_url: str | None = None
    """SQLAlchemy URL of the embedding cache and classifiers; None = the default SQLite file."""
    store: bool = True
    """Cache-through to the store; False computes every vector and disables the classifier RPCs."""
    memory_cache_mb: int = 256
    """Recently read or written vectors kept in memory in front of the store (MiB; 0 = off)."""
    max_batch_tokens: int = 4096
    """Token budget (rows x padded length) of one batched forward on the model worker."""
    max_group_tokens: int = 65536
    """Tokens the worker takes off the queue at once, sorted by length into forwards (pads less)."""
    min_batch_fill: float = 0.85
    """Rows join a forward only while real tokens are at least this share of padded ones (GPU: lower)."""
    max_queue_delay_ms: float = 5.0
    """How long the worker waits for more requests to fill a batch before it runs."""
    max_queue: int = 256
    """Requests (or stream chunks) waiting for the worker; past it calls get RESOURCE_EXHAUSTED."""
    max_sequences: int = 1000
    """Sequences per request (or per stream message)."""
    max_residues: int = 1_000_000
    """Residues per request (or per stream message)."""
    max_sequence_length: int = 40_000
    """Residues in one sequence; longer ones are refused (shorter long ones are windowed)."""
    max_message_mb: int = 64
    """Largest gRPC message sent or received, in MiB; a response that would be larger is refused
    before any work (INVALID_ARGUMENT)."""
    max_id_length: int = 500
    """Characters in a sequence or example id (the store's column width)."""
    max_examples: int = 10_000
    """Labelled examples one classifier version holds (Create, and AddExamples with the old ones)."""
    max_classes: int = 1_000
    """Distinct labels one classifier version holds."""
    max_streams: int = 16
    """EmbedStream calls open at once; past it RESOURCE_EXHAUSTED. Capped at half of `workers` so
    streams can never hold every handler thread (Health and unary calls keep theirs)."""
    max_calls: int = 1000
    """Calls in progress or waiting for a handler thread, all clients together; past it a call gets
    RESOURCE_EXHAUSTED at once instead of queueing without bound (a flood of tiny calls)."""
    max_connection_streams: int = 100
    """Calls open at once on one client connection (HTTP/2 max concurrent streams)."""
    stream_idle_timeout_s: float = 60.0
    """An EmbedStream with nothing in flight that sends no message for this long is ended
    (DEADLINE_EXCEEDED), so a stalled client does not hold a stream slot."""
    stream_id_memory: int = 100_000
    """Ids per EmbedStream remembered to refuse a duplicate sent in a later message (as 64-bit
    hashes, about 100 bytes each); past it, duplicates are refused only within one message."""
    database_connect_timeout_s: float = 5.0
    """PostgreSQL: how long opening a connection may take."""
    database_statement_timeout_s: float = 30.0
    """PostgreSQL: how long one statement may run (a frozen database fails calls, not hangs them)."""
    embed_without_store: bool = False
    """While the database is down, embed without the cache (computed, not kept) instead of
    UNAVAILABLE. Classifier calls need the database and stay UNAVAILABLE."""
    health_check_interval_s: float = 2.0
    """How often the store is pinged; grpc.health.v1 reports NOT_SERVING while it does not answer."""
    workers: int = 64
    """gRPC handler threads: the most calls served at once (waiting calls hold one each)."""
    grace_s: float = 10.0
    """On SIGTERM: seconds in-flight calls get to finish after the server stops accepting."""
    metrics_port: int | None = 9464
    """Prometheus /metrics side port on `host`; 0 = a free port, None = no metrics server.

    With several processes, process i serves its own metrics on `metrics_port + i`."""
    processes: int = 1
    """Server processes sharing the port (SO_REUSEPORT), each with its own GIL, model worker and
    batcher; the kernel spreads client connections across them. More than 1 pays on many cores."""
    insecure_no_auth: bool = False
    """Serve without API tokens: every caller may do everything (the CLI then binds loopback
    unless --host is given, and warns)."""
    token_cache_s: float = 10.0
    """Seconds a token check is remembered: a revoked token stops working within this time."""
    tls_cert: str | None = None
    """PEM certificate chain of the server; with `tls_key`, the server speaks only TLS."""
    tls_key: str | None = None
    """PEM private key of `tls_cert`."""
    tls_client_ca: str | None = None
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS); needs tls_cert."""

    def __post_init__(self) -> None:
        if not self.host:
            raise InvalidInputError("host must not be empty")
        refuse_non_finite(self)  # a NaN timeout or grace passed every check below
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise InvalidInputError(f"{name} must be in 0..65535, got {value}")
        check_dtype_name(self.dtype)
        positive = (
            "max_batch_tokens",
            "max_group_tokens",
            "max_queue",
            "max_sequences",
            "max_residues",
            "max_sequence_length",
            "max_message_mb",
            "max_id_length",
            "max_examples",
            "max_classes",
            "max_streams",
            "max_connection_streams",
            "max_calls",
            "stream_id_memory",
            "workers",
            "processes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.metrics_port and self.metrics_port + self.processes - 1 > 65535:
            raise InvalidInputError(
                f"metrics ports {self.metrics_port}..{self.metrics_port + self.processes - 1} "
                "(one per process) run past 65535"
            )
        if self.max_group_tokens < self.max_batch_tokens:
            raise InvalidInputError(
                f"max_group_tokens {self.max_group_tokens} is below max_batch_tokens "
                f"{self.max_batch_tokens}"
            )
        if not 0.0 <= self.min_batch_fill <= 1.0:
            raise InvalidInputError(f"min_batch_fill must be in [0, 1], got {self.min_batch_fill}")
        for name in (
            "stream_idle_timeout_s",
            "database_connect_timeout_s",
            "database_statement_timeout_s",
            "health_check_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_queue_delay_ms", "grace_s", "memory_cache_mb", "token_cache_s"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must not be negative, got {getattr(self, name)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInputError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInputError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")

    @property
    def loopback_only(self) -> bool:
        """Whether `host` is a loopback address (only this machine can connect)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def stream_slots(self) -> int:
        """EmbedStream calls served at once: `max_streams`, at most half of the handler threads."""
        return max(1, min(self.max_streams, self.workers // 2))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The configurable names, in declaration order (flags are --name-with-dashes, env PROTSSL_NAME)."""
        return tuple(f.name for f in fields(cls))


def store_config(config: ServiceConfig) -> StoreConfig:
    """The store a server with `config` opens: its database URL (or the default) and memory cache."""
    from protssl.store import StoreConfig  # SQLAlchemy only once a server starts, not for --help

    url = config.database_url
    base = StoreConfig(url=url) if url else StoreConfig()
    return replace(
        base,
        memory_cache_mb=config.memory_cache_mb,
        connect_timeout_s=config.database_connect_timeout_s,
        statement_timeout_s=config.database_statement_timeout_s,
        cache_optional=config.embed_without_store,
    )
