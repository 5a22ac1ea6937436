"""Plain TCP, and the interface every protocol implements.

A protocol object exists once per port spec. It is built at bind (where it may check options
and build contexts, raising ConfigError), and then, per connection, ``post_accept`` makes the
client ready for I/O (TLS: the handshake), ``close`` ends it gracefully and ``abort`` drops it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

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

    name = "tcp"

    def __init__(self, spec: Any, options: Mapping[str, Any], server: Any) -> None:
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

    def post_accept(self, client: Any, timeout: float) -> None:
        """Nothing to negotiate on a plain stream; only Nagle is turned off."""
        set_nodelay(client.sock)

    def close(self, client: Any) -> None:
        """Half-close, drain briefly, close."""
        linger_close(client.sock)

    def abort(self, client: Any) -> None:
        """Close at once."""
        client.sock.close()

    def close_listener(self, listener: Any) -> None:
        """Close the listening socket (idempotent)."""
        listener.sock.close()
