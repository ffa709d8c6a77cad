"""The Python SDK: `protssl.Client("host:port")` over the gRPC service.

    with protssl.Client("127.0.0.1:50051", token=token) as client:   # or $PROTSSL_TOKEN
        result = client.embed(["MKTAYIAKQR", "MSEQNNTEMT"])
        result.ids, result.vectors          # ['seq0', 'seq1'], float32 array (2, dim)

Every call carries the API token as `authorization: Bearer` metadata; `root_certificates` (and a
client certificate and key for mutual TLS) make the channel TLS. Calls time out (`timeout`
seconds; a stream, however long it runs, after `timeout` seconds without a message either way),
retry with exponential backoff while the server is UNAVAILABLE (the long jobs, `embed_file`,
`embed_fasta`, `embed_stream` and `classify`, keep trying for `reconnect` seconds and carry on
where they stopped), and raise the protssl error the server raised (the class it names in the
call's trailers, else the one `protssl.errors.ERROR_TABLE` gives its status) with the server's
message. This module is the
only part of `protssl` that imports grpc; `import protssl` loads it on first use of `protssl.Client`.
Messages are translated by `protssl.wire`, as in the server.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from Bio.SeqRecord import SeqRecord

from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.auth import TOKEN_ENV
from protssl.embedding import Embedding, check_layer
from protssl.endpoint import DEFAULT_PORT, RECONNECT_S, client_target
from protssl.errors import (
    RESUME_ADVICE,
    DeadlineExceededError,
    FastaFormatError,
    InvalidInputError,
    OverloadedError,
    ProtsslError,
    UnavailableError,
    error_for_status,
    refuse_non_finite,
)
from protssl.fasta import (
    FastaPolicy,
    ProteinRecord,
    SequenceItem,
    checked_id,
    checked_item,
    read_fasta,
    refuse_misshapen,
    validate_fasta,
)
from protssl.progress import progress_bar
from protssl.wire import (
    ACCEPTED_KEY,
    CLASSIFIER_METHOD,
    ERROR_KIND_KEY,
    ON_INVALID,
    POOLING,
    VECTOR_DTYPE,
    ClassifierInfo,
    ClientPrediction,
    EmbeddingDecoder,
    ModelInfo,
    TokenInfo,
    classifier_info_from_proto,
    model_info_from_proto,
    prediction_from_proto,
    token_info_from_proto,
)

__all__ = [
    "ClassifierInfo",
    "Client",
    "ClientEmbeddings",
    "ClientPrediction",
    "ModelInfo",
    "TokenInfo",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

if TYPE_CHECKING:
    from tqdm import tqdm

    from protssl.embed_file import JobSummary
    from protssl.embedding import CacheStats
    from protssl.fasta import FastaCheck


@dataclass(frozen=True)
class ClientEmbeddings:
    """Embeddings in request order (`result[i]`, `for e in result`: id, vector, provenance);
    `vectors` stacks pooled vectors into one (N, dim) array."""

    embeddings: tuple[Embedding, ...]
    cached: tuple[bool, ...]

    @classmethod
    def of(cls, pairs: Sequence[tuple[Embedding, bool]]) -> ClientEmbeddings:
        """From (embedding, cached) pairs, as `EmbeddingDecoder` gives them."""
        return cls(tuple(e for e, _ in pairs), tuple(c for _, c in pairs))

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.embeddings]

    @property
    def vectors(self) -> np.ndarray:
        """(N, dim) float32; per-residue results differ in length, so use `.embeddings` for those."""
        if any(e.vector.ndim != 1 for e in self.embeddings):
            raise InvalidInputError(
                "per-residue vectors are one (length, dim) array per sequence, not rows of one "
                "(N, dim) array: use .embeddings (each one's .vector)"
            )
        if not self.embeddings:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([e.vector for e in self.embeddings])

    def __len__(self) -> int:
        return len(self.embeddings)

    def __iter__(self) -> Iterator[Embedding]:
        return iter(self.embeddings)

    def __getitem__(self, index: int) -> Embedding:
        return self.embeddings[index]

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write these vectors to `path` as `protssl embed -o` does: `.h5`, `.npz`, or a
        `.tsv`/`.csv` table (rows in request order; pooled vectors only)."""
        from protssl.output import write_vectors

        write_vectors(path, self.embeddings, overwrite=overwrite)


class _IdleWatch:
    """Cancels a stream once nothing has moved either way for `timeout` seconds.

    A stream's `timeout` is how long it may stand still, not how long it may take: a file that
    takes an hour streams for an hour, while a server that stops answering (or a connection
    that dies without a reset) ends the call after `timeout` seconds of silence. None: no limit.
    """

    def __init__(self, timeout: float | None) -> None:
        self.fired = False
        self._timeout = timeout
        self._last = time.monotonic()
        self._done = threading.Event()

    def start(self, call: Any) -> None:
        """Watch `call` (a grpcio stream: cancellable) from now on."""
        if self._timeout is not None:
            threading.Thread(
                target=self._watch, args=(call, self._timeout), name="protssl-watch", daemon=True
            ).start()

    def moved(self) -> None:
        """A message went out or came in."""
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self, call: Any, timeout: float) -> None:
        while not self._done.wait(min(1.0, timeout / 4)):
            if time.monotonic() - self._last > timeout:
                self.fired = True
                call.cancel()
                return


class _Outage:
    """How long a long job keeps trying after its server went away, restarted or stopped answering:
    up to `seconds` from the failure (any result that comes back starts the count again), with the
    client's exponential backoff between tries; the start and the end of an outage are logged."""

    def __init__(self, target: str, seconds: float, backoff: float, max_backoff: float) -> None:
        self.target = target
        self.seconds = seconds
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.since: float | None = None
        self.delay = backoff

    def wait(self, exc: ProtsslError, kept: str) -> bool:
        """After a failure (`kept` says what the job has so far): sleep the backoff and True while
        the `seconds` last, else False."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            if self.seconds:
                log.warning(
                    "no results from %s (%s); %s: trying again for up to %s",
                    self.target,
                    exc,
                    kept,
                    _duration(self.seconds),
                )
        if now + self.delay - self.since > self.seconds:
            return False
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_backoff)
        return True

    @property
    def ongoing(self) -> bool:
        """The server has been lost and has not answered since."""
        return self.since is not None

    def over(self) -> None:
        """A result came back: the server is there (again)."""
        if self.since is not None:
            log.warning("%s answers again: going on", self.target)
            self.since, self.delay = None, self.backoff

    def tried(self) -> str:
        """What a job that gave up adds to its error: how long it tried."""
        return f" (tried again for {_duration(self.seconds)})" if self.seconds else ""


_CLI_FLAG = re.compile(r"--(resume|overwrite)\b")
"""The output checks' flags, which an SDK caller passes as `resume=True` and `overwrite=True`."""


def _duration(seconds: float) -> str:
    """`600` → '10 min', `45` → '45 s': a wait as a person reads it."""
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _in_order(
    results: Iterable[tuple[Embedding, bool]],
    order: Iterable[str],
    embeddings: dict[str, tuple[Embedding, bool]] | None = None,
) -> ClientEmbeddings:
    """A stream's results, gathered into `embeddings` (kept by id as they come), in `order`: the
    ids as sent or read, read once the results are all in; ids without a result are left out."""
    embeddings = {} if embeddings is None else embeddings
    for embedding, cached in results:
        embeddings[embedding.id] = (embedding, cached)
    return ClientEmbeddings.of([embeddings[i] for i in order if i in embeddings])


def _messages(
    fields: Iterator[dict[str, str]], limits: pb.RequestLimits, chunk: int
) -> Iterator[list[dict[str, str]]]:
    """`fields` in lists of up to `chunk` sequences, within what the server takes in one message
    (`limits`, 0: not said): a server started with a lower --max-sequences or --max-residues
    refused the SDK's messages, and `protssl embed --server` had no way to send smaller ones. A
    sequence over the residue limit on its own goes alone (the server names it)."""
    count = min(chunk, limits.max_sequences or chunk)
    budget = limits.max_residues or None
    batch: list[dict[str, str]] = []
    residues = 0
    try:
        for item in fields:
            if batch and budget is not None and residues + len(item["sequence"]) > budget:
                yield batch
                batch, residues = [], 0
            batch.append(item)
            residues += len(item["sequence"])
            if len(batch) >= count:
                yield batch
                batch, residues = [], 0
    except Exception:  # what was read before a bad record still goes, then its error
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _cut_off(exc: grpc.RpcError) -> bool:
    """Whether a call failed UNAVAILABLE after it reached a server (a shutdown's 'Cancelling all
    calls', a connection reset midway), not for want of one to connect to."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
        return False
    details = (exc.details() or "").lower()  # type: ignore[attr-defined]
    return "connect" not in details and "dns resolution" not in details


def _wire_version(version: int | None) -> int:
    """A classifier version as the wire takes it, where 0 is the latest: None is the latest, a
    version is >= 1 (0 or -1 named the latest without a word, where the CLI refuses them)."""
    if version is None:
        return 0
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(
            f"version must be a whole number >= 1 (None: the latest), not {version!r}"
        )
    return version


def _rereadable(path: str | Path, reconnect: float) -> float:
    """How long a call over `path` may wait for a lost server: stdin cannot be read again."""
    return reconnect if str(path) != "-" else 0.0


class _Resendable:
    """An input read once, lazily, whose items can go to a second stream: those sent and not yet
    answered are held and sent again first. An item without an id is given the server's default
    (`seqN`, N its place in the whole input), so a second stream names it as the first did."""

    def __init__(self, fields: Iterator[dict[str, str]]) -> None:
        self._fields = fields
        self._lock = threading.Lock()  # one reader of the input: a lost stream's own may be in it
        self._stream = 0
        self._pending: dict[str, dict[str, str]] = {}
        self.order: list[str] = []
        """The ids read, in input order."""

    @property
    def answered(self) -> int:
        """How many items read have a result."""
        return len(self.order) - len(self._pending)

    def unanswered(self, again: bool) -> Iterator[dict[str, str]]:
        """What the next stream sends: again, the items sent and not answered, then the rest of the
        input; a stream that a newer one replaced reads no more of it."""
        with self._lock:
            self._stream += 1
            mine = self._stream
            resent = list(self._pending.values()) if again else []
        yield from resent
        while True:
            with self._lock:
                if self._stream != mine:
                    return
                item = next(self._fields, None)
                if item is None:
                    return
                item["id"] = item["id"] or f"seq{len(self.order)}"
                self.order.append(item["id"])
                self._pending[item["id"]] = item
            yield item

    def answering(
        self, results: Iterable[tuple[Embedding, bool]]
    ) -> Iterator[tuple[Embedding, bool]]:
        """`results`, each one's item no longer held."""
        for embedding, cached in results:
            with self._lock:
                self._pending.pop(embedding.id, None)
            yield embedding, cached


def _residue_bar(desc: str, total: int | None, progress: bool) -> tqdm[Any]:
    """A stream's progress bar, in residues."""
    return progress_bar(desc=desc, total=total, unit="res", unit_scale=True, disable=not progress)


def _file_bar(path: str | Path, checked: FastaCheck | None, progress: bool) -> tqdm[Any]:
    """A FASTA file's bar: its residues, known from the whole-file check, are the total."""
    total = None if checked is None else checked.residues
    return _residue_bar(f"embed {Path(path).name}", total, progress)


def _tls_hint(details: str, tls: bool, client_certificate: bool) -> str:
    """What a TLS mismatch between client and server looks like from grpcio, said plainly."""
    if tls and "Socket closed" in details:  # the server ended the handshake: mutual TLS?
        if client_certificate:
            return (
                " (a TLS server that does not trust this client's certificate closes the "
                "connection so: use one signed by the CA the server names in --tls-client-ca)"
            )
        return (
            " (a TLS server that asks for a client certificate closes the connection so: give "
            "certificate_chain and private_key, signed by the CA it trusts)"
        )
    if tls and "WRONG_VERSION_NUMBER" in details:
        return " (the server answers without TLS: connect with tls=False)"
    if tls and "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            " (the server's certificate is not signed by a CA this client trusts: give "
            "root_certificates, the CA that signed it)"
        )
    if not tls and ("Socket closed" in details or "before receiving SETTINGS frame" in details):
        # a TLS server closes a plaintext connection, or waits for a handshake that never comes
        return " (if the server speaks TLS, connect with tls=True or root_certificates)"
    return ""


def _examples(
    items: Iterable[ProteinRecord | SeqRecord | tuple[str, str | Sequence[str]]],
) -> list[pb.LabelledSequence]:
    """Labelled records (protssl's, or Biopython's with `label=` in the description), or
    (sequence, label or labels) pairs, as protobuf examples; anything else (one string, a mapping,
    a bare sequence) is refused naming the example."""
    if isinstance(items, str | bytes | Mapping):
        what = "a mapping" if isinstance(items, Mapping) else "one string"
        raise InvalidInputError(
            f"examples are records or (sequence, label) pairs, not {what} (for a mapping of "
            "sequences to labels: list(mapping.items()))"
        )
    out = []
    for index, item in enumerate(items):
        where = f"example #{index + 1}"
        record = checked_item(index, item, where) if isinstance(item, SeqRecord) else item
        if isinstance(record, ProteinRecord):
            out.append(
                pb.LabelledSequence(id=record.id, sequence=record.sequence, labels=record.labels)
            )
            continue
        if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 2:
            raise InvalidInputError(
                f"{where}: expected a ProteinRecord or a (sequence, label or labels) "
                f"pair, got {type(item).__name__} {str(item)[:40]!r}"
            )
        sequence, given = item
        labels = [given] if isinstance(given, str) else list(given)
        out.append(pb.LabelledSequence(id=f"seq{index}", sequence=sequence, labels=labels))
    return out


def _sequences(
    items: Iterable[SequenceItem] | Mapping[str, str], ids: Sequence[str] | None
) -> list[dict[str, str]]:
    """`pb.Sequence` fields per item (dicts: a third of the cost of building messages one by one)."""
    return list(_sequence_fields(items, ids))


def _sequence_fields(
    items: Iterable[SequenceItem] | Mapping[str, str], ids: Sequence[str] | None
) -> Iterator[dict[str, str]]:
    """`_sequences`, item by item: `items` is read lazily (a stream may be longer than memory);
    arguments of the wrong shape are refused at once (`refuse_misshapen`), an item or id of another
    type as it is read, naming it."""
    refuse_misshapen(items, ids)
    return _fields_of(items, ids)


def _fields_of(
    items: Iterable[SequenceItem] | Mapping[str, str], ids: Sequence[str] | None
) -> Iterator[dict[str, str]]:
    keyed = isinstance(items, Mapping)
    pairs = items.items() if isinstance(items, Mapping) else enumerate(items)
    count = 0
    for index, (key, raw) in enumerate(pairs):
        if ids is not None and index >= len(ids):
            raise InvalidInputError(f"{len(ids)} ids given for more than {len(ids)} sequences")
        given = checked_id(index, ids[index] if ids is not None else key if keyed else "")
        item = checked_item(index, raw)
        if isinstance(item, ProteinRecord):
            yield {"id": given or item.id, "sequence": item.sequence}
        else:
            yield {"id": given, "sequence": item}
        count += 1
    if ids is not None and len(ids) != count:
        raise InvalidInputError(f"{len(ids)} ids given for {count} sequences")


def _pem(value: bytes | str | Path | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{what}: cannot read {value} ({exc.strerror})") from None


class Client:
    """A connection to a protssl server; use as a context manager or call `close()`.

    `target` is `host:port`, or a host alone for the port `protssl serve` binds by default.

    `token` (else $PROTSSL_TOKEN) is sent as `authorization: Bearer <token>` on every call. TLS is
    used when `tls` is true or any certificate is given: `root_certificates` (PEM bytes or a path;
    None = the system's roots) verifies the server, `certificate_chain` and `private_key` are the
    client's own for mutual TLS.

    `reconnect`: seconds `embed_file`, `embed_fasta`, `embed_stream` and `classify` keep trying
    when the server goes away, restarts, is overloaded or stops answering midway (a result that
    comes back starts the count again); each try sends only what has no result yet. 0: raise at
    once (`embed_file` keeps what came back).
    """

    def __init__(
        self,
        target: str = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        token: str | None = None,
        tls: bool | None = None,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        timeout: float | None = 300.0,
        retries: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_message_mb: int = 64,
        reconnect: float = RECONNECT_S,
    ) -> None:
        # NaN passed the checks below (reconnect=nan never waited, timeout=nan cancelled at once)
        refuse_non_finite(
            {
                "timeout": timeout,
                "backoff": backoff,
                "max_backoff": max_backoff,
                "reconnect": reconnect,
            }
        )
        if retries < 0 or backoff <= 0:
            raise InvalidInputError("retries must be >= 0 and backoff > 0")
        if reconnect < 0:
            raise InvalidInputError(f"reconnect must be >= 0 seconds, got {reconnect:g}")
        if (certificate_chain is None) != (private_key is None):
            raise InvalidInputError("certificate_chain and private_key go together (mutual TLS)")
        self.target = target = client_target(target)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.reconnect = reconnect
        self._reached = False  # a call has been answered: a later UNAVAILABLE is a server lost
        self._server_limits: pb.RequestLimits | None = None
        """What the server takes in one message (`_limits`): asked once, again once it was lost."""
        size = max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.initial_reconnect_backoff_ms", int(backoff * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(backoff * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(max_backoff * 1000)),
            # a connection of its own (grpcio shares one per target by default), so clients
            # spread over the processes of a multi-process server (`--processes`)
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if tls is None:
            tls = any(v is not None for v in (root_certificates, certificate_chain, private_key))
        self.tls = tls
        self._client_certificate = certificate_chain is not None
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates, "root_certificates"),
                private_key=_pem(private_key, "private_key"),
                certificate_chain=_pem(certificate_chain, "certificate_chain"),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        # metadata on each call, not a channel interceptor: grpcio's Python interceptor machinery
        # cost ~30-40 us of client CPU per call (a tenth of a cached hit's)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._embeddings = pb_grpc.EmbeddingServiceStub(self._channel)
        self._classifiers = pb_grpc.ClassifierServiceStub(self._channel)
        self._tokens = pb_grpc.TokenServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        """One unary call with retries on UNAVAILABLE (exponential backoff), errors made typed."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.backoff
        lost = False  # an attempt was cut off by the server going away, not refused a connection
        for attempt in range(self.retries + 1):
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                response = method(request, timeout=remaining, metadata=self._metadata)
                self._reached = True
                return response
            except grpc.RpcError as exc:
                lost = lost or _cut_off(exc)
                error = self._failed(exc, timeout, lost=lost)  # notes a server that took the call
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries  # type: ignore[attr-defined]
                if retry and (deadline is None or time.monotonic() + delay < deadline):
                    log.info("%s unavailable; retry %d in %.2f s", self.target, attempt + 1, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_backoff)
                    continue
                raise error from None
        raise AssertionError("unreachable")

    def _failed(
        self, exc: grpc.RpcError, timeout: float | None = None, *, lost: bool = False
    ) -> ProtsslError:
        """The protssl error for a failed call: the class the server named, else its status's. A
        call a protssl server took (it named its error, or it had accepted the call's work, a
        stream or a classify, before the call was lost) counts as reaching it, as a success does:
        a later outage is a server lost, and its error says the server went away, as does one
        whose earlier try was cut off midway (`lost`: a server stopped during it, whose retries
        then found nobody); one that never reached a server says which address it tried; one
        whose `timeout` ran out says so; one refused for want of a token, when this client has
        none, says how to give it one."""
        code = exc.code()  # type: ignore[attr-defined]
        kind = dict(exc.trailing_metadata() or ()).get(ERROR_KIND_KEY)  # type: ignore[attr-defined]
        taken = kind is not None or ACCEPTED_KEY in dict(exc.initial_metadata() or ())  # type: ignore[attr-defined]
        self._reached = self._reached or taken
        details = exc.details() or code.name  # type: ignore[attr-defined]
        if kind is None and code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
            details = f"no answer from {self.target} within the call's timeout of {timeout:g} s"
        elif (taken or lost) and kind is None and code == grpc.StatusCode.UNAVAILABLE:
            details = f"{self.target} went away during the call (stopped or killed?): {details}"
        elif kind is None and code == grpc.StatusCode.UNAVAILABLE:
            hint = _tls_hint(details, self.tls, self._client_certificate)
            details = f"cannot reach a protssl server at {self.target}{hint}: {details}"
        if code == grpc.StatusCode.UNAUTHENTICATED and self._metadata is None:
            details = (
                f"{details} (this client has none: give Client({self.target!r}, token=...) or set "
                f"${TOKEN_ENV}; `protssl token create --role read` on the server's store makes one)"
            )
        return error_for_status(code.name, details, kind=kind if isinstance(kind, str) else None)

    # --- embeddings ---------------------------------------------------------------------------

    def embed(
        self,
        sequences: Iterable[SequenceItem] | Mapping[str, str],
        *,
        ids: Sequence[str] | None = None,
        model: str = "",
        pooling: str = "mean",
        layer: int | None = None,
        dtype: str = "float32",
        on_invalid: str = "fail",
        timeout: float | None = None,
    ) -> ClientEmbeddings:
        """Embed sequences (strings, records, or an id → sequence mapping) in one request.

        `on_invalid` says what the server does with a non-residue character: fail (InvalidInputError
        naming the record and position), skip the record (left out of the results) or replace it by X.
        """
        request = pb.EmbedRequest(
            sequences=_sequences(sequences, ids),
            options=self._options(model, pooling, layer, dtype, on_invalid),
        )
        response = self._call(self._embeddings.Embed, request, timeout)
        decode = EmbeddingDecoder()
        pairs = [decode(m) for m in response.embeddings]
        return ClientEmbeddings.of(pairs)

    def embed_stream(
        self,
        sequences: Iterable[SequenceItem] | Mapping[str, str],
        *,
        ids: Sequence[str] | None = None,
        model: str = "",
        pooling: str = "mean",
        layer: int | None = None,
        dtype: str = "float32",
        on_invalid: str = "fail",
        chunk: int = 64,
        progress: bool = False,
        timeout: float | None = None,
    ) -> ClientEmbeddings:
        """Embed any number of sequences (as `embed` takes them) over one EmbedStream call, in input
        order: read lazily and sent `chunk` at a time, where one `embed` request is refused past the
        server's max_sequences. Records `on_invalid="skip"` drops are left out of the results; a
        record the server refuses raises once the results of the messages before it are back (a
        server with a store caches those, so a retry gets them from the cache). A server lost
        midway is waited for, as `embed_fasta` waits, and sent again what it had not answered
        (held until answered), then the rest of the input."""
        options = self._options(model, pooling, layer, dtype, on_invalid)
        items = _Resendable(_sequence_fields(sequences, ids))
        with _residue_bar("embed", None, progress) as bar:
            results = self._lasting_results(
                items.unanswered,
                options,
                chunk,
                bar,
                timeout,
                reconnect=self.reconnect,
                on_lost=lambda: f"{items.answered} result(s) so far, kept in memory",
            )
            return _in_order(items.answering(results), items.order)

    def embed_fasta(
        self,
        path: str | Path,
        *,
        model: str = "",
        pooling: str = "mean",
        layer: int | None = None,
        dtype: str = "float32",
        chunk: int = 64,
        progress: bool = True,
        policy: FastaPolicy | None = None,
        timeout: float | None = None,
    ) -> ClientEmbeddings:
        """Embed a whole FASTA file over one EmbedStream call, with a progress bar; input order kept.
        The file is checked whole first: records that break `policy` raise one FastaFormatError
        naming them (file, record, position) before anything is sent. From stdin (`-`), read as it
        comes, the first one raises once the records before it are back (the server caches those).
        A server lost midway is waited for, as `embed_file` waits, and sent what has no result."""
        checked = validate_fasta(path, policy=policy, progress=progress)
        options = self._options(model, pooling, layer, dtype)
        order: dict[str, None] = {}  # ids in the file's order, as first read
        embeddings: dict[str, tuple[Embedding, bool]] = {}

        def unanswered(again: bool) -> Iterator[ProteinRecord]:
            for record in read_fasta(path, policy=policy):
                order.setdefault(record.id)
                if record.id not in embeddings:
                    yield record

        with _file_bar(path, checked, progress) as bar:
            results = self._lasting_results(
                lambda again: _sequence_fields(unanswered(again), None),
                options,
                chunk,
                bar,
                timeout,
                reconnect=_rereadable(path, self.reconnect),
                on_lost=lambda: f"{len(embeddings)} result(s) so far, kept in memory",
            )
            return _in_order(results, order, embeddings)

    def embed_file(
        self,
        path: str | Path,
        output: str | Path,
        *,
        model: str = "",
        pooling: str = "mean",
        layer: int | None = None,
        dtype: str = "float32",
        chunk: int = 64,
        progress: bool = True,
        policy: FastaPolicy | None = None,
        resume: bool = False,
        overwrite: bool = False,
        timeout: float | None = None,
        summary: JobSummary | None = None,
    ) -> JobSummary:
        """Embed a FASTA file over one EmbedStream call into OUTPUT, as `protssl embed -o` writes
        it (`.h5`, `.npz`, or a `.tsv`/`.csv` table whose rows follow the file).

        Each result is written as it arrives, so memory stays flat however big the file. When the
        server goes away midway (a restart, a dropped connection) the call keeps trying for the
        client's `reconnect` seconds and then sends only what OUTPUT lacks (a file it can read
        again; stdin is not). A run that stops (it gave up, Ctrl-C, a kill) keeps what came back:
        `resume=True` sends only the records OUTPUT lacks (`overwrite=True` replaces OUTPUT; not
        both). The file is checked whole first, as `embed_fasta` does. Pass `summary` to keep the
        counts when an error is raised. An input that leaves OUTPUT no record (none in it, or the
        policy skipped them all) raises InvalidInputError: nothing is written.
        """
        from protssl.embed_file import JobSummary, pending_records, refuse_no_records
        from protssl.fasta import ReadStats
        from protssl.output import (
            check_output,
            check_pooling,
            check_resume_or_overwrite,
            check_writable,
            open_writer,
        )

        try:
            check_resume_or_overwrite(resume=resume, overwrite=overwrite)
            check_output(output, resume=resume, overwrite=overwrite)
        except InvalidInputError as exc:  # checks the CLI shares: they name its flags
            raise InvalidInputError(_CLI_FLAG.sub(r"\1=True", str(exc))) from None
        check_writable(output)
        check_pooling(output, pooling)
        checked = validate_fasta(path, policy=policy, progress=progress)
        options = self._options(model, pooling, layer, dtype)
        summary = summary if summary is not None else JobSummary()
        summary.output = str(output)
        if checked is not None:
            refuse_no_records(path, checked.records, checked.skipped, summary)
        reads: list[ReadStats] = [ReadStats()]  # one per read of the file
        start = time.perf_counter()
        try:
            with (
                open_writer(output, resume=resume, overwrite=overwrite) as writer,
                _file_bar(path, checked, progress) as bar,
            ):
                done = writer.existing_ids() if resume else set()
                positions: dict[str, int] = {}  # records sent whose results have not come back

                def unwritten(again: bool) -> Iterator[ProteinRecord]:
                    # again, after a lost connection: what OUTPUT has, less what is yet to count
                    # as resumed, is passed over
                    written = writer.existing_ids() - done if again else set()
                    reads.append(ReadStats())
                    read = read_fasta(path, policy=policy, stats=reads[-1])
                    return pending_records(read, done, summary, bar, positions, written=written)

                def lost() -> str:
                    writer.flush()
                    return f"{summary.records} result(s) written to {str(output)!r} so far"

                results = self._lasting_results(
                    lambda again: _sequence_fields(unwritten(again), None),
                    options,
                    chunk,
                    bar,
                    timeout,
                    reconnect=_rereadable(path, self.reconnect),
                    on_lost=lost,
                )
                try:
                    for embedding, cached in results:
                        writer.write(embedding, position=positions.pop(embedding.id, None))
                        summary.cached += cached
                        summary.computed += not cached
                        if summary.written(embedding):
                            writer.flush()
                except (UnavailableError, DeadlineExceededError, OverloadedError) as exc:
                    if not summary.records:
                        raise
                    raise type(exc)(
                        f"{exc}; the {summary.records} result(s) that came back before it are kept "
                        f"in {str(output)!r}: {RESUME_ADVICE}"
                    ) from None
        finally:
            stats = max(reads, key=lambda r: r.records + r.skipped)  # the read that got furthest
            summary.skipped, summary.skipped_ids = stats.skipped, list(stats.skipped_ids)
            summary.seconds = time.perf_counter() - start
        refuse_no_records(path, summary.done, stats.skipped_by(), summary)  # stdin, read as it came
        return summary

    def _lasting_results(
        self,
        fields: Callable[[bool], Iterator[dict[str, str]]],
        options: pb.EmbedOptions,
        chunk: int,
        bar: tqdm[Any],
        timeout: float | None,
        *,
        reconnect: float,
        on_lost: Callable[[], str],
    ) -> Iterator[tuple[Embedding, bool]]:
        """Results over EmbedStream, (embedding, cached) as they come, through a server's
        restarts: when it is lost midway (`on_lost()` makes what came back safe and says what that
        is), `fields(True)` (what is still to send) goes to it once it answers, for up to
        `reconnect` seconds. A server never reached fails at once."""
        outage = _Outage(self.target, reconnect, self.backoff, self.max_backoff)
        again = False
        while True:
            try:
                for result in self._results(fields(again), options, chunk, bar, timeout):
                    outage.over()
                    yield result
                return
            except (UnavailableError, DeadlineExceededError, OverloadedError) as exc:
                if self._reached and outage.wait(exc, on_lost()):  # never reached: fail at once
                    again = True
                    self._server_limits = None  # the server back may be another, other limits
                    continue
                if not (self._reached and outage.seconds):
                    raise
                raise type(exc)(f"{exc}{outage.tried()}") from None

    def _results(
        self,
        fields: Iterator[dict[str, str]],
        options: pb.EmbedOptions,
        chunk: int,
        bar: tqdm[Any],
        timeout: float | None,
    ) -> Iterator[tuple[Embedding, bool]]:
        """One EmbedStream call of `fields` in messages of `chunk`: (embedding, cached) as they
        come. `timeout` (else the client's) is how long the stream may stand still (`_IdleWatch`),
        not how long it may take. An error raised while reading the input (grpcio would swallow it
        in its request thread and cancel the call) ends the stream, the results of what was sent
        are drained, and it is raised here."""
        if chunk < 1:
            raise InvalidInputError("chunk must be at least 1")
        failed: list[Exception] = []
        timeout = self.timeout if timeout is None else timeout
        watch = _IdleWatch(timeout)
        decode = EmbeddingDecoder()

        limits = self._limits(timeout)

        def requests() -> Iterator[pb.EmbedStreamRequest]:
            first = True
            try:
                for batch in _messages(fields, limits, chunk):
                    yield pb.EmbedStreamRequest(sequences=batch, options=options if first else None)
                    watch.moved()
                    first = False
            except Exception as exc:  # raised in the caller's thread, below
                failed.append(exc)
            if first:
                yield pb.EmbedStreamRequest(options=options)

        stream = self._embeddings.EmbedStream(requests(), metadata=self._metadata)
        watch.start(stream)
        try:
            for message in stream:
                watch.moved()
                self._reached = True
                if message.HasField("embedding"):
                    result = decode(message.embedding)
                    bar.update(message.embedding.length)
                    yield result
        except grpc.RpcError as exc:
            if failed:  # the input's own error says more than the call's
                raise failed[0] from None
            if watch.fired:
                raise DeadlineExceededError(
                    f"no result from {self.target} for {timeout:g} s (the client's timeout, "
                    "counted from the last message each way): the call was cancelled"
                ) from None
            raise self._failed(exc) from None
        finally:
            watch.stop()
            stream.cancel()  # a no-op once the call has ended; else (the caller stopped) ends it
        if failed:
            raise failed[0]

    @staticmethod
    def _options(
        model: str, pooling: str, layer: int | None, dtype: str, on_invalid: str = "fail"
    ) -> pb.EmbedOptions:
        check_layer(layer)
        return pb.EmbedOptions(
            model=model,
            pooling=POOLING.value(pooling),
            layer=layer,
            dtype=VECTOR_DTYPE.value(dtype),
            on_invalid=ON_INVALID.value(on_invalid),
        )

    def _limits(self, timeout: float | None) -> pb.RequestLimits:
        """What the server takes in one request or message: asked by the first call that sends
        many and kept, asked again after a stream found the server lost (the one back may have
        other limits), not by every call (a one-query `classify` paid a round trip more). Asked
        without retries, and not counted as the server reached: when no answer comes, none are
        said, and the call itself meets and names whatever is wrong (no server, TLS, a token)."""
        if self._server_limits is None:
            try:
                self._server_limits = self._embeddings.ListModels(
                    pb.ListModelsRequest(),
                    timeout=self.timeout if timeout is None else timeout,
                    metadata=self._metadata,
                ).limits
            except grpc.RpcError:
                return pb.RequestLimits()
        return self._server_limits

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server serves (the default one flagged)."""
        response = self._call(self._embeddings.ListModels, pb.ListModelsRequest(), timeout)
        return [model_info_from_proto(m) for m in response.models]

    # --- few-shot classifiers -----------------------------------------------------------------

    def create_classifier(
        self,
        name: str,
        examples: Iterable[ProteinRecord | SeqRecord | tuple[str, str | Sequence[str]]],
        *,
        method: str = "auto",
        model: str = "",
        new_version: bool = False,
        pooling: str | None = None,
        timeout: float | None = None,
    ) -> ClassifierInfo:
        """Fit a classifier on labelled records (or (sequence, label) pairs) and store it as `name`;
        Biopython `SeqRecord`s carry their labels as `label=A;B` in the description.

        A name that exists is AlreadyExistsError, unless `new_version`: then it gets the next
        version. Methods: auto (the default: hybrid, the most accurate, ~tens of ms a query),
        prototype, knn, linear, contrastive, hybrid. `pooling` (mean, bos or
        segments) is what its vectors are pooled by, when fitting and when classifying; None is
        the pooling the model's card recommends (`ListModels`), else mean. The server embeds the
        examples through its cache and stops the fit once `timeout` (the client's unless given)
        runs out; the vectors it computed by then stay cached, so a retry with a longer timeout
        embeds only the rest.
        """
        request = pb.CreateClassifierRequest(
            name=name,
            method=CLASSIFIER_METHOD.value(method),
            model=model,
            examples=_examples(examples),
            new_version=new_version,
            pooling=POOLING.value(pooling) if pooling else None,
        )
        return classifier_info_from_proto(
            self._call(self._classifiers.CreateClassifier, request, timeout)
        )

    def add_examples(
        self,
        name: str,
        examples: Iterable[ProteinRecord | SeqRecord | tuple[str, str | Sequence[str]]],
        *,
        timeout: float | None = None,
    ) -> ClassifierInfo:
        """Refit `name` with these examples added (same id replaces); returns the new version.
        The old examples' vectors come from the server's cache; a timeout as `create_classifier`."""
        request = pb.AddExamplesRequest(name=name, examples=_examples(examples))
        return classifier_info_from_proto(
            self._call(self._classifiers.AddExamples, request, timeout)
        )

    def get_classifier(
        self, name: str, *, version: int | None = None, timeout: float | None = None
    ) -> ClassifierInfo:
        request = pb.GetClassifierRequest(name=name, version=_wire_version(version))
        return classifier_info_from_proto(
            self._call(self._classifiers.GetClassifier, request, timeout)
        )

    def list_classifiers(self, *, timeout: float | None = None) -> list[ClassifierInfo]:
        """The latest version of every classifier on the server."""
        response = self._call(
            self._classifiers.ListClassifiers, pb.ListClassifiersRequest(), timeout
        )
        return [classifier_info_from_proto(c) for c in response.classifiers]

    def delete_classifier(self, name: str, *, timeout: float | None = None) -> None:
        """Delete every version of `name`."""
        request = pb.DeleteClassifierRequest(name=name)
        self._call(self._classifiers.DeleteClassifier, request, timeout)

    def classify(
        self,
        name: str,
        sequences: Iterable[SequenceItem] | Mapping[str, str],
        *,
        ids: Sequence[str] | None = None,
        version: int | None = None,
        top_k: int = 3,
        chunk: int = 256,
        timeout: float | None = None,
        stats: CacheStats | None = None,
    ) -> list[ClientPrediction]:
        """Labels (or abstentions) for sequences, in input order, with the top-k probabilities.

        Any number of sequences (read lazily): `chunk` go in each request (the server refuses one past
        its max_sequences), and every request after the first names the version the first was
        answered by, so a version added meanwhile never answers part of the list. `timeout` is per
        request. A server lost midway (after this client reached it) is waited for, as
        `embed_file` waits (the client's `reconnect`), and asked again. `stats` adds up how many
        of the queries' vectors the server computed and how many came from its cache. Ids must
        differ across the whole input, whatever `chunk` is; errors number queries across it."""
        if chunk < 1:
            raise InvalidInputError("chunk must be at least 1")
        fields = _sequence_fields(sequences, ids)
        predictions: list[ClientPrediction] = []
        pinned, sent = _wire_version(version), 0
        seen: set[str] = set()
        outage = _Outage(self.target, self.reconnect, self.backoff, self.max_backoff)
        batches = _messages(fields, self._limits(timeout), chunk)
        while True:
            batch = next(batches, None)
            if batch is None and sent:
                return predictions
            batch = batch or []  # no queries at all: one request, which names the classifier
            for index, item in enumerate(batch, start=sent):
                item["id"] = item["id"] or f"seq{index}"  # the server numbers within one request
                if item["id"] in seen:
                    raise FastaFormatError(
                        "duplicate id (seen earlier in this call)",
                        source="request",
                        record_id=item["id"],
                        record_index=index,
                    )
                seen.add(item["id"])
            request = pb.ClassifyRequest(
                name=name, version=pinned, sequences=batch, top_k=top_k, offset=sent
            )
            while True:
                try:
                    response = self._call(self._classifiers.Classify, request, timeout)
                    break
                except (UnavailableError, OverloadedError) as exc:
                    if not self._reached:  # a server never reached fails at once
                        raise
                    if not outage.wait(exc, f"{sent} of the queries answered so far"):
                        raise type(exc)(f"{exc}{outage.tried()}") from None
            outage.over()
            if stats is not None:
                stats.computed += response.vectors_computed
                stats.cached += response.vectors_cached
            pinned = response.classifier.version
            predictions.extend(prediction_from_proto(p) for p in response.predictions)
            sent += len(batch)
            if not batch:
                return predictions

    # --- API tokens (an admin token's calls) --------------------------------------------------

    def create_token(
        self, role: str, *, name: str = "", timeout: float | None = None
    ) -> tuple[TokenInfo, str]:
        """A new API token of `role` (read, write, admin): its info and the token, shown only now."""
        request = pb.CreateTokenRequest(role=role, name=name)
        response = self._call(self._tokens.CreateToken, request, timeout)
        return token_info_from_proto(response.info), response.token

    def list_tokens(self, *, timeout: float | None = None) -> list[TokenInfo]:
        """Every API token, revoked ones too, oldest first (never the tokens themselves)."""
        response = self._call(self._tokens.ListTokens, pb.ListTokensRequest(), timeout)
        return [token_info_from_proto(t) for t in response.tokens]

    def revoke_token(self, token_id: str, *, timeout: float | None = None) -> TokenInfo:
        """Revoke the token with this id; the server stops accepting it within its token cache time."""
        request = pb.RevokeTokenRequest(id=token_id)
        return token_info_from_proto(self._call(self._tokens.RevokeToken, request, timeout))
