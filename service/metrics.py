"""Prometheus metrics of one server, on its own registry, served from a side port."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServiceMetrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServiceMetrics:
    """Requests, latency, batch sizes, queue depth and cache hits of one server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "protssl_requests",
            "RPCs finished, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "protssl_request_latency_seconds",
            "RPC latency, by method",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_sequences = Histogram(
            "protssl_batch_sequences",
            "Sequences merged into one model-worker batch",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "protssl_batch_requests",
            "Requests (or stream chunks) merged into one model-worker batch",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.forward_tokens = Histogram(
            "protssl_forward_tokens",
            "Residues in one encoder forward",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "protssl_queue_depth", "Requests waiting for the model worker", registry=r
        )
        self.embeddings = Counter(
            "protssl_embeddings",
            "Vectors returned, by source (computed or cached)",
            ["source"],
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "protssl_cache_hit_ratio", "Cached / all vectors returned since start", registry=r
        )
        self.dropped = Counter(
            "protssl_dropped_jobs",
            "Queued work dropped before it ran, by reason (cancelled, deadline)",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "protssl_refused_calls",
            "Calls refused RESOURCE_EXHAUSTED because a capacity limit was full, by limit "
            "(max_calls, max_streams, max_queue)",
            ["limit"],
            registry=r,
        )
        self.memory_releases = Counter(
            "protssl_memory_releases",
            "Times the idle model worker handed memory its forwards freed back to the kernel",
            registry=r,
        )
        # every series at 0 from the start: an alert on one that appeared only at its first
        # refusal or drop read "no data" until then
        for limit in ("max_calls", "max_streams", "max_queue"):
            self.refused.labels(limit=limit)
        for reason in ("cancelled", "deadline"):
            self.dropped.labels(reason=reason)
        self._computed_vectors = self.embeddings.labels(source="computed")
        self._cached_vectors = self.embeddings.labels(source="cached")
        self._calls: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._lock = threading.Lock()
        self._computed = 0
        self._cached = 0
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def forwards(self) -> int:
        """Encoder forwards run so far (the count of the forward-tokens histogram)."""
        value = self.registry.get_sample_value("protssl_forward_tokens_count")
        return int(value or 0)

    def record_call(self, method: str, code: str, seconds: float) -> None:
        """Count one finished RPC and observe its latency.

        The labelled children are looked up once per (method, code): `labels()` costs about as
        much as the rest of a cache hit's bookkeeping.
        """
        children = self._calls.get((method, code))
        if children is None:
            children = self._calls.setdefault(
                (method, code),
                (
                    self.requests.labels(method=method, code=code),
                    self.latency.labels(method=method),
                ),
            )
        children[0].inc()
        children[1].observe(seconds)

    def record_vectors(self, *, computed: int, cached: int) -> None:
        """Count returned vectors by source and refresh the hit ratio."""
        if computed:
            self._computed_vectors.inc(computed)
        if cached:
            self._cached_vectors.inc(cached)
        with self._lock:
            self._computed += computed
            self._cached += cached
            total = self._computed + self._cached
            if total:
                self.cache_hit_ratio.set(self._cached / total)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server on a daemon thread; returns the bound port."""
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._http.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Stop the metrics HTTP server, if one runs."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
