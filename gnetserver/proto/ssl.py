"""TLS over TCP with pyOpenSSL: the context is built once at bind, the handshake runs in the
connection's own greenlet (``post_accept``), bounded by ``timeout_handshake``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..tls import TLSConnection, build_context
from .tcp import TCPProtocol, linger_close

#: Seconds the close_notify alert may take to be written.
SHUTDOWN_SECONDS = 1.0


class SSLProtocol(TCPProtocol):
    """A stream over TLS (Net::Server's proto ``ssl``)."""

    name = "ssl"

    def __init__(self, spec: Any, options: Mapping[str, Any], server: Any) -> None:
        """Build this port's TLS context from its resolved SSL_* options (ConfigError if bad)."""
        self.spec = spec
        self.options = dict(options)
        self.context = build_context(self.options, f"port {spec}")

    def post_accept(self, client: Any, timeout: float) -> None:
        """Run the TLS handshake; raises TLSError/HandshakeTimeout/OSError on failure."""
        client.tls = TLSConnection(client.sock, self.context)
        client.stream = client.tls
        client.tls.do_handshake(timeout)

    def close(self, client: Any) -> None:
        """close_notify once (bounded), then the lingering close of the socket."""
        if client.tls is not None:
            client.tls.shutdown_tls(SHUTDOWN_SECONDS)
        linger_close(client.sock)
        if client.tls is not None:
            client.tls.close()

    def abort(self, client: Any) -> None:
        """Close at once, without a TLS alert."""
        if client.tls is not None:
            client.tls.close()
        client.sock.close()
