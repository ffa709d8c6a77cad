"""gRPC servicers: protobuf ↔ protssl domain types, nothing else.

Errors are raised as protssl errors; `service.interceptors.CallInterceptor` maps them to statuses.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, TimeoutError
from typing import Any

import grpc
import numpy as np

from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.errors import DeadlineExceededError, FastaFormatError, ModelNotFoundError
from protssl.fasta import ProteinRecord, records_from_sequences
from service.batcher import EmbeddingBatcher, EmbedResult, Job
from service.config import ServiceConfig
from service.limits import check_request

__all__ = ["EmbeddingServicer", "embedding_to_proto", "model_info"]

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
STREAM_IN_FLIGHT = 4
"""Stream chunks queued ahead of the one whose results are being sent back."""


def embedding_to_proto(result: EmbedResult, wire: int) -> pb.Embedding:
    """One domain embedding as a packed little-endian protobuf message."""
    embedding = result.embedding
    enum, dtype = WIRE_DTYPES[wire]
    p = embedding.provenance
    return pb.Embedding(
        id=embedding.id,
        length=embedding.length,
        dim=int(embedding.vector.shape[-1]),
        dtype=enum,
        vector=embedding.vector.astype(dtype, copy=False).tobytes(),
        cached=result.cached,
        provenance=pb.Provenance(
            model_name=p.model_name,
            model_sha256=p.model_sha256,
            layer=p.layer,
            pooling=p.pooling,
            compute_dtype=p.dtype,
            window_policy=p.window_policy,
            windowed=p.windowed,
            windows=p.windows,
        ),
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


def _wait(job: Job, deadline: float | None) -> list[EmbedResult]:
    """The job's results, or DeadlineExceededError (the job is dropped if it has not run)."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return job.future.result(timeout=timeout)
    except (TimeoutError, CancelledError):
        job.cancel()
        raise DeadlineExceededError(
            "the deadline passed before the embeddings were ready"
        ) from None


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    """Embed, EmbedStream and ListModels over one loaded model and its batcher."""

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
        self, sequences: Sequence[pb.Sequence], offset: int, seen: set[str] | None = None
    ) -> list[ProteinRecord]:
        ids = [s.id or f"seq{offset + i}" for i, s in enumerate(sequences)]
        raw = [s.sequence for s in sequences]
        check_request(ids, raw, self.config)
        records = records_from_sequences(raw, ids=ids, source="request")
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

    def _submit(
        self,
        records: list[ProteinRecord],
        options: pb.EmbedOptions,
        context: grpc.ServicerContext,
        *,
        wait: bool,
    ) -> Job:
        job = self.batcher.submit(
            records,
            pooling=POOLING_NAMES[options.pooling],
            layer=options.layer if options.HasField("layer") else -1,
            deadline=_deadline(context),
            wait=wait,
        )
        context.add_callback(job.cancel)
        return job

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self._check_model(request.options.model)
        records = self._records(request.sequences, 0)
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
        pending: collections.deque[Job] = collections.deque()
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
        self, job: Job, options: pb.EmbedOptions, progress: pb.EmbedProgress
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
