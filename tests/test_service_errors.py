"""Errors through a real server on a loopback port: the status ERROR_TABLE gives each one, its class
name in the trailers, and the SDK raising that same class with the server's message."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

import protssl
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.errors import (
    AlreadyExistsError,
    AuthenticationError,
    CheckpointError,
    ClassifierNotFoundError,
    DeadlineExceededError,
    FastaFormatError,
    InvalidInputError,
    MessageTooLargeError,
    ModelNotFoundError,
    NotFoundError,
    OutputError,
    OverloadedError,
    PermissionDeniedError,
    ProtsslError,
    SequenceTooLongError,
    ServiceError,
    StoreError,
    StreamIdleError,
    UnavailableError,
    UntrustedCheckpointError,
    status_name_for,
)
from protssl.wire import ERROR_KIND_KEY
from service.interceptors import CallInterceptor
from service.metrics import ServiceMetrics

pytestmark = pytest.mark.service

ERRORS: tuple[ProtsslError, ...] = (
    InvalidInputError("pooling must be one of mean, bos, per-residue"),
    SequenceTooLongError("sequence q1 has 2000 residues"),
    NotFoundError("nothing named x"),
    ModelNotFoundError("model 'esm2-650m' is not served here"),
    ClassifierNotFoundError("no classifier 'families'"),
    CheckpointError("weights do not match the card"),
    UntrustedCheckpointError("a pickle checkpoint needs --trust-pickle"),
    OverloadedError("the embedding queue is full"),
    AuthenticationError("unknown or revoked API token"),
    PermissionDeniedError("API token 0123456789abcdef has role read; ... needs write"),
    StoreError("the database is unreachable"),
    ServiceError("a remote call failed"),
    UnavailableError("upstream unavailable"),
    DeadlineExceededError("the deadline passed"),
    StreamIdleError("no stream message for 60 s"),
    AlreadyExistsError("classifier 'families' exists"),
    MessageTooLargeError("the response would take 70 MiB"),
    OutputError("writing 'x.h5' failed: No space left on device"),
)


class _Failing(pb_grpc.EmbeddingServiceServicer):
    """Raises whatever the test put in `error`, from a unary and from a streaming call."""

    error: BaseException = RuntimeError("unset")

    def ListModels(self, request: object, context: object) -> pb.ListModelsResponse:
        raise self.error

    def EmbedStream(self, request_iterator: Iterator[object], context: object) -> Iterator[object]:
        next(iter(request_iterator))
        raise self.error
        yield  # a generator, as streaming handlers are


@pytest.fixture(scope="module")
def failing() -> Iterator[tuple[_Failing, str]]:
    """A gRPC server with the real interceptor (and so the real error mapping) on a free port."""
    servicer = _Failing()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=4),
        interceptors=[CallInterceptor(ServiceMetrics(CollectorRegistry()))],
    )
    pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _raw_failure(address: str) -> grpc.RpcError:
    """The failed call as grpc reports it: status, details and trailers."""
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.EmbeddingServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    return info.value


def _subclasses(kind: type[ProtsslError]) -> set[type[ProtsslError]]:
    return {kind}.union(*(_subclasses(k) for k in kind.__subclasses__()))


def test_every_error_class_is_checked() -> None:
    assert {type(e) for e in ERRORS} | {FastaFormatError} == _subclasses(ProtsslError) - {
        ProtsslError
    }


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_the_sdk_raises_the_class_the_server_raised(failing, error: ProtsslError) -> None:
    servicer, address = failing
    servicer.error = error
    failed = _raw_failure(address)
    status = status_name_for(error)
    assert status is not None
    assert failed.code() == grpc.StatusCode[status]
    assert dict(failed.trailing_metadata())[ERROR_KIND_KEY] == type(error).__name__
    # with a token: a client without one hears how to give one after an UNAUTHENTICATED message
    with (
        protssl.Client(address, retries=0, token="any") as client,
        pytest.raises(ProtsslError) as raised,
    ):
        client.list_models()
    assert type(raised.value) is type(error)
    assert str(raised.value) == str(error)
    if isinstance(error, ServiceError):
        assert isinstance(raised.value, ServiceError) and raised.value.code == status


def test_a_stream_fails_with_the_servers_class(failing, tmp_path: Path) -> None:
    servicer, address = failing
    servicer.error = StoreError("the database went away mid-stream")
    fasta = tmp_path / "one.fasta"
    fasta.write_text(">a\nMKV\n")
    with (
        protssl.Client(address, retries=0) as client,
        pytest.raises(StoreError, match="went away mid-stream"),
    ):
        client.embed_fasta(fasta, progress=False)


def test_a_record_error_names_the_record_in_the_trailers(failing) -> None:
    servicer, address = failing
    servicer.error = FastaFormatError(
        "invalid residue '-'", source="request", record_id="bad", record_index=1, position=4
    )
    trailers = dict(_raw_failure(address).trailing_metadata())
    assert (trailers["protssl-record-id"], trailers["protssl-position"]) == ("bad", "4")
    assert trailers["protssl-record-index"] == "1"
    with (
        protssl.Client(address, retries=0) as client,
        pytest.raises(InvalidInputError, match=r"record 'bad' \(#2\) at position 4") as raised,
    ):
        client.list_models()
    assert type(raised.value) is InvalidInputError  # the SDK does not rebuild the record fields


def test_an_unexpected_error_is_internal_without_its_message(failing, caplog) -> None:
    servicer, address = failing
    servicer.error = RuntimeError("secret detail")
    with protssl.Client(address, retries=0) as client, pytest.raises(ServiceError) as raised:
        client.list_models()
    assert type(raised.value) is ServiceError and raised.value.code == "INTERNAL"
    assert "internal error (incident" in str(raised.value)
    assert "secret detail" not in str(raised.value)
    assert "secret detail" in caplog.text  # logged on the server, with its traceback


def test_a_long_message_keeps_its_status(failing) -> None:
    """A message echoing what the client sent (a 100 kB model name; long non-ASCII ids, each byte
    %-encoded as 3) overflowed the client's metadata limit: the call ended RESOURCE_EXHAUSTED,
    "received metadata size exceeds hard limit", which the SDK raises as OverloadedError. The
    message is cut, the record-id trailer left out, and the status and class stay."""
    servicer, address = failing
    servicer.error = ModelNotFoundError(f"model {'x' * 100_000!r} is not served here")
    failed = _raw_failure(address)
    assert failed.code() == grpc.StatusCode.NOT_FOUND
    assert failed.details().startswith("model 'xxx") and "characters more)" in failed.details()
    record_id = "\N{GRINNING FACE}" * 490
    servicer.error = FastaFormatError(
        "invalid residue '-' " + f"record {record_id!r} " * 5,
        source="request",
        record_id=record_id,
        record_index=1,
        position=3,
    )
    failed = _raw_failure(address)
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(failed.trailing_metadata())
    assert trailers[ERROR_KIND_KEY] == "FastaFormatError" and "protssl-record-id" not in trailers
    assert trailers["protssl-position"] == "3"
    with protssl.Client(address, retries=0) as client, pytest.raises(InvalidInputError):
        client.list_models()
