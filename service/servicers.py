"""gRPC servicers: protobuf ↔ protssl domain types, nothing else.

Errors are raised as protssl errors; `service.interceptors.CallInterceptor` maps them to statuses.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, TimeoutError
from typing import Any, TypeVar

import grpc
import numpy as np

from protssl import fewshot
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.embedding import BatchOutcome
from protssl.errors import (
    DeadlineExceededError,
    FastaFormatError,
    ModelNotFoundError,
)
from protssl.fasta import ProteinRecord, records_from_sequences
from protssl.store import Store
from protssl.wire import (
    CLASSIFIER_METHOD,
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
from service.limits import check_request, check_response_size

__all__ = ["ClassifierServicer", "EmbeddingServicer", "TokenServicer"]

T = TypeVar("T")

STREAM_IN_FLIGHT = 4
"""Stream chunks queued ahead of the one whose results are being sent back."""


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

    def _on_worker(self, fn: Callable[[], T], context: grpc.ServicerContext) -> T:
        """`fn()` run on the model worker (it uses the model), by the call's deadline."""
        deadline = _deadline(context)
        return _result(self.batcher.run_task(fn, deadline=deadline), deadline)

    def _records(
        self,
        sequences: Sequence[Any],
        offset: int,
        seen: set[str] | None = None,
    ) -> list[ProteinRecord]:
        ids = [s.id or f"seq{offset + i}" for i, s in enumerate(sequences)]
        raw = [s.sequence for s in sequences]
        check_request(ids, raw, self.config)
        items: Sequence[str | ProteinRecord] = raw
        if sequences and hasattr(sequences[0], "labels"):  # LabelledSequence: keep the labels
            items = [
                ProteinRecord(i, r, tuple(s.labels))
                for i, r, s in zip(ids, raw, sequences, strict=True)
            ]
        records = records_from_sequences(items, ids=ids, source="request")
        if seen is not None:
            for index, record in enumerate(records):
                if record.id in seen:
                    raise FastaFormatError(
                        "duplicate id (seen earlier in this stream)",
                        source="request stream",
                        record_id=record.id,
                        record_index=offset + index,
                    )
                seen.add(record.id)
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
            layer=options.layer if options.HasField("layer") else -1,
            deadline=_deadline(context),
            wait=wait,
        )
        context.add_callback(pending.cancel)
        return pending

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self._check_model(request.options.model)
        records = self._records(request.sequences, 0)
        per_residue = POOLING.name(request.options.pooling) == "per-residue"
        dtype = VECTOR_DTYPE.name(request.options.dtype)
        check_response_size(
            sum(len(r) for r in records) if per_residue else 0,
            len(records),
            self.model.encoder.config.embed_dim,
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
        options: pb.EmbedOptions | None = None
        progress = pb.EmbedProgress()
        seen: set[str] = set()
        pending: collections.deque[Pending] = collections.deque()
        for message in request_iterator:
            if options is None:
                options = message.options
                self._check_model(options.model)
            records = self._records(message.sequences, progress.records_received, seen)
            progress.records_received += len(records)
            pending.append(self._submit(records, options, context, wait=True))
            while len(pending) > STREAM_IN_FLIGHT:
                yield from self._drain(pending.popleft(), options, progress)
        while pending and options is not None:
            yield from self._drain(pending.popleft(), options, progress)

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
        return pb.ListModelsResponse(models=[model_info_to_proto(self.model, is_default=True)])


class ClassifierServicer(_Face, pb_grpc.ClassifierServiceServicer):
    """Few-shot classifiers in the store; fitting runs on the model worker, queries through the batcher."""

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
        records = self._records(request.examples, 0)
        method = CLASSIFIER_METHOD.name(request.method)
        settings = fewshot.FewShotConfig(method=method)  # type: ignore[arg-type]
        fitted = self._on_worker(
            lambda: fewshot.fit_records(records, self.model, settings), context
        )
        stored = fewshot.save_classifier(self.store, request.name, fitted, records)
        return classifier_info_to_proto(stored)

    def AddExamples(
        self, request: pb.AddExamplesRequest, context: grpc.ServicerContext
    ) -> pb.ClassifierInfo:
        self.store.classifiers.get(request.name)  # NOT_FOUND before any work is queued
        records = self._records(request.examples, 0)
        stored = self._on_worker(
            lambda: fewshot.add_examples(self.store, request.name, records, self.model), context
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
        return pb.ListClassifiersResponse(
            classifiers=[classifier_info_to_proto(c) for c in self.store.classifiers.list()]
        )

    def DeleteClassifier(
        self, request: pb.DeleteClassifierRequest, context: grpc.ServicerContext
    ) -> pb.DeleteClassifierResponse:
        self.store.classifiers.delete(request.name)
        return pb.DeleteClassifierResponse()

    def Classify(
        self, request: pb.ClassifyRequest, context: grpc.ServicerContext
    ) -> pb.ClassifyResponse:
        stored, classifier = self.classifiers.get(request.name, request.version or None)
        records = self._records(request.sequences, 0)

        def through_batcher(
            records: Sequence[ProteinRecord], layer: int, pooling: str
        ) -> np.ndarray:
            pending = self.batcher.submit(
                records, pooling=pooling, layer=layer, deadline=_deadline(context)
            )
            context.add_callback(pending.cancel)
            return np.stack([r.embedding.vector for r in _wait(pending)])

        decided = fewshot.classify_records(
            classifier, records, self.model, top_k=request.top_k or 3, embed=through_batcher
        )
        predictions = [prediction_to_proto(d) for d in decided]
        return pb.ClassifyResponse(
            predictions=predictions, classifier=classifier_info_to_proto(stored)
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
