"""Plain TCP, and the base class of every protocol.

A protocol object (the interface: :class:`~gnetserver.proto.StreamProtocol`) exists once per
port spec. It is built at bind (where it may check options and get TLS contexts, raising
ConfigError), and then, per connection, ``post_accept`` makes the accepted socket ready for
I/O (TLS: the handshake) and returns the :class:`~gnetserver.proto.stream.Stream` that the
connection's Client owns and closes from then on. Nothing here imports the server, the client
or the listener.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError
from .stream import LINGER_SECONDS, PlainStream, Stream, linger_close

if TYPE_CHECKING:
    from ..ports import PortSpec
    from ..tls.registry import TLSContexts

__all__ = ["LINGER_SECONDS", "TCPProtocol", "linger_close", "set_nodelay"]


def set_nodelay(sock: Any) -> None:
    """Turn Nagle off on an accepted TCP socket.

    Measured: with Nagle on, the first response after a TLS 1.3 handshake waited ~40 ms behind
    the server's unacknowledged session tickets until the client's delayed ACK, halving the
    handshake rate. Replies are written whole (OpenSSL writes whole records; handlers call
    sendall), so turning Nagle off does not split them.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # the peer already reset the connection: the next read says so


class TCPProtocol:
    """A stream over plain TCP."""

    #: The proto name of the port specs it serves.
    name: ClassVar[str] = "tcp"
    #: True for the protocols that serve TLS (and so take the ``SSL_*`` options).
    is_tls: ClassVar[bool] = False

    def __init__(self, spec: PortSpec, options: Mapping[str, Any],
                 contexts: TLSContexts | None) -> None:
        """At bind: check the per-port options; tcp takes none beyond the port spec's own
        fields (``contexts``, the server's TLS registry, is not used)."""
        self.spec = spec
        self.refuse_ssl_options(options)

    def refuse_ssl_options(self, options: Mapping[str, Any]) -> None:
        """SSL_* keys on a non-TLS port are a mistake worth stopping for (at bind)."""
        given = sorted(name for name in options if name.startswith("SSL_"))
        if given:
            raise ConfigError(
                f"port {self.spec}: {', '.join(given)} given for a {self.name} port "
                f"(TLS options need proto ssl)"
            )

    def tls_library(self) -> str | None:
        """The TLS library serving this port, as bind logs it once ("TLS by ..."); None."""
        return None

    def post_accept(self, sock: Any, timeout: float) -> Stream:
        """Per connection, in its greenlet: nothing to negotiate on a plain stream; Nagle is
        turned off and the socket becomes a :class:`~gnetserver.proto.stream.PlainStream`
        (``timeout`` is not used)."""
        set_nodelay(sock)
        return PlainStream(sock)

    def close_listener(self, sock: Any) -> None:
        """When the server closes (or a start-up fails): close the listening socket
        (idempotent)."""
        sock.close()
