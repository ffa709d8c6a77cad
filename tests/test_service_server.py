"""The server's lifecycle: health and reflection, what it serves without a store, its config, and
the `python -m service` / `protssl serve` processes stopping gracefully."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from service_support import (
    big_request,
    request_for,
    rpc_error,
    running_server,
    vectors,
    wait_for_line,
)

import protssl
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.embedding import EmbedConfig, embed_records
from protssl.errors import InvalidInputError, ServiceError
from service.config import ServiceConfig
from service.server import SERVICE_NAMES

pytestmark = pytest.mark.service

SERVE_COMMANDS = {
    "python -m service": (sys.executable, "-m", "service"),
    # the console script's main (it sets WARNING logging first; serve must still log at INFO)
    "protssl serve": (
        sys.executable, "-c", "from protssl.cli import main; raise SystemExit(main())", "serve",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def channel(service_model: LoadedModel) -> Iterator[grpc.Channel]:
    with (
        running_server(service_model) as (_, address, _registry),
        grpc.insecure_channel(address) as ch,
    ):
        yield ch


def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", *SERVICE_NAMES):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_both_services(channel):
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"protssl.v1.EmbeddingService", "protssl.v1.ClassifierService"} <= set(services)
    assert "grpc.health.v1.Health" in services


def test_classifier_and_token_rpcs_say_why_they_are_unimplemented_without_a_store(
    service_model, caplog
):
    """Without a store (and without authentication) the classifier and token RPCs answer
    UNIMPLEMENTED saying what the server lacks, and the server logs one line, no traceback."""
    with (
        running_server(service_model) as (_, address, _registry),
        grpc.insecure_channel(address) as ch,
        caplog.at_level("INFO"),
    ):
        classifiers = rpc_error(
            pb_grpc.ClassifierServiceStub(ch).ListClassifiers,
            pb.ListClassifiersRequest(),
            timeout=10,
        )
        tokens = rpc_error(
            pb_grpc.TokenServiceStub(ch).CreateToken, pb.CreateTokenRequest(name="ci"), timeout=10
        )
        with protssl.Client(address) as client, pytest.raises(ServiceError) as sdk:
            client.classify("two", ["MKV"])
    assert classifiers.code() == tokens.code() == grpc.StatusCode.UNIMPLEMENTED
    assert classifiers.details() == (
        "this server keeps no classifiers: it runs without a store (--store false)"
    )
    assert tokens.details().startswith("this server keeps no API tokens: it runs without a store")
    assert sdk.value.code == "UNIMPLEMENTED" and "keeps no classifiers" in str(sdk.value)
    assert "Traceback" not in caplog.text and "Exception calling application" not in caplog.text
    assert caplog.text.count("code=UNIMPLEMENTED") == 3


def test_service_config_is_checked():
    with pytest.raises(InvalidInputError, match="max_queue must be at least 1"):
        ServiceConfig(max_queue=0)
    with pytest.raises(InvalidInputError, match="port must be in"):
        ServiceConfig(port=70000)
    with pytest.raises(InvalidInputError, match=r"^memory_cache_mb must not be negative, got -1$"):
        ServiceConfig(memory_cache_mb=-1)  # the one that is, not a list of four
    for name in ("grace_s", "stream_idle_timeout_s", "max_queue_delay_ms", "min_batch_fill"):
        # NaN passed every `< 0` and `<= 0` check: a server that never timed out or drained
        with pytest.raises(InvalidInputError, match=rf"^{name} must be a finite number, got nan$"):
            ServiceConfig(**{name: float("nan")})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("which", "what", "flag"),
    [("port", "gRPC port", "--port"), ("metrics_port", "metrics port", "--metrics-port")],
)
def test_a_busy_port_is_one_line_with_the_os_reason_and_what_to_do(
    service_model: LoadedModel, which: str, what: str, flag: str
) -> None:
    """grpcio said only 'Failed to bind to address ...; set GRPC_VERBOSITY=debug'."""
    with socket.socket() as taken:  # another server on that port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        expected = (
            rf"^cannot bind the {what} 127\.0\.0\.1:{busy} \(Address already in use\): "
            f"another process listens there: stop it, or give another {flag}"
        )
        with (
            pytest.raises(InvalidInputError, match=expected),
            running_server(service_model, **{which: busy}),
        ):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("verbosity", [None, "debug"])
def test_protssl_serve_on_a_busy_port_says_one_line_unless_grpc_logs_are_asked_for(
    service_model_dir, verbosity: str | None
) -> None:
    """gRPC's C core wrote `E1207 ... add_port.cc:83] Failed to add port to server: ...` to stderr
    before protssl's own line; with GRPC_VERBOSITY=debug (someone debugging gRPC) it still does."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    env.update(PROTSSL_MODEL=str(service_model_dir), PROTSSL_DTYPE="float32")
    if verbosity is not None:
        env["GRPC_VERBOSITY"] = verbosity
    with socket.socket() as taken:  # another server on that port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        command = [*SERVE_COMMANDS["protssl serve"], "--port", str(busy), "--metrics-port", "off"]
        command += ["--store", "false", "--insecure-no-auth"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    line = (
        f"protssl serve: error: cannot bind the gRPC port 127.0.0.1:{busy} (Address already in "
        "use): another process listens there: stop it, or give another --port\n"
    )
    assert done.returncode == 2
    if verbosity is None:
        assert done.stderr == line
    else:
        assert done.stderr.endswith(line)
        assert "add_port.cc" in done.stderr and "Failed to add port" in done.stderr


@pytest.mark.parametrize(("entry", "signals"), [("python -m service", 1), ("protssl serve", 2)])
def test_the_server_stops_gracefully_on_sigterm(
    service_model_dir, service_records, tmp_path, entry, signals
):
    """One SIGTERM, or two back to back (a `timeout` forwarding what `kill` sent): in-flight calls
    finish, the process exits 0. A handler that took a lock deadlocked on the second signal."""
    env = dict(
        os.environ,
        PROTSSL_MODEL=str(service_model_dir),
        PROTSSL_DTYPE="float32",
        OMP_WAIT_POLICY="PASSIVE",
    )
    process = subprocess.Popen(
        [
            *SERVE_COMMANDS[entry],
            "--port",
            "0",
            "--metrics-port",
            "off",
            "--grace-s",
            "20",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match, _ = wait_for_line(process, r"serving protssl.v1 on 127.0.0.1:(\d+) \(no metrics\)")
        port = int(match.group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.EmbeddingServiceStub(ch)
            stub.ListModels(pb.ListModelsRequest(), timeout=30)
            in_flight = stub.Embed.future(big_request(32), timeout=120)
            time.sleep(0.2)
            for _ in range(signals):
                process.send_signal(signal.SIGTERM)
            assert len(in_flight.result().embeddings) == 32  # finished within the grace period
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "shutting down" in rest and "stopped" in rest


@pytest.mark.slow
def test_a_bf16_server_on_a_cpu_without_bf16_serves_correct_vectors(
    service_model_dir, service_model, service_records
):
    """`ONEDNN_MAX_CPU_ISA=AVX2` makes oneDNN refuse bf16 as on AVX2-only CPUs, where every forward
    of a bf16 server once failed: it starts, warms up and answers with the float32 vectors."""
    env = dict(
        os.environ,
        PROTSSL_MODEL=str(service_model_dir),
        PROTSSL_DTYPE="bfloat16",
        ONEDNN_MAX_CPU_ISA="AVX2",
        ATEN_CPU_CAPABILITY="avx2",
        OMP_WAIT_POLICY="PASSIVE",
    )
    process = subprocess.Popen(
        [*SERVE_COMMANDS["python -m service"], "--port", "0", "--metrics-port", "off"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match, lines = wait_for_line(process, r"serving protssl.v1 on 127.0.0.1:(\d+)")
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as ch:
            response = pb_grpc.EmbeddingServiceStub(ch).Embed(
                request_for(service_records), timeout=120
            )
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "without native bf16" in "".join(lines) and "Traceback" not in "".join(lines) + rest
    assert {e.provenance.compute_dtype for e in response.embeddings} == {"bfloat16"}
    want = {e.id: e.vector for e in embed_records(service_records, service_model, EmbedConfig())}
    for name, got in vectors(response).items():
        cosine = got @ want[name] / np.linalg.norm(got) / np.linalg.norm(want[name])
        assert cosine >= 0.999, name
