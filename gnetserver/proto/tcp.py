"""Plain TCP, and the base class of every protocol.

A protocol object (the interface: :class:`~gnetserver.proto.StreamProtocol`) exists once per
port spec. It is built at bind (where it may check options and build contexts, raising
ConfigError), and then, per connection, ``post_accept`` makes the client ready for I/O (TLS:
the handshake), ``close`` ends it gracefully and ``abort`` drops it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..client import Client
    from ..listener import Listener
    from ..ports import PortSpec
    from ..server import GServer

#: Seconds a closing connection is drained after the half-close. Closing a socket with unread
#: input makes the kernel send RST, and the peer may then lose the last response it was sent.
LINGER_SECONDS = 1.0


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


def linger_close(sock: Any) -> None:
    """Half-close, read and discard until EOF or LINGER_SECONDS, then close. Never raises."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:
        pass  # the peer is gone or the drain timed out: nothing left to protect
    finally:
        sock.close()


class TCPProtocol:
    """A stream over plain TCP."""

    #: The proto name of the port specs it serves.
    name: ClassVar[str] = "tcp"
    #: True for the protocols that serve TLS (and so take the ``SSL_*`` options).
    is_tls: ClassVar[bool] = False

    def __init__(self, spec: PortSpec, options: Mapping[str, Any], server: GServer) -> None:
        """Check the per-port options; tcp takes none beyond the port spec's own fields."""
        self.spec = spec
        self.refuse_ssl_options(options)

    def refuse_ssl_options(self, options: Mapping[str, Any]) -> None:
        """SSL_* keys on a non-TLS port are a mistake worth stopping for."""
        given = sorted(name for name in options if name.startswith("SSL_"))
        if given:
            raise ConfigError(
                f"port {self.spec}: {', '.join(given)} given for a {self.name} port "
                f"(TLS options need proto ssl)"
            )

    def tls_library(self) -> str | None:
        """The TLS library serving this port, as bind logs it once ("TLS by ..."); None."""
        return None

    def post_accept(self, client: Client, timeout: float) -> None:
        """Nothing to negotiate on a plain stream; only Nagle is turned off."""
        set_nodelay(client.sock)

    def close(self, client: Client) -> None:
        """Half-close, drain briefly, close."""
        linger_close(client.sock)

    def abort(self, client: Client) -> None:
        """Close at once."""
        client.sock.close()

    def close_listener(self, listener: Listener) -> None:
        """Close the listening socket (idempotent)."""
        listener.sock.close()
