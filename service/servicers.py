"""gRPC servicers: protobuf ↔ protssl domain types, nothing else.

Errors are raised as protssl errors; `service.interceptors.CallInterceptor` maps them to statuses.
"""

from __future__ import annotations

import collections
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, TimeoutError, wait
from typing import Any, TypeVar

import grpc
import numpy as np

from protssl import fewshot
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.embedding import BatchOutcome
from protssl.errors import (
    AlreadyExistsError,
    ClassifierNotFoundError,
    DeadlineExceededError,
    FastaFormatError,
    MessageTooLargeError,
    ModelNotFoundError,
    OverloadedError,
    ProtsslError,
    StreamIdleError,
    UnavailableError,
)
from protssl.fasta import FastaPolicy, ProteinRecord, records_from_sequences, settable_advice
from protssl.pooling import pooled_width
from protssl.store import Store
from protssl.store.classifiers import check_example, check_name
from protssl.wire import (
    ACCEPTED_KEY,
    CLASSIFIER_METHOD,
    ON_INVALID,
    POOLING,
    VECTOR_DTYPE,
    classifier_info_to_proto,
    embedding_to_proto,
    model_info_to_proto,
    prediction_to_proto,
    token_info_to_proto,
)
from service.batcher import EmbeddingBatcher, Pending
from service.config import ServiceConfig
from service.limits import check_classifier, check_request, check_response_size

__all__ = ["ClassifierServicer", "EmbeddingServicer", "TokenServicer"]

T = TypeVar("T")

STREAM_IN_FLIGHT = 4
"""Stream chunks queued ahead of the one whose results are being sent back."""
_END = object()
"""What a `_StreamReader` hands over once the client half-closed."""


class _StreamReader:
    """A request stream read on its own thread, so results go back while the next message is awaited.

    Holds at most one message ahead (the client's flow control does the rest). What the stream
    raised (the client cancelled, an undecodable message) comes out of `get` in the handler.
    `wake` is set whenever something arrives; the handler also has it set when a chunk's results
    are done, so it sleeps until there is something to do instead of polling.
    """

    def __init__(self, requests: Iterable[Any]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self.wake = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(iter(requests),), name="protssl-stream-reader", daemon=True
        )
        self._thread.start()

    def _read(self, requests: Iterator[Any]) -> None:
        item: Any
        try:
            for item in requests:
                if not self._put(item):
                    return
            item = _END
        except BaseException as exc:  # handed to the handler thread, which raises it
            item = exc
        self._put(item)

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                self.wake.set()
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Any:
        """The next message or `_END`; queue.Empty after `timeout` s; raises what the stream raised."""
        item = self._queue.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._closed.set()


class _SeenIds:
    """The ids of one stream as 64-bit hashes, at most `limit` of them, to refuse a repeat.

    Bounded memory (about 100 bytes an id): past `limit`, ids are no longer remembered and a repeat
    is refused only within one message. A hash collision (odds ~n²/2⁶⁵) would refuse a unique id.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._hashes: set[int] = set()

    def seen(self, record_id: str) -> bool:
        """Whether `record_id` came before; remembers it while there is room."""
        digest = hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=8)
        key = int.from_bytes(digest.digest(), "little")
        if key in self._hashes:
            return True
        if len(self._hashes) < self.limit:
            self._hashes.add(key)
        return False


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline on the monotonic clock; None when the client set none (or one past a day)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 86_400:
        return None
    return time.monotonic() + remaining


def _wait(pending: Pending) -> list[BatchOutcome]:
    """The call's results, or DeadlineExceededError (its records are dropped if they have not run)."""
    try:
        return _result(pending.future, pending.deadline)
    finally:
        if not pending.future.done():
            pending.cancel()


def _result(future: Future[T], deadline: float | None) -> T:
    """A future's result by the call's deadline, else DeadlineExceededError."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return future.result(timeout=timeout)
    except (TimeoutError, CancelledError):
        raise DeadlineExceededError("the deadline passed before the work was done") from None


def _while_wanted(
    context: grpc.ServicerContext, deadline: float | None, doing: str
) -> Callable[[int], None]:
    """A progress callback that ends the call once its caller is gone or out of time, between the
    steps of long work (a fit, a hybrid classifier's searches) instead of working on for nobody."""

    def still_wanted(_: int) -> None:
        if not context.is_active() or (deadline is not None and time.monotonic() > deadline):
            raise DeadlineExceededError(f"the deadline passed while {doing}")

    return still_wanted


class _Face:
    """What both servicers share: the model check and request → records with the limits."""

    def __init__(self, model: LoadedModel, batcher: EmbeddingBatcher, config: ServiceConfig):
        self.model = model
        self.batcher = batcher
        self.config = config

    def _check_model(self, name: str) -> None:
        if name and name not in (self.model.name, self.model.sha256):
            raise ModelNotFoundError(
                f"model {name!r} is not served here; this server serves {self.model.name!r} "
                "(see ListModels)"
            )

    def _worker(self, deadline: float | None) -> fewshot.Runner:
        """Runs a fit's embedding steps on the model worker one by one, taking turns with other
        calls' batches (the fit's own work, a hybrid fit's alignments, stays on the call's thread).

        A step still waiting when `deadline` passes is dropped; one already running (a forward)
        is waited for, so that the caller never touches the fit's embedding while it runs."""

        def run(step: Callable[[], T]) -> T:
            future = self.batcher.run_task(step, deadline=deadline)
            try:
                return _result(future, deadline)
            except DeadlineExceededError:
                if not future.cancel():
                    wait([future])
                raise

        return run

    def _records(
        self,
        sequences: Sequence[Any],
        offset: int,
        seen: _SeenIds | None = None,
        on_invalid: int | None = None,
    ) -> list[ProteinRecord]:
        """The request's sequences as records: limits first, then the residue policy.

        An id is the wire's id verbatim (no header parsing); labels are checked as the store will.
        Records are numbered from `offset` (a stream's earlier messages, a chunk's earlier chunks);
        `seen`, a stream's ids so far. `on_invalid` is the request's policy field, where it has one:
        an error's advice names only that.
        """
        ids = [s.id or f"seq{offset + i}" for i, s in enumerate(sequences)]
        raw = [s.sequence for s in sequences]
        check_request(ids, raw, self.config, first=offset, streamed=seen is not None)
        items: Sequence[str | ProteinRecord] = raw
        if sequences and hasattr(sequences[0], "labels"):  # LabelledSequence: keep the labels
            labels = [tuple(s.labels) for s in sequences]
            for index, (record_id, example_labels) in enumerate(zip(ids, labels, strict=True)):
                check_example(record_id, example_labels, index)
            items = [ProteinRecord(i, r, x) for i, r, x in zip(ids, raw, labels, strict=True)]
        policy = FastaPolicy(on_invalid=ON_INVALID.name(on_invalid or 0))  # type: ignore[arg-type]
        source = "request" if seen is None else "request stream"
        try:
            records = records_from_sequences(
                items, ids=ids, policy=policy, source=source, first_index=offset
            )
        except FastaFormatError as error:
            settable = () if on_invalid is None else ("on_invalid",)
            raise settable_advice(error, settable) from None
        if seen is not None:
            for index, record in enumerate(records):
                if seen.seen(record.id):
                    raise FastaFormatError(
                        "duplicate id (seen earlier in this stream)",
                        source=source,
                        record_id=record.id,
                        record_index=offset + index,
                    )
        return records


class EmbeddingServicer(_Face, pb_grpc.EmbeddingServiceServicer):
    """Embed, EmbedStream and ListModels over one loaded model and its batcher."""

    def _submit(
        self,
        records: list[ProteinRecord],
        options: pb.EmbedOptions,
        context: grpc.ServicerContext,
        *,
        wait: bool,
    ) -> Pending:
        VECTOR_DTYPE.name(options.dtype)  # an unknown dtype fails before any work, not after it
        pending = self.batcher.submit(
            records,
            pooling=POOLING.name(options.pooling),
            layer=options.layer if options.HasField("layer") else None,
            deadline=_deadline(context),
            wait=wait,
        )
        context.add_callback(pending.cancel)
        return pending

    def __init__(self, model: LoadedModel, batcher: EmbeddingBatcher, config: ServiceConfig):
        super().__init__(model, batcher, config)
        self._stream_slots = threading.BoundedSemaphore(config.stream_slots)
        self._draining = threading.Event()
        self._readers: set[_StreamReader] = set()  # of the open streams, to wake them
        self._readers_lock = threading.Lock()

    def drain(self) -> None:
        """The server is stopping: each open stream reads no more messages, sends the results of
        the chunks it has in flight and ends UNAVAILABLE, so that its client, which knows what came
        back, sends the rest to the server that comes next instead of losing it to a cancel."""
        self._draining.set()
        with self._readers_lock:
            for reader in self._readers:
                reader.wake.set()

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self._check_model(request.options.model)
        records = self._records(request.sequences, 0, on_invalid=request.options.on_invalid)
        pooling = POOLING.name(request.options.pooling)
        dtype = VECTOR_DTYPE.name(request.options.dtype)
        check_response_size(
            [r.id for r in records],
            sum(len(r) for r in records) if pooling == "per-residue" else 0,
            pooled_width(pooling, self.model.encoder.config.embed_dim),
            np.dtype(dtype).itemsize,
            self.config,
        )
        results = _wait(self._submit(records, request.options, context, wait=False))
        return pb.EmbedResponse(
            embeddings=[
                embedding_to_proto(r.embedding, cached=r.cached, dtype=dtype) for r in results
            ]
        )

    def EmbedStream(
        self, request_iterator: Iterable[pb.EmbedStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.EmbedStreamResponse]:
        if not self._stream_slots.acquire(blocking=False):
            self.batcher.metrics.refused.labels(limit="max_streams").inc()
            raise OverloadedError(
                f"{self.config.stream_slots} EmbedStream calls are open, the most this server "
                "serves at once (max_streams): retry later"
            )
        context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        reader = _StreamReader(request_iterator)
        with self._readers_lock:
            self._readers.add(reader)
        try:
            yield from self._stream(reader, context)
        finally:
            with self._readers_lock:
                self._readers.discard(reader)
            reader.close()
            self._stream_slots.release()

    def _stream(
        self, reader: _StreamReader, context: grpc.ServicerContext
    ) -> Iterator[pb.EmbedStreamResponse]:
        """Results go back as soon as they are done, whether or not more messages arrive."""
        options: pb.EmbedOptions | None = None
        progress = pb.EmbedProgress()
        seen = _SeenIds(self.config.stream_id_memory)
        pending: collections.deque[Pending] = collections.deque()
        ended = handed_over = False
        refused: ProtsslError | None = None  # raised once the earlier messages' results are back
        offset = 0  # sequences received, skipped ones included: what default ids count
        idle = self.config.stream_idle_timeout_s
        active = time.monotonic()  # the last message or result: the idle clock starts there
        while True:
            reader.wake.clear()  # before looking, so that what arrives from here on wakes us
            while pending and pending[0].future.done() and options is not None:
                yield from self._drain(pending.popleft(), options, progress)
                active = time.monotonic()
            if self._draining.is_set() and not ended:
                ended = handed_over = True  # read no more; what is in flight goes back first
            if ended and not pending:
                if refused is not None:
                    raise refused
                if handed_over:
                    raise UnavailableError(
                        f"the server is shutting down (a restart?) after sending "
                        f"{progress.records_done} result(s) of this stream: send the rest again"
                    )
                return
            if (ended or len(pending) >= STREAM_IN_FLIGHT) and options is not None:
                yield from self._drain(pending.popleft(), options, progress)
                active = time.monotonic()
                continue
            try:
                message = reader.get(timeout=0.0)
            except queue.Empty:
                if not pending and time.monotonic() - active >= idle:
                    raise StreamIdleError(
                        f"no stream message for {idle:g} s with nothing in flight "
                        "(stream_idle_timeout_s): the stream was ended"
                    ) from None
                # a message, a finished chunk or, with nothing in flight, the idle timeout
                reader.wake.wait(idle if pending else max(0.0, active + idle - time.monotonic()))
                continue
            active = time.monotonic()
            if message is _END:
                ended = True
                continue
            if options is None:
                options = message.options
                self._check_model(options.model)
            try:
                records = self._records(message.sequences, offset, seen, options.on_invalid)
                self._check_stream_sizes(records, options)
            except ProtsslError as exc:
                refused, ended = exc, True
                continue
            offset += len(message.sequences)
            progress.records_received += len(records)
            chunk = self._submit(records, options, context, wait=True)
            chunk.future.add_done_callback(lambda _done: reader.wake.set())
            pending.append(chunk)

    def _check_stream_sizes(self, records: list[ProteinRecord], options: pb.EmbedOptions) -> None:
        """Each embedding travels in its own stream message: refuse one that would not fit."""
        if POOLING.name(options.pooling) != "per-residue" or not records:
            return
        longest = max(records, key=len)
        check_response_size(
            [longest.id],
            len(longest),
            self.model.encoder.config.embed_dim,
            np.dtype(VECTOR_DTYPE.name(options.dtype)).itemsize,
            self.config,
            streamed=True,
        )

    def _drain(
        self, pending: Pending, options: pb.EmbedOptions, progress: pb.EmbedProgress
    ) -> Iterator[pb.EmbedStreamResponse]:
        dtype = VECTOR_DTYPE.name(options.dtype)
        for result in _wait(pending):
            progress.records_done += 1
            progress.residues_done += result.embedding.length
            progress.records_cached += int(result.cached)
            message = embedding_to_proto(result.embedding, cached=result.cached, dtype=dtype)
            yield pb.EmbedStreamResponse(embedding=message)
        yield pb.EmbedStreamResponse(progress=progress)

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        limits = pb.RequestLimits(
            max_sequences=self.config.max_sequences,
            max_residues=self.config.max_residues,
            max_sequence_length=self.config.max_sequence_length,
        )
        return pb.ListModelsResponse(
            models=[model_info_to_proto(self.model, is_default=True)], limits=limits
        )


class ClassifierServicer(_Face, pb_grpc.ClassifierServiceServicer):
    """Few-shot classifiers in the store: a fit embeds through the model worker and the cache,
    queries through the batcher."""

    def __init__(
        self, model: LoadedModel, batcher: EmbeddingBatcher, config: ServiceConfig, store: Store
    ):
        super().__init__(model, batcher, config)
        self.store = store
        self.classifiers = fewshot.ClassifierCache(store)

    def CreateClassifier(
        self, request: pb.CreateClassifierRequest, context: grpc.ServicerContext
    ) -> pb.ClassifierInfo:
        self._check_model(request.model)
        check_name(request.name)
        if not request.new_version:
            self._refuse_existing(request.name)
        records = self._records(request.examples, 0)
        check_classifier([r.labels for r in records], [], self.config)
        method = CLASSIFIER_METHOD.name(request.method)
        settings = fewshot.FewShotConfig(method=method)  # type: ignore[arg-type]
        embed_config = fewshot.classifier_embed_config(
            POOLING.name(request.pooling) if request.pooling else None, self.model
        )
        deadline = _deadline(context)
        fitted = fewshot.fit_records(
            records,
            self.model,
            settings,
            embed_config=embed_config,
            cache=self.store.embeddings,
            run=self._worker(deadline),
            on_batch=_while_wanted(context, deadline, "the classifier was fitted"),
        )
        stored = fewshot.save_classifier(
            self.store, request.name, fitted, records, new_name=not request.new_version
        )
        return classifier_info_to_proto(stored)

    def _refuse_existing(self, name: str) -> None:
        """AlreadyExistsError before the fit when `name` exists (the save checks again, race-safe)."""
        try:
            _, version, _ = self.store.classifiers.identity(name)
        except ClassifierNotFoundError:
            return
        raise AlreadyExistsError(
            f"classifier {name!r} exists (version {version}): set new_version to add a version, "
            "or delete it first"
        )

    def AddExamples(
        self, request: pb.AddExamplesRequest, context: grpc.ServicerContext
    ) -> pb.ClassifierInfo:
        kept = self.store.classifiers.get(request.name)  # NOT_FOUND before any work is queued
        records = self._records(request.examples, 0)
        check_classifier([r.labels for r in records], [x for _, _, x in kept.examples], self.config)
        deadline = _deadline(context)
        stored = fewshot.add_examples(
            self.store,
            request.name,
            records,
            self.model,
            run=self._worker(deadline),
            on_batch=_while_wanted(context, deadline, "the classifier was fitted"),
        )
        return classifier_info_to_proto(stored)

    def GetClassifier(
        self, request: pb.GetClassifierRequest, context: grpc.ServicerContext
    ) -> pb.ClassifierInfo:
        stored = self.store.classifiers.get(request.name, request.version or None)
        return classifier_info_to_proto(stored)

    def ListClassifiers(
        self, request: pb.ListClassifiersRequest, context: grpc.ServicerContext
    ) -> pb.ListClassifiersResponse:
        response = pb.ListClassifiersResponse(
            classifiers=[classifier_info_to_proto(c) for c in self.store.classifiers.list()]
        )
        size, limit = response.ByteSize(), self.config.max_message_mb * 2**20
        if size > limit:  # refused here, not failed by gRPC after the call ends
            raise MessageTooLargeError(
                f"the {len(response.classifiers)} classifiers take {size / 2**20:.1f} MiB, more "
                f"than one message may ({self.config.max_message_mb} MiB, max_message_mb): "
                "delete unused classifiers or raise max_message_mb"
            )
        return response

    def DeleteClassifier(
        self, request: pb.DeleteClassifierRequest, context: grpc.ServicerContext
    ) -> pb.DeleteClassifierResponse:
        self.store.classifiers.delete(request.name)
        return pb.DeleteClassifierResponse()

    def Classify(
        self, request: pb.ClassifyRequest, context: grpc.ServicerContext
    ) -> pb.ClassifyResponse:
        stored, classifier = self.classifiers.get(request.name, request.version or None)
        records = self._records(request.sequences, request.offset)
        context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        response = pb.ClassifyResponse(classifier=classifier_info_to_proto(stored))
        deadline = _deadline(context)

        def through_batcher(
            records: Sequence[ProteinRecord], layer: int, pooling: str
        ) -> np.ndarray:
            pending = self.batcher.submit(records, pooling=pooling, layer=layer, deadline=deadline)
            context.add_callback(pending.cancel)
            outcomes = _wait(pending)
            cached = sum(r.cached for r in outcomes)
            response.vectors_cached += cached
            response.vectors_computed += len(outcomes) - cached
            return np.stack([r.embedding.vector for r in outcomes])

        decided = fewshot.classify_records(
            classifier,
            records,
            self.model,
            top_k=request.top_k or 3,
            embed=through_batcher,
            on_batch=_while_wanted(context, deadline, "the queries were aligned"),
        )
        response.predictions.extend(prediction_to_proto(d) for d in decided)
        return response


def unserved(service: str, why: str) -> grpc.GenericRpcHandler:
    """Every method of `service` (its proto name) answers UNIMPLEMENTED saying `why`: what this
    server was started without, instead of grpcio's bare "Method not implemented!" and a traceback
    in the server's log for each call."""
    descriptor = pb.DESCRIPTOR.services_by_name[service]

    def refuse(request: bytes, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, why)

    methods = descriptor.methods
    assert not any(m.client_streaming or m.server_streaming for m in methods)
    return grpc.method_handlers_generic_handler(
        descriptor.full_name, {m.name: grpc.unary_unary_rpc_method_handler(refuse) for m in methods}
    )


class TokenServicer(pb_grpc.TokenServiceServicer):
    """API tokens in the store (the interceptor lets only admin tokens in)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.ServicerContext
    ) -> pb.CreateTokenResponse:
        row, token = self.store.tokens.create(request.role, name=request.name)
        return pb.CreateTokenResponse(info=token_info_to_proto(row), token=token)

    def ListTokens(
        self, request: pb.ListTokensRequest, context: grpc.ServicerContext
    ) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(
            tokens=[token_info_to_proto(t) for t in self.store.tokens.list()]
        )

    def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> pb.TokenInfo:
        return token_info_to_proto(self.store.tokens.revoke(request.id))
