"""How a client names a server: `host:port`, a host alone (the default port), grpcio's own names."""

from __future__ import annotations

import pytest

from protssl.endpoint import DEFAULT_PORT, client_target
from protssl.errors import InvalidInputError
from service.config import ServiceConfig


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("127.0.0.1:50777", "127.0.0.1:50777"),
        ("embed.lab.internal", f"embed.lab.internal:{DEFAULT_PORT}"),  # grpcio would try 443
        ("localhost", f"localhost:{DEFAULT_PORT}"),
        ("[::1]", f"[::1]:{DEFAULT_PORT}"),
        ("[::1]:50777", "[::1]:50777"),
        ("::1", "::1"),  # a bare IPv6 address: grpcio's to read
        ("unix:/run/protssl.sock", "unix:/run/protssl.sock"),
        ("dns:///embed.lab.internal:50777", "dns:///embed.lab.internal:50777"),
        (" lb.internal:443 ", "lb.internal:443"),
    ],
)
def test_an_address_becomes_the_target_grpcio_reads_the_same_way(given: str, target: str) -> None:
    assert client_target(given) == target


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("", "no server address: give host:port"),
        ("localhost:99999", "port '99999' is not a port number"),  # grpcio wrapped it round
        ("localhost:0", "port '0' is not a port number"),
        ("localhost:http", "port 'http' is not a port number"),
        ("http://127.0.0.1:50051", "is a URL: give host:port (127.0.0.1:50051)"),
    ],
)
def test_an_address_that_names_no_server_is_refused(given: str, said: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        client_target(given)
    assert said in str(refused.value)


def test_the_server_binds_the_port_a_bare_host_reaches() -> None:
    assert ServiceConfig().port == DEFAULT_PORT
