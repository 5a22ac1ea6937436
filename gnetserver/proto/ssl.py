"""TLS over TCP with pyOpenSSL: the context is built at bind (and again by ``reload_tls``), the
handshake runs in the connection's own greenlet (``post_accept``), bounded by
``timeout_handshake``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..tls import TLSConnection, TLSContexts
from .tcp import TCPProtocol, linger_close, set_nodelay

#: Seconds the close_notify alert may take to be written.
SHUTDOWN_SECONDS = 1.0


class SSLProtocol(TCPProtocol):
    """A stream over TLS (Net::Server's proto ``ssl``)."""

    name = "ssl"

    def __init__(self, spec: Any, options: Mapping[str, Any], server: Any) -> None:
        """Get this port's TLS context from the server's TLSContexts (shared with every port
        whose SSL_* options are equal; built now if new, ConfigError if bad)."""
        self.spec = spec
        self.options = dict(options)
        contexts = getattr(server, "tls_contexts", None) or TLSContexts()
        self.tls_handle = contexts.handle(self.options, f"port {spec}")

    @property
    def context(self) -> Any:
        """The OpenSSL context new connections get (replaced by reload_tls and rotation)."""
        return self.tls_handle.context

    def post_accept(self, client: Any, timeout: float) -> None:
        """Run the TLS handshake; raises TLSError/HandshakeTimeout/OSError on failure."""
        set_nodelay(client.sock)
        client.tls = TLSConnection(client.sock, self.context)
        client.stream = client.tls
        client.tls.do_handshake(timeout)

    def close(self, client: Any) -> None:
        """close_notify once (bounded), then the lingering close of the socket."""
        try:
            if client.tls is not None:
                client.tls.shutdown_tls(SHUTDOWN_SECONDS)
            linger_close(client.sock)
        finally:  # also when the greenlet is killed mid-close: release the io watchers
            if client.tls is not None:
                client.tls.close()

    def abort(self, client: Any) -> None:
        """Close at once, without a TLS alert."""
        if client.tls is not None:
            client.tls.close()
        client.sock.close()
