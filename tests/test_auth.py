"""Authentication, roles, TLS and reflection through a real server on loopback, with its API tokens in
a real SQLite file and the real PostgreSQL; certificates are made here with `cryptography`."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_support import running_server, wait_for_line

import protssl
from protssl._proto import protssl_pb2 as pb
from protssl.auth import ROLES, role_allows
from protssl.cli import main
from protssl.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.store import Store, StoreConfig
from protssl.wire import ERROR_KIND_KEY
from service.cli import add_arguments, config_kwargs
from service.config import ServiceConfig
from service.interceptors import METHOD_ROLES, required_role

pytestmark = pytest.mark.service

EMBED = "/protssl.v1.EmbeddingService/"
CLASSIFY = "/protssl.v1.ClassifierService/"
TOKENS = "/protssl.v1.TokenService/"
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


# --- certificates: a CA, a server certificate for 127.0.0.1/localhost, client certificates ---


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    stranger_cert: bytes
    """A client certificate from another CA (mutual TLS must refuse it)."""
    stranger_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki() -> Pki:
    """A throwaway CA with a server and a client certificate, and a stranger's client certificate."""
    pem = serialization.Encoding.PEM
    ca_key, other_key = _key(), _key()
    ca = _certificate("protssl test CA", ca_key, None, ca=True)
    other = _certificate("another CA", other_key, None, ca=True)
    server_key, client_key, stranger_key = _key(), _key(), _key()
    server = _certificate("localhost", server_key, (ca.subject, ca_key), server=True)
    client = _certificate("lab client", client_key, (ca.subject, ca_key))
    stranger = _certificate("stranger", stranger_key, (other.subject, other_key))
    return Pki(
        ca=ca.public_bytes(pem),
        server_cert=server.public_bytes(pem),
        server_key=_pem_key(server_key),
        client_cert=client.public_bytes(pem),
        client_key=_pem_key(client_key),
        stranger_cert=stranger.public_bytes(pem),
        stranger_key=_pem_key(stranger_key),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def pki_files(pki: Pki, tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca", "server_cert", "server_key"):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(getattr(pki, name))
        files[name] = str(path)
    return files


# --- a server with authentication on, and a token of each role in its store ---


@pytest.fixture
def tokens(store_url: str) -> dict[str, str]:
    """A token of each role, and one revoked, in the store the server will use."""
    with Store(StoreConfig(url=store_url)) as store:
        made = {role: store.tokens.create(role, name=f"test {role}")[1] for role in ROLES}
        row, made["revoked"] = store.tokens.create("admin")
        store.tokens.revoke(row.id)
    return made


@pytest.fixture
def secured(service_model, store_url: str, tokens: dict[str, str]) -> Iterator[str]:
    """The address of a started server that checks tokens against `store_url`."""
    with running_server(
        service_model, insecure_no_auth=False, store=True, database_url=store_url
    ) as (_, address, _registry):
        yield address


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _requests() -> dict[str, tuple[str, Any]]:
    """One cheap request per RPC: (shape, request); allowed ones may fail later, never on auth."""
    sequence = pb.Sequence(id="q", sequence="MKTAYIAKQRQISFVKSHFSRQ")
    return {
        f"{EMBED}Embed": ("unary", pb.EmbedRequest(sequences=[sequence])),
        f"{EMBED}EmbedStream": ("stream", pb.EmbedStreamRequest(sequences=[sequence])),
        f"{EMBED}ListModels": ("unary", pb.ListModelsRequest()),
        f"{CLASSIFY}CreateClassifier": ("unary", pb.CreateClassifierRequest(name="c")),
        f"{CLASSIFY}AddExamples": ("unary", pb.AddExamplesRequest(name="absent")),
        f"{CLASSIFY}GetClassifier": ("unary", pb.GetClassifierRequest(name="absent")),
        f"{CLASSIFY}ListClassifiers": ("unary", pb.ListClassifiersRequest()),
        f"{CLASSIFY}DeleteClassifier": ("unary", pb.DeleteClassifierRequest(name="absent")),
        f"{CLASSIFY}Classify": (
            "unary",
            pb.ClassifyRequest(name="absent", sequences=[sequence]),
        ),
        f"{TOKENS}CreateToken": ("unary", pb.CreateTokenRequest(role="nope")),
        f"{TOKENS}ListTokens": ("unary", pb.ListTokensRequest()),
        f"{TOKENS}RevokeToken": ("unary", pb.RevokeTokenRequest(id="absent")),
    }


def _call(channel: grpc.Channel, method: str, metadata: Any) -> grpc.RpcError | None:
    """Make one call of `method`; its error, or None when it succeeded."""
    shape, request = _requests()[method]
    serializer = type(request).SerializeToString
    try:
        if shape == "stream":
            call = channel.stream_stream(method, request_serializer=serializer)
            list(call(iter([request]), metadata=metadata, timeout=60))
        else:
            channel.unary_unary(method, request_serializer=serializer)(
                request, metadata=metadata, timeout=60
            )
    except grpc.RpcError as exc:
        return exc
    return None


def test_the_role_table_names_every_rpc_and_closes_unknown_methods() -> None:
    rpcs = {
        f"/{service.full_name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(METHOD_ROLES) == rpcs == set(_requests())
    assert required_role("/protssl.v1.EmbeddingService/Nope") == "admin"
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") is None
    assert [role_allows(have, "write") for have in ROLES] == [False, True, True]


def test_every_role_against_every_method(secured: str, tokens: dict[str, str]) -> None:
    with grpc.insecure_channel(secured) as channel:
        for method, need in METHOD_ROLES.items():
            for role in ROLES:
                error = _call(channel, method, _bearer(tokens[role]))
                if role_allows(role, need):
                    assert error is None or error.code() not in DENIED, (method, role, error)
                else:
                    assert error is not None, (method, role)
                    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (method, role)
                    assert f"has role {role}" in error.details() and need in error.details()
                    kind = dict(error.trailing_metadata())[ERROR_KIND_KEY]
                    assert kind == "PermissionDeniedError"


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer not-a-token"),),
        _bearer("protssl_0123456789abcdef_" + "A" * 43),  # well-formed, unknown
    ],
    ids=["missing", "not-bearer", "malformed", "unknown"],
)
def test_missing_or_bad_tokens_are_unauthenticated_everywhere(secured: str, metadata: Any) -> None:
    with grpc.insecure_channel(secured) as channel:
        for method in METHOD_ROLES:
            error = _call(channel, method, metadata)
            assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert "Bearer" in error.details() or "token" in error.details()
            assert "AAAA" not in error.details()  # the token is never echoed


def test_a_revoked_token_is_unauthenticated(secured: str, tokens: dict[str, str]) -> None:
    with grpc.insecure_channel(secured) as channel:
        error = _call(channel, f"{EMBED}ListModels", _bearer(tokens["revoked"]))
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in error.details()


def test_health_and_reflection_stay_open(secured: str) -> None:
    with grpc.insecure_channel(secured) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert "protssl.v1.ClassifierService" in _reflected_services(channel, "v1")


def test_revocation_takes_effect_within_token_cache_s(service_model, sqlite_url: str) -> None:
    with Store(StoreConfig(url=sqlite_url)) as store:
        row, token = store.tokens.create("read")
        with running_server(
            service_model,
            insecure_no_auth=False,
            database_url=sqlite_url,
            token_cache_s=0.5,
        ) as (_, address, _registry):
            client = protssl.Client(address, token=token, retries=0)
            with client:
                assert client.list_models()
                store.tokens.revoke(row.id)
                time.sleep(0.6)
                with pytest.raises(AuthenticationError, match="revoked"):
                    client.list_models()


SKIP = FastaPolicy(on_invalid="skip")


def test_the_sdk_sends_token_or_protssl_token(
    secured: str,
    tokens: dict[str, str],
    transposase_fastas: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    families: dict[str, list[ProteinRecord]] = {}
    for record in read_fasta(transposase_fastas[0], policy=SKIP):
        families.setdefault(record.labels[0], []).append(record)
    support = [r for records in list(families.values())[:3] for r in records[:4]]
    with protssl.Client(secured, token=tokens["write"], retries=0) as writer:
        created = writer.create_classifier("families", support, method="prototype")
        assert created.version == 1
        assert len(writer.classify("families", [support[0].sequence])) == 1
    monkeypatch.setenv("PROTSSL_TOKEN", tokens["read"])
    with protssl.Client(secured, retries=0) as reader:
        assert [c.name for c in reader.list_classifiers()] == ["families"]
        few = tmp_path / "few.fasta"  # the streamed call carries the token too
        few.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in support[:3]))
        assert reader.embed_fasta(few, progress=False).ids == [r.id for r in support[:3]]
        with pytest.raises(PermissionDeniedError, match="needs write"):
            reader.delete_classifier("families")
    monkeypatch.delenv("PROTSSL_TOKEN")
    with protssl.Client(secured, retries=0) as anonymous, pytest.raises(AuthenticationError) as no:
        anonymous.embed(["MKTAYIAKQR"])
    assert str(no.value) == (  # the SDK user learns how to give one, not the header's name alone
        "no API token: send metadata `authorization: Bearer <token>` (this client has none: give "
        f"Client({secured!r}, token=...) or set $PROTSSL_TOKEN; `protssl token create --role "
        "read` on the server's store makes one)"
    )


def test_an_admin_token_manages_tokens_over_grpc(secured: str, tokens: dict[str, str]) -> None:
    with protssl.Client(secured, token=tokens["admin"], retries=0) as admin:
        info, token = admin.create_token("read", name="remote")
        assert (info.role, info.name, info.revoked_at) == ("read", "remote", "")
        assert token.startswith(f"protssl_{info.id}_")
        listed = admin.list_tokens()
        assert info in listed and len(listed) == 5
        assert all(token not in str(t) for t in listed)
        with protssl.Client(secured, token=token, retries=0) as made:
            assert made.list_models()
            with pytest.raises(PermissionDeniedError, match="needs admin"):
                made.list_tokens()
        revoked = admin.revoke_token(info.id)
        assert revoked.revoked_at != "" and revoked.id == info.id
        with pytest.raises(InvalidInputError, match="read, write, admin"):
            admin.create_token("root")
        with pytest.raises(NotFoundError, match="absent"):
            admin.revoke_token("absent")


def test_without_a_cache_tokens_are_still_checked(
    service_model, sqlite_url: str, tokens_sqlite: str
) -> None:
    """`store=False` turns off the cache and the classifiers, not authentication."""
    with running_server(
        service_model, insecure_no_auth=False, store=False, database_url=sqlite_url
    ) as (_, address, _registry):
        with protssl.Client(address, retries=0) as anonymous, pytest.raises(AuthenticationError):
            anonymous.list_models()
        with protssl.Client(address, token=tokens_sqlite, retries=0) as client:
            assert len(client.embed(["MKTAYIAKQR"])) == 1


@pytest.fixture
def tokens_sqlite(sqlite_url: str) -> str:
    with Store(StoreConfig(url=sqlite_url)) as store:
        return store.tokens.create("read")[1]


# --- reflection v1 (what grpcurl and grpc-java ask first) and v1alpha ---


def _reflected_services(channel: grpc.Channel, version: str) -> set[str]:
    """`list_services` through reflection `version`, with that version's own message types."""
    pool = descriptor_pool.Default()
    package = f"grpc.reflection.{version}"
    request_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{package}.ServerReflectionRequest")
    )
    response_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{package}.ServerReflectionResponse")
    )
    call = channel.stream_stream(
        f"/{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    (response,) = call(iter([request_type(list_services="")]), timeout=10)
    return {s.name for s in response.list_services_response.service}


def test_reflection_v1_and_v1alpha_list_and_describe(service_model) -> None:
    with (
        running_server(service_model) as (_, address, _registry),
        grpc.insecure_channel(address) as channel,
    ):
        v1 = _reflected_services(channel, "v1")
        assert v1 == _reflected_services(channel, "v1alpha")
        assert {
            "protssl.v1.EmbeddingService",
            "protssl.v1.ClassifierService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= v1
        pool = descriptor_pool.Default()
        request_type = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
        )
        response_type = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
        )
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        symbols = ["protssl.v1.EmbeddingService", "grpc.reflection.v1.ServerReflection"]
        requests = [request_type(file_containing_symbol=s) for s in symbols]
        files = [
            r.file_descriptor_response.file_descriptor_proto[0]
            for r in call(iter(requests), timeout=10)
        ]
        assert b"protssl/v1/protssl.proto" in files[0]
        assert b"grpc/reflection/v1/reflection.proto" in files[1]


# --- TLS and mutual TLS ---


def test_tls_with_a_token(service_model, sqlite_url, tokens_sqlite, pki, pki_files) -> None:
    with running_server(
        service_model,
        insecure_no_auth=False,
        database_url=sqlite_url,
        tls_cert=pki_files["server_cert"],
        tls_key=pki_files["server_key"],
    ) as (_, address, _registry):
        with protssl.Client(
            address, token=tokens_sqlite, root_certificates=pki.ca, retries=0
        ) as client:
            assert len(client.embed(["MKTAYIAKQR"])) == 1
        with protssl.Client(
            address, token=tokens_sqlite, root_certificates=pki_files["ca"], retries=0
        ) as by_path:
            assert by_path.list_models()
        with (
            protssl.Client(address, root_certificates=pki.ca, retries=0) as no_token,
            pytest.raises(AuthenticationError),
        ):
            no_token.list_models()
        with (
            protssl.Client(address, token=tokens_sqlite, retries=0, timeout=5) as plaintext,
            pytest.raises(UnavailableError, match=r"connect with tls=True or root_certificates"),
        ):
            plaintext.list_models()
        with (
            protssl.Client(
                address,
                token=tokens_sqlite,
                root_certificates=pki.stranger_cert,
                retries=0,
                timeout=5,
            ) as untrusting,
            pytest.raises(UnavailableError, match=r"not signed by a CA this client trusts"),
        ):
            untrusting.list_models()  # the server's certificate is not signed by this root
    with (
        running_server(service_model) as (_, plain_address, _registry),
        protssl.Client(plain_address, root_certificates=pki.ca, retries=0, timeout=5) as tls,
        pytest.raises(UnavailableError, match=r"answers without TLS: connect with tls=False"),
    ):
        tls.list_models()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    service_model,
    sqlite_url,
    tokens_sqlite,
    pki,
    pki_files,
    tmp_path,
    monkeypatch,
    capsys,
) -> None:
    """The SDK and a `--server` command present the client certificate a server that asks for one
    checks; without one (or with a stranger's) the refusal hints at what to give."""
    with running_server(
        service_model,
        insecure_no_auth=False,
        database_url=sqlite_url,
        tls_cert=pki_files["server_cert"],
        tls_key=pki_files["server_key"],
        tls_client_ca=pki_files["ca"],
    ) as (_, address, _registry):
        with protssl.Client(
            address,
            token=tokens_sqlite,
            root_certificates=pki.ca,
            certificate_chain=pki.client_cert,
            private_key=pki.client_key,
            retries=0,
        ) as client:
            assert len(client.embed(["MKTAYIAKQR"])) == 1
        for chain, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
            with (
                protssl.Client(
                    address,
                    token=tokens_sqlite,
                    root_certificates=pki.ca,
                    certificate_chain=chain,
                    private_key=key,
                    retries=0,
                    timeout=5,
                ) as refused,
                pytest.raises(UnavailableError) as gone,
            ):
                refused.list_models()
            hint = "give certificate_chain and private_key" if chain is None else "not trust this"
            assert "(a TLS server that " in str(gone.value) and hint in str(gone.value)
        for name in ("client_cert", "client_key"):
            (tmp_path / f"{name}.pem").write_bytes(getattr(pki, name))
        fasta = tmp_path / "two.fasta"
        fasta.write_text(">a\nMKTAYIAKQR\n>b\nMSLQKTWGNI\n")
        monkeypatch.setenv("PROTSSL_TOKEN", tokens_sqlite)
        command = ["embed", str(fasta), "--server", address, "--server-ca", pki_files["ca"]]
        command += ["--no-progress", "--reconnect", "0"]
        mutual = ["--client-cert", str(tmp_path / "client_cert.pem")]
        mutual += ["--client-key", str(tmp_path / "client_key.pem")]
        assert main([*command, "-o", str(tmp_path / "v.tsv"), *mutual]) == 0
        assert main([*command, "-o", str(tmp_path / "w.tsv")]) == 2
        said = capsys.readouterr().err.strip().splitlines()[-1]
        assert "give --client-cert and --client-key, signed by the CA it trusts" in said, said
    assert len((tmp_path / "v.tsv").read_text().splitlines()) == 3  # a header and two rows
    assert main(["embed", str(fasta), "-o", str(tmp_path / "x.tsv"), *mutual]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == "protssl embed: error: --client-cert goes with --server"


def test_tls_settings_are_checked(tmp_path: Path, pki_files) -> None:
    from service.server import create_server

    with pytest.raises(InvalidInputError, match="tls_cert and tls_key"):
        ServiceConfig(tls_cert=pki_files["server_cert"])
    with pytest.raises(InvalidInputError, match="needs tls_cert"):
        ServiceConfig(tls_client_ca=pki_files["ca"])
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("hello")
    config = ServiceConfig(port=0, tls_cert=pki_files["server_cert"], tls_key=str(not_pem))
    with pytest.raises(InvalidInputError, match=r"tls_key: .*key.txt is not a PEM file"):
        create_server(config)
    missing = ServiceConfig(port=0, tls_cert=str(tmp_path / "nope.pem"), tls_key=str(not_pem))
    with pytest.raises(InvalidInputError, match=r"tls_cert: cannot read .*nope.pem"):
        create_server(missing)


# --- the command line: tokens, and where a server without authentication binds ---


def test_token_commands(
    store_url: str, capsys: pytest.CaptureFixture[str], tokens: dict[str, str]
) -> None:
    assert main(["token", "create", "--role", "write", "--name", "ci bot", "--db", store_url]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("protssl_") and "only time" in err
    with Store(StoreConfig(url=store_url)) as store:
        (row,) = [t for t in store.tokens.list() if t.name == "ci bot"]
    assert main(["token", "list", "--db", store_url]) == 0
    listing = capsys.readouterr().out
    assert row.id in listing and "ci bot" in listing and "write" in listing
    assert token not in listing and tokens["read"] not in listing
    assert main(["token", "revoke", row.id, "--db", store_url]) == 0
    assert f"token {row.id} (write) revoked" in capsys.readouterr().out
    # the whole token, or the id in capitals, name it too ('token id has 68 characters; the
    # limit is 64', and 'no API token with id' before)
    for given in (tokens["read"], tokens["read"].split("_")[1].upper()):
        assert main(["token", "revoke", given, "--db", store_url]) == 0
        assert "(read) revoked" in capsys.readouterr().out
    assert main(["token", "revoke", "0000000000000000", "--db", store_url]) == 2
    assert "no API token with id '0000000000000000'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["token", "create", "--role", "root", "--db", store_url])


def test_token_list_and_revoke_on_a_mistyped_sqlite_path_make_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They made a migrated, empty store there and listed no tokens, as if all were gone."""
    url = f"sqlite:///{tmp_path / 'typo' / 's.sqlite3'}"
    assert main(["token", "list", "--db", url]) == 0
    assert capsys.readouterr().err.endswith("s.sqlite3: no store there yet, so no tokens\n")
    assert main(["token", "revoke", "0123456789abcdef", "--db", url]) == 2
    assert "no store there" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_token_list_help_names_the_columns_in_the_order_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`token --help` said "id, role, name, created, revoked" and `token list --help` nothing; the
    table's columns are id, role, created, revoked, name."""
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    capsys.readouterr()
    assert main(["token", "list", "--db", url]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    columns = ", ".join(word for word in header.split() if word != "(UTC)")
    assert columns == "id, role, created, revoked, name"
    for argv in (["token", "--help"], ["token", "list", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        shown = " ".join(capsys.readouterr().out.split())
        assert columns in shown, argv
        assert "name, created" not in shown, argv


def _serve_config(argv: list[str], env: dict[str, str]) -> ServiceConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return ServiceConfig(**config_kwargs(parser.parse_args(argv), env))


def test_without_auth_only_an_explicit_host_leaves_loopback() -> None:
    exposed = {"PROTSSL_HOST": "0.0.0.0"}
    assert _serve_config([], exposed).host == "0.0.0.0"  # with auth the variable is honoured
    no_auth = _serve_config(["--insecure-no-auth"], exposed)
    assert (no_auth.insecure_no_auth, no_auth.host, no_auth.loopback_only) == (
        True,
        "127.0.0.1",
        True,
    )
    flagged = _serve_config(["--insecure-no-auth", "--host", "0.0.0.0"], exposed)
    assert (flagged.host, flagged.loopback_only) == ("0.0.0.0", False)
    assert not _serve_config([], {}).insecure_no_auth  # authentication is on by default
    assert _serve_config([], {"PROTSSL_INSECURE_NO_AUTH": "true"}).host == "127.0.0.1"


@pytest.mark.slow
def test_protssl_serve_with_tls_and_a_token_from_the_cli(
    service_model_dir: Path, sqlite_url: str, pki: Pki, pki_files: dict[str, str]
) -> None:
    """The real entry point: `protssl token create`, then `protssl serve --tls-cert --tls-key`
    (authentication on: no PROTSSL_INSECURE_NO_AUTH), called over TLS with the token."""
    env = {k: v for k, v in os.environ.items() if k != "PROTSSL_INSECURE_NO_AUTH"}
    env.update(PROTSSL_MODEL=str(service_model_dir), PROTSSL_DTYPE="float32")
    cli = [sys.executable, "-m", "protssl"]
    made = subprocess.run(
        [*cli, "token", "create", "--role", "read", "--db", sqlite_url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip()
    command = [*cli, "serve", "--port", "0", "--metrics-port", "off"]
    command += ["--database-url", sqlite_url]
    command += ["--tls-cert", pki_files["server_cert"], "--tls-key", pki_files["server_key"]]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        match, lines = wait_for_line(process, r"serving protssl.v1 on 127.0.0.1:(\d+)")
        address = f"127.0.0.1:{match.group(1)}"
        with protssl.Client(address, token=token, root_certificates=pki.ca, retries=0) as client:
            assert len(client.embed(["MKTAYIAKQR"])) == 1
        with (
            protssl.Client(address, root_certificates=pki.ca, retries=0) as anonymous,
            pytest.raises(AuthenticationError),
        ):
            anonymous.list_models()
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "authentication is OFF" not in "".join(lines) + rest


def test_a_store_without_tokens_is_named_at_start(
    service_model, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server(service_model, insecure_no_auth=False, database_url=sqlite_url):
        pass
    assert "no active API token in the store" in caplog.text
    assert "protssl token create" in caplog.text


def test_insecure_no_auth_serves_without_tokens_and_warns(
    service_model, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        running_server(service_model) as (_, address, _registry),
        grpc.insecure_channel(address) as channel,
    ):
        assert (
            _call(channel, f"{CLASSIFY}ListClassifiers", ()) is not None
        )  # no store: UNIMPLEMENTED
        assert _call(channel, f"{EMBED}ListModels", ()) is None
    assert "authentication is OFF" in caplog.text and "loopback only" in caplog.text


def test_a_slow_token_lookup_stalls_only_its_own_call() -> None:
    """A token not in the cache is looked up on the call's own thread: with the database frozen,
    health checks (and calls with cached tokens) still answer at once."""
    from concurrent.futures import ThreadPoolExecutor

    from grpc_health.v1 import health
    from prometheus_client import CollectorRegistry

    from protssl._proto import protssl_pb2_grpc as pb_grpc
    from protssl.auth import TokenVerifier
    from service.interceptors import AuthInterceptor, CallInterceptor
    from service.metrics import ServiceMetrics

    release = threading.Event()

    def frozen_database(_digest: str) -> None:
        release.wait(30)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=4),
        interceptors=[
            CallInterceptor(ServiceMetrics(CollectorRegistry())),
            AuthInterceptor(TokenVerifier(frozen_database, ttl_s=10)),
        ],
    )
    pb_grpc.add_EmbeddingServiceServicer_to_server(pb_grpc.EmbeddingServiceServicer(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            waiting = pb_grpc.EmbeddingServiceStub(channel).ListModels.future(
                pb.ListModelsRequest(),
                metadata=_bearer("protssl_0123456789abcdef_" + "A" * 43),
                timeout=30,
            )
            time.sleep(0.3)
            assert not waiting.done()  # still in the token lookup
            check = health_pb2_grpc.HealthStub(channel).Check
            assert check(health_pb2.HealthCheckRequest(), timeout=5).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            release.set()
            assert waiting.exception(timeout=30).code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        release.set()
        server.stop(None)


def test_embed_through_a_tls_server_needs_its_ca_and_says_so_in_one_line(
    service_model, pki_files: dict[str, str], sample_fasta: Path, tmp_path: Path
) -> None:
    """`protssl embed --server` in its own process: with `--server-ca` it embeds; without it, one
    line naming the option (gRPC's C core would add its own handshake log lines to stderr)."""
    fasta = tmp_path / "two.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMSEQNNTEMTFQIQRIYTKDISFEAPNAPH\n")
    with running_server(
        service_model, tls_cert=pki_files["server_cert"], tls_key=pki_files["server_key"]
    ) as (_, address, _r):
        target = address.replace("127.0.0.1", "localhost")
        command = [sys.executable, "-m", "protssl", "embed", str(fasta), "--server", target]
        command += ["--no-progress"]
        env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        run: dict[str, Any] = {"capture_output": True, "text": True, "env": env, "timeout": 120}
        trusted = subprocess.run(
            [*command, "-o", str(tmp_path / "a.h5"), "--server-ca", pki_files["ca"]], **run
        )
        untrusted = subprocess.run([*command, "-o", str(tmp_path / "b.h5")], **run)
    assert trusted.returncode == 0, trusted.stderr
    assert untrusted.returncode == 2
    (line,) = untrusted.stderr.splitlines()
    assert line.startswith(f"protssl embed: error: cannot reach a protssl server at {target} (")
    assert "give --server-ca, the CA that signed it" in line


def test_tls_files_grpc_refuses_are_named_not_a_bind_error(
    tmp_path: Path, pki: Pki, pki_files, capfd, monkeypatch
) -> None:
    """A key that is not the certificate's, a swapped certificate and key, or a key given as the
    client CA was 'cannot bind the gRPC port 127.0.0.1:N (Failed to bind ...; set
    GRPC_VERBOSITY=debug ...)' with the port free; gRPC's C core wrote its own lines to stderr
    first (`E... ssl_transport_security.cc:1569] Invalid private key.` and two more)."""
    from service.server import create_server

    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    capfd.readouterr()

    other_key = tmp_path / "other_key.pem"
    other_key.write_bytes(pki.client_key)
    cert, key = pki_files["server_cert"], pki_files["server_key"]
    base: dict[str, Any] = {"port": 0, "metrics_port": None, "store": False}
    base["insecure_no_auth"] = True
    wrong_key = ServiceConfig(**base, tls_cert=cert, tls_key=str(other_key))
    with pytest.raises(InvalidInputError, match=r"^TLS: grpc refused the files \(tls_cert .*"):
        create_server(wrong_key)
    assert "Invalid private key" not in capfd.readouterr().err
    swapped = ServiceConfig(**base, tls_cert=key, tls_key=cert)
    with pytest.raises(InvalidInputError, match=r"^tls_cert: .* holds no certificate"):
        create_server(swapped)
    key_as_ca = ServiceConfig(**base, tls_cert=cert, tls_key=key, tls_client_ca=key)
    with pytest.raises(InvalidInputError, match=r"^tls_client_ca: .* holds no certificate"):
        create_server(key_as_ca)
