"""Build the gRPC server (`create_server`, for tests and embedding) and run it (`serve`, for the CLI).

The server hosts EmbeddingService, ClassifierService, TokenService, grpc.health.v1 and server
reflection (v1 and v1alpha), with one model worker (the dynamic batcher) behind them and
Prometheus metrics on a side port. Calls need an API token from the store (`service.interceptors.AuthInterceptor`) unless the
config says `insecure_no_auth`; with `tls_cert`/`tls_key` the port speaks only TLS, and with
`tls_client_ca` clients must present a certificate that CA signed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.auth import TokenVerifier
from protssl.checkpoint import LoadedModel, load_model
from protssl.errors import InvalidInputError
from protssl.memory import release_freed_memory
from protssl.store import Store
from service.admission import CallGate
from service.batcher import EmbeddingBatcher
from service.binding import bind_error, core_lines_held, probe_bind
from service.config import ServiceConfig, store_config
from service.interceptors import AuthInterceptor, CallInterceptor
from service.metrics import ServiceMetrics
from service.reflection import enable_reflection
from service.servicers import ClassifierServicer, EmbeddingServicer, TokenServicer, unserved
from service.shutdown import SIGNAL_POLL_S, stop_on_signals
from service.supervisor import supervise

__all__ = [
    "KEEPALIVE_OPTIONS",
    "SERVICE_NAMES",
    "ProtsslServer",
    "create_server",
    "serve",
    "serve_process",
    "store_config",
]

log = logging.getLogger(__name__)

SERVICE_NAMES: tuple[str, ...] = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in ("EmbeddingService", "ClassifierService", "TokenService")
)

EMBEDDING_SERVICE = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),  # ping an idle client every minute ...
    ("grpc.keepalive_timeout_ms", 20_000),  # ... and drop its connection if it does not answer
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),  # clients may ping every 10 s ...
    ("grpc.http2.max_ping_strikes", 2),  # ... and get GOAWAY after 2 pings more often than that
    ("grpc.keepalive_permit_without_calls", 1),
)
"""Keepalive enforcement: dead peers are found, and no client may flood the server with pings."""


class ProtsslServer:
    """A created server: the gRPC server plus its model worker, health state and metrics."""

    def __init__(
        self,
        server: grpc.Server,
        *,
        batcher: EmbeddingBatcher,
        health_servicer: health.HealthServicer,
        metrics: ServiceMetrics,
        metrics_port: int | None,
        owned_store: Store | None,
        store: Store | None = None,
        config: ServiceConfig | None = None,
        embedding: EmbeddingServicer | None = None,
        gate: CallGate | None = None,
    ) -> None:
        self.grpc_server = server
        self.gate = gate
        self.embedding = embedding
        self.owned_store = owned_store
        self.store = store
        self.config = config or ServiceConfig()
        self.batcher = batcher
        self.health = health_servicer
        self.metrics = metrics
        self.metrics_port = metrics_port
        self._stopped = threading.Event()
        self._store_up = True
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self.grpc_server.start()
        self._set_health(store_up=True)
        if self.store is not None:
            self._watcher = threading.Thread(
                target=self._watch_store, name="protssl-store-health", daemon=True
            )
            self._watcher.start()

    def _set_health(self, *, store_up: bool) -> None:
        """SERVING, or NOT_SERVING for what needs the store while it is down."""
        serving = health_pb2.HealthCheckResponse.SERVING
        down = health_pb2.HealthCheckResponse.NOT_SERVING
        embedding_up = store_up or self.config.embed_without_store
        self.health.set("", serving if store_up else down)
        for name in SERVICE_NAMES:  # the classifier and token services need the store
            up = embedding_up if name == EMBEDDING_SERVICE else store_up
            self.health.set(name, serving if up else down)

    def _watch_store(self) -> None:
        """Ping the store every `health_check_interval_s`; health follows what it finds."""
        assert self.store is not None
        while not self._stopped.wait(self.config.health_check_interval_s):
            up = self.store.ping()
            if up != self._store_up and not self._stopped.is_set():
                self._store_up = up
                log.warning("store %s", "is back: SERVING" if up else "is down: NOT_SERVING")
                self._set_health(store_up=up)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within `grace` seconds, then release all."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.join()
        self.health.enter_graceful_shutdown()
        if self.embedding is not None:
            self.embedding.drain()  # open streams hand over to the next server, not a cancel
        self.grpc_server.stop(grace).wait()
        if self.gate is not None:
            self.gate.shutdown(wait=False)
        self.batcher.close(timeout=grace)
        self.metrics.close()
        if self.owned_store is not None:
            self.owned_store.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(
    config: ServiceConfig,
    *,
    model: LoadedModel | None = None,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    reuse_port: bool = False,
) -> tuple[ProtsslServer, int]:
    """Build (not start) a server for `config`; returns it and the bound gRPC port.

    `model` skips loading `config.model` (tests hand in one they built); `store` skips opening
    `config.database_url` (the caller keeps owning it); `registry` receives the Prometheus metrics
    (a fresh one per server by default). With `config.store` false there is no cache and the
    classifier RPCs answer UNIMPLEMENTED saying so (the store is still opened for its API tokens
    unless `config.insecure_no_auth`, when the token RPCs answer UNIMPLEMENTED too). `reuse_port` lets
    sibling processes bind the same port (`service.supervisor`); otherwise a port in use is an
    error.
    """
    credentials = _server_credentials(config)
    if model is None:
        model = load_model(config.model, device=config.device, dtype=config.dtype)
    owned_store = None
    if store is None and (config.store or not config.insecure_no_auth):
        store = owned_store = Store(store_config(config))
    token_store = store
    interceptors: list[grpc.ServerInterceptor] = []
    if not config.insecure_no_auth:
        assert token_store is not None
        verifier = TokenVerifier(token_store.tokens.find, ttl_s=config.token_cache_s)
        interceptors.append(AuthInterceptor(verifier))
        if not any(t.active for t in token_store.tokens.list()):
            log.warning(
                "no active API token in the store (%s): every call but health and reflection "
                "will be refused; make one with `protssl token create --role read|write|admin`",
                token_store.config.redacted_url(),
            )
    if not config.store:
        store = None
    metrics = ServiceMetrics(registry)
    batcher = EmbeddingBatcher(
        model,
        max_batch_tokens=config.max_batch_tokens,
        max_group_tokens=config.max_group_tokens,
        min_batch_fill=config.min_batch_fill,
        max_queue_delay_s=config.max_queue_delay_ms / 1000,
        max_queue=config.max_queue,
        metrics=metrics,
        cache=store.embeddings if store is not None else None,
    )
    message_bytes = config.max_message_mb * 1024 * 1024
    # max_calls is kept by the gate, not grpcio's maximum_concurrent_rpcs, whose refusals were
    # grpcio's words, uncounted and unlogged (service.admission)
    gate = CallGate(max_calls=config.max_calls, workers=config.workers, metrics=metrics)
    server = grpc.server(
        gate,
        interceptors=[CallInterceptor(metrics, gate=gate), *interceptors],
        options=[
            ("grpc.max_send_message_length", message_bytes),
            ("grpc.max_receive_message_length", message_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_concurrent_streams", config.max_connection_streams),
            *KEEPALIVE_OPTIONS,
        ],
    )
    embedding_servicer = EmbeddingServicer(model, batcher, config)
    pb_grpc.add_EmbeddingServiceServicer_to_server(embedding_servicer, server)
    if store is not None:
        classifiers = ClassifierServicer(model, batcher, config, store)
        pb_grpc.add_ClassifierServiceServicer_to_server(classifiers, server)
    else:
        why = "this server keeps no classifiers: it runs without a store (--store false)"
        server.add_generic_rpc_handlers((unserved("ClassifierService", why),))
    if token_store is not None:
        pb_grpc.add_TokenServiceServicer_to_server(TokenServicer(token_store), server)
    else:
        why = "this server keeps no API tokens: it runs without a store and without authentication"
        server.add_generic_rpc_handlers((unserved("TokenService", why),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
    )
    address = f"{config.host}:{config.port}"

    def release() -> None:
        """What a server that cannot bind its ports holds: the model worker, threads, the store."""
        batcher.close()
        gate.shutdown(wait=False)
        if owned_store is not None:
            owned_store.close()

    try:
        with core_lines_held():  # grpc's C core says in its words what the line below says in ours
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        release()
        if credentials is not None and probe_bind(config.host, config.port) is None:
            raise _refused_tls(config) from None  # the port is free: the PEMs were refused
        raise bind_error("the gRPC port", config.host, config.port, exc, "--port") from None
    if config.insecure_no_auth:
        _warn_no_auth(config, port)
    elif credentials is None and not config.loopback_only:
        log.warning(
            "serving %s:%d without TLS: API tokens and sequences cross the network in clear "
            "(give tls_cert and tls_key, or put a TLS proxy in front)",
            config.host,
            port,
        )
    metrics_port = None
    if config.metrics_port is not None:
        try:
            metrics_port = metrics.serve(config.host, config.metrics_port)
        except OSError as exc:
            release()
            raise bind_error(
                "the metrics port", config.host, config.metrics_port, exc, "--metrics-port (or off)"
            ) from None
    log.info("model %s (%s, sha256 %s…)", model.name, model.dtype_name, model.sha256[:12])
    return (
        ProtsslServer(
            server,
            batcher=batcher,
            health_servicer=health_servicer,
            metrics=metrics,
            metrics_port=metrics_port,
            owned_store=owned_store,
            store=store,
            config=config,
            embedding=embedding_servicer,
            gate=gate,
        ),
        port,
    )


def _server_credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the config's PEM files (mutual TLS with a client CA); None: plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    pem = {
        name: _read_pem(path, name, holds)
        for name, path, holds in (
            ("tls_cert", config.tls_cert, "CERTIFICATE"),
            ("tls_key", config.tls_key, "PRIVATE KEY"),
            ("tls_client_ca", config.tls_client_ca, "CERTIFICATE"),
        )
        if path is not None
    }
    return grpc.ssl_server_credentials(
        [(pem["tls_key"], pem["tls_cert"])],
        root_certificates=pem.get("tls_client_ca"),
        require_client_auth="tls_client_ca" in pem,
    )


def _read_pem(path: str, what: str, holds: str) -> bytes:
    """The PEM file's bytes, refused in one line when it is not a PEM `holds` (a swapped cert and
    key was grpc's 'cannot bind the gRPC port ... Failed to bind')."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{what}: cannot read {path} ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise InvalidInputError(f"{what}: {path} is not a PEM file (no -----BEGIN line)")
    if f"{holds}-----".encode() not in data:
        raise InvalidInputError(
            f"{what}: {path} holds no {holds.lower()} (no -----BEGIN ...{holds} line)"
        )
    return data


def _refused_tls(config: ServiceConfig) -> InvalidInputError:
    """What to say when grpc refuses TLS files that read as PEM (it said 'Failed to bind')."""
    files = f"tls_cert {config.tls_cert}, tls_key {config.tls_key}"
    check = "tls_key is the unencrypted private key of tls_cert's first certificate"
    if config.tls_client_ca is not None:
        files += f", tls_client_ca {config.tls_client_ca}"
        check += " and tls_client_ca holds CA certificates"
    return InvalidInputError(f"TLS: grpc refused the files ({files}): check that {check}")


def _warn_no_auth(config: ServiceConfig, port: int) -> None:
    where = "loopback only" if config.loopback_only else "BEYOND THIS MACHINE"
    log.warning(
        "authentication is OFF (insecure_no_auth): whoever reaches %s:%d (%s) may embed and "
        "create, change or delete every classifier",
        config.host,
        port,
        where,
    )


def serve(config: ServiceConfig) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; returns the exit code.

    With `config.processes` > 1, that many server processes share the port (`service.supervisor`).
    """
    if config.processes > 1:
        return supervise(config, serve_process)
    return serve_process(config)


def serve_process(
    config: ServiceConfig,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[int, int | None], None] | None = None,
) -> int:
    """One server process: warm the model's kernels, serve until SIGTERM or SIGINT, shut down.

    `on_ready(port, metrics_port)` replaces the "serving" log line (a supervised child reports to
    its parent, which announces the whole group).
    """
    server, port = create_server(config, reuse_port=reuse_port)
    started = time.perf_counter()
    shapes = server.batcher.model.encoder.warm_up(config.max_batch_tokens)
    if shapes:
        log.info(
            "built kernels for %d matmul shapes in %.1f s", shapes, time.perf_counter() - started
        )
    release_freed_memory()  # the warm-up's, before calls arrive (see the function)
    stopped = stop_on_signals()
    server.start()
    if on_ready is not None:
        on_ready(port, server.metrics_port)
    else:
        metrics = (
            "no metrics" if server.metrics_port is None else f"metrics port {server.metrics_port}"
        )
        log.info("serving protssl.v1 on %s:%d (%s)", config.host, port, metrics)
    while not stopped():
        time.sleep(SIGNAL_POLL_S)
    log.info("shutting down: finishing in-flight calls (grace %.1f s)", config.grace_s)
    server.stop(config.grace_s)
    log.info("stopped")
    return 0
