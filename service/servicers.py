"""gRPC servicers: protobuf ↔ protssl domain types, nothing else.

Errors are raised as protssl errors; `service.interceptors.CallInterceptor` maps them to statuses.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, TimeoutError
from typing import Any, TypeVar

import grpc
import numpy as np

from protssl import fewshot
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.embed import BatchOutcome, Provenance
from protssl.errors import (
    DeadlineExceededError,
    FastaFormatError,
    InvalidInputError,
    ModelNotFoundError,
)
from protssl.fasta import ProteinRecord, records_from_sequences
from protssl.store import Store, StoredClassifier
from service.batcher import EmbeddingBatcher, Pending
from service.config import ServiceConfig
from service.limits import check_request, check_response_size

__all__ = ["ClassifierServicer", "EmbeddingServicer", "embedding_to_proto", "model_info"]

POOLING_NAMES = {
    pb.POOLING_UNSPECIFIED: "mean",
    pb.POOLING_MEAN: "mean",
    pb.POOLING_BOS: "bos",
    pb.POOLING_PER_RESIDUE: "per-residue",
}
WIRE_DTYPES: dict[Any, tuple[Any, np.dtype[Any]]] = {
    pb.VECTOR_DTYPE_UNSPECIFIED: (pb.VECTOR_DTYPE_FLOAT32, np.dtype("<f4")),
    pb.VECTOR_DTYPE_FLOAT32: (pb.VECTOR_DTYPE_FLOAT32, np.dtype("<f4")),
    pb.VECTOR_DTYPE_FLOAT16: (pb.VECTOR_DTYPE_FLOAT16, np.dtype("<f2")),
}
T = TypeVar("T")

STREAM_IN_FLIGHT = 4
"""Stream chunks queued ahead of the one whose results are being sent back."""


def _lookup(table: dict[Any, T], value: int, what: str) -> T:
    """An enum value's meaning; a value this server does not know is the caller's error."""
    if value not in table:
        raise InvalidInputError(f"unknown {what} {value}")
    return table[value]


def embedding_to_proto(result: BatchOutcome, wire: int) -> pb.Embedding:
    """One domain embedding as a packed little-endian protobuf message."""
    embedding = result.embedding
    enum, dtype = _lookup(WIRE_DTYPES, wire, "vector dtype")
    return pb.Embedding(
        id=embedding.id,
        length=embedding.length,
        dim=int(embedding.vector.shape[-1]),
        dtype=enum,
        vector=embedding.vector.astype(dtype, copy=False).tobytes(),
        cached=result.cached,
        provenance=_provenance_proto(embedding.provenance),
    )


@functools.lru_cache(maxsize=256)
def _provenance_proto(p: Provenance) -> pb.Provenance:
    """A provenance as protobuf, built once: a server's vectors share a handful of provenances.

    The message is shared: `pb.Embedding(provenance=...)` copies it, and nothing may edit it.
    """
    return pb.Provenance(
        model_name=p.model_name,
        model_sha256=p.model_sha256,
        layer=p.layer,
        pooling=p.pooling,
        compute_dtype=p.dtype,
        window_policy=p.window_policy,
        windowed=p.windowed,
        windows=p.windows,
    )


def model_info(model: LoadedModel, *, is_default: bool) -> pb.ModelInfo:
    config = model.encoder.config
    return pb.ModelInfo(
        name=model.name,
        sha256=model.sha256,
        num_layers=config.num_layers,
        embed_dim=config.embed_dim,
        max_residues=config.max_residues,
        compute_dtype=model.dtype_name,
        parameters=config.num_parameters(),
        is_default=is_default,
    )


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline on the monotonic clock; None when the client set none (or one past a day)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 86_400:
        return None
    return time.monotonic() + remaining


def _wait(job: Pending, deadline: float | None) -> list[BatchOutcome]:
    """The job's results, or DeadlineExceededError (the job is dropped if it has not run)."""
    try:
        return _result(job.future, deadline)
    finally:
        if not job.future.done():
            job.cancel()


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
        _lookup(WIRE_DTYPES, options.dtype, "vector dtype")  # before any work, not after it
        job = self.batcher.submit(
            records,
            pooling=_lookup(POOLING_NAMES, options.pooling, "pooling"),
            layer=options.layer if options.HasField("layer") else -1,
            deadline=_deadline(context),
            wait=wait,
        )
        context.add_callback(job.cancel)
        return job

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self._check_model(request.options.model)
        records = self._records(request.sequences, 0)
        per_residue = request.options.pooling == pb.POOLING_PER_RESIDUE
        check_response_size(
            sum(len(r) for r in records) if per_residue else 0,
            len(records),
            self.model.encoder.config.embed_dim,
            _lookup(WIRE_DTYPES, request.options.dtype, "vector dtype")[1].itemsize,
            self.config,
        )
        job = self._submit(records, request.options, context, wait=False)
        results = _wait(job, job.deadline)
        return pb.EmbedResponse(
            embeddings=[embedding_to_proto(r, request.options.dtype) for r in results]
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
        self, job: Pending, options: pb.EmbedOptions, progress: pb.EmbedProgress
    ) -> Iterator[pb.EmbedStreamResponse]:
        for result in _wait(job, job.deadline):
            progress.records_done += 1
            progress.residues_done += result.embedding.length
            progress.records_cached += int(result.cached)
            yield pb.EmbedStreamResponse(embedding=embedding_to_proto(result, options.dtype))
        yield pb.EmbedStreamResponse(progress=progress)

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(self.model, is_default=True)])


_METHODS = {
    pb.CLASSIFIER_METHOD_UNSPECIFIED: "prototype",
    pb.CLASSIFIER_METHOD_PROTOTYPE: "prototype",
    pb.CLASSIFIER_METHOD_KNN: "knn",
    pb.CLASSIFIER_METHOD_LINEAR: "linear",
    pb.CLASSIFIER_METHOD_CONTRASTIVE: "contrastive",
}
_METHOD_ENUMS = {name: enum for enum, name in _METHODS.items() if enum}


def classifier_info(stored: StoredClassifier) -> pb.ClassifierInfo:
    """A stored classifier version as its protobuf summary."""
    metrics = stored.metrics
    return pb.ClassifierInfo(
        id=str(stored.id),
        name=stored.name,
        version=stored.version,
        method=_METHOD_ENUMS.get(stored.method, pb.CLASSIFIER_METHOD_UNSPECIFIED),
        model_sha256=stored.model_sha256,
        labels=list(stored.params.get("classes", [])),
        examples=len(stored.examples),
        metrics=pb.ClassifierMetrics(
            held_out=str(metrics.get("held_out", "")),
            top1_accuracy=float(metrics.get("top1_accuracy", 0.0)),
            answered_rate=float(metrics.get("answered_rate", 0.0)),
            accuracy_on_answered=float(metrics.get("accuracy_on_answered", 0.0)),
            examples=int(metrics.get("examples", len(stored.examples))),
            classes=int(metrics.get("classes", 0)),
            layer=int(metrics.get("layer", 0)),
        ),
        created_at=stored.created_at.isoformat(),
    )


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
        method = _lookup(_METHODS, request.method, "classifier method")
        settings = fewshot.FewShotConfig(method=method)  # type: ignore[arg-type]
        fitted = _result(
            self.batcher.run_task(
                lambda: fewshot.fit_records(records, self.model, settings),
                deadline=_deadline(context),
            ),
            _deadline(context),
        )
        return classifier_info(fewshot.save_classifier(self.store, request.name, fitted, records))

    def AddExamples(
        self, request: pb.AddExamplesRequest, context: grpc.ServicerContext
    ) -> pb.ClassifierInfo:
        self.store.classifiers.get(request.name)  # NOT_FOUND before any work is queued
        records = self._records(request.examples, 0)
        stored = _result(
            self.batcher.run_task(
                lambda: fewshot.add_examples(self.store, request.name, records, self.model),
                deadline=_deadline(context),
            ),
            _deadline(context),
        )
        return classifier_info(stored)

    def GetClassifier(
        self, request: pb.GetClassifierRequest, context: grpc.ServicerContext
    ) -> pb.ClassifierInfo:
        return classifier_info(self.store.classifiers.get(request.name, request.version or None))

    def ListClassifiers(
        self, request: pb.ListClassifiersRequest, context: grpc.ServicerContext
    ) -> pb.ListClassifiersResponse:
        return pb.ListClassifiersResponse(
            classifiers=[classifier_info(c) for c in self.store.classifiers.list()]
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
        if stored.model_sha256 and stored.model_sha256 != self.model.sha256:
            raise InvalidInputError(
                f"classifier {stored.name!r} v{stored.version} was fitted on model "
                f"{stored.model_sha256[:12]}…, not on the served {self.model.name!r}"
            )
        records = self._records(request.sequences, 0)
        job = self.batcher.submit(
            records,
            pooling=str(classifier.info.get("pooling", "mean")),
            layer=classifier.layer,
            deadline=_deadline(context),
        )
        context.add_callback(job.cancel)
        results = _wait(job, job.deadline)
        predictions: list[pb.Prediction] = []
        if results:
            vectors = np.stack([r.embedding.vector for r in results])
            decided = classifier.predict(vectors, [r.id for r in records], top_k=request.top_k or 3)
            for decision in decided:
                abstained = decision.status == "unknown"
                predictions.append(
                    pb.Prediction(
                        id=decision.id,
                        top=[
                            pb.LabelScore(label=label, probability=probability)
                            for label, probability in decision.top
                        ],
                        abstained=abstained,
                        label="" if abstained else decision.label,
                        probability=decision.probability,
                        status=decision.status,
                        nearest_similarity=decision.nearest_similarity,
                    )
                )
        return pb.ClassifyResponse(predictions=predictions, classifier=classifier_info(stored))
