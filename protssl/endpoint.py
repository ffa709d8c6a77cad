"""Where a protssl server listens unless told, how a client names it (`host:port`), and how long
a client's long job waits for a server it lost.

`protssl serve` binds DEFAULT_PORT; `protssl.Client` takes the address a user types and gives
grpcio a target it reads the same way: a bare host gets DEFAULT_PORT (grpcio's own default is 443,
where nothing protssl listens), and a URL, an empty address or a port past 65535 is refused with
what to give instead. Light on purpose: the server's config imports it.
"""

from __future__ import annotations

import re

from protssl.errors import InvalidInputError

__all__ = ["DEFAULT_PORT", "RECONNECT_S", "client_target"]

DEFAULT_PORT = 50051
"""The gRPC port `protssl serve` binds unless `--port` says otherwise."""

RECONNECT_S = 600.0
"""How long a client's long job (`embed_file`, `protssl embed --server`) keeps trying to reach a
server that went away midway (a restart, a dropped connection) before it stops."""

_GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_HOST_PORT = re.compile(r"^(?P<host>\[[^\]]*\]|[^:\[\]]+)(?::(?P<port>[^:]*))?$")


def client_target(target: str) -> str:
    """The grpcio target for an address as a user gives it: `host:port`, `host` (DEFAULT_PORT),
    `[ipv6]:port`, or one of grpcio's own names (`unix:/path`, `dns:///host:port`...)."""
    text = target.strip()
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("http", "https", "grpc", "grpcs"):
        tls = " with tls=True" if scheme.lower() in ("https", "grpcs") else ""
        raise InvalidInputError(
            f"target {target!r} is a URL: give host:port ({rest.rstrip('/')}){tls}"
        )
    if not text:
        raise InvalidInputError(
            f"no server address: give host:port (e.g. 127.0.0.1:{DEFAULT_PORT})"
        )
    if text.lower().startswith(_GRPC_SCHEMES):
        return text
    match = _HOST_PORT.match(text)
    if match is None:  # a bare IPv6 address, or something grpcio will judge itself
        return text
    port = match.group("port")
    if port is None:
        return f"{text}:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(
            f"target {target!r}: port {port!r} is not a port number (1 to 65535)"
        )
    return text
