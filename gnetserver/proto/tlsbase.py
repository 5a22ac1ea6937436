"""The base of the TLS protocols: one class per TLS backend, the rest shared.

Rules of this module:

* A TLS protocol (proto ``ssl``: pyOpenSSL, :mod:`.ssl`; proto ``ssleay``: the stdlib ``ssl``
  module, :mod:`.ssleay`) differs from another only in its context :attr:`TLSProtocol.builder`,
  its connection factory :meth:`TLSProtocol.connect` and the library text
  :meth:`TLSProtocol.tls_library`.
* The context comes from the server's :class:`~gnetserver.tls.TLSContexts` (``tls_contexts``,
  created by ``bind`` and by the HUP preflight), so ports with equal options share one and
  ``reload_tls`` rebuilds every backend's contexts together. A server without that registry is
  a programming error: RuntimeError, never a private registry that a reload would miss.
* The handshake runs in the connection's own greenlet (``post_accept``), bounded by
  ``timeout_handshake``.
* Close: close_notify once, bounded by :data:`~gnetserver.tls.connection.SHUTDOWN_SECONDS`,
  then tcp's lingering close; the connection's resources are released even when the closing
  greenlet is killed. Abort: no alert, no drain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..tls.connection import SHUTDOWN_SECONDS
from ..tls.registry import Builder, ContextHandle
from .tcp import TCPProtocol, linger_close, set_nodelay

if TYPE_CHECKING:
    from ..client import Client, TLSStream
    from ..ports import PortSpec
    from ..server import GServer

__all__ = ["SHUTDOWN_SECONDS", "TLSProtocol"]


class TLSProtocol(TCPProtocol):
    """A stream over TLS; subclasses name the backend (see the module rules)."""

    is_tls: ClassVar[bool] = True
    #: Builds this backend's contexts from a port's resolved options (a registry Builder).
    builder: ClassVar[Builder]

    def __init__(self, spec: PortSpec, options: Mapping[str, Any], server: GServer) -> None:
        """At bind: get this port's context from the server's TLSContexts (shared with every
        port of this backend whose SSL_* options are equal; built now if new, ConfigError if
        the options are bad or not supported by this backend)."""
        self.spec = spec
        self.options = dict(options)
        contexts = server.tls_contexts
        if contexts is None:
            raise RuntimeError(f"port {spec}: the server has no TLS registry (tls_contexts); "
                               "bind() creates it before making the protocols")
        # Read through the class: a function stored as a class attribute is not a method.
        self.tls_handle: ContextHandle = contexts.handle(self.options, f"port {spec}",
                                                         type(self).builder)

    @property
    def context(self) -> Any:
        """The context new connections get (replaced by reload_tls and rotation)."""
        return self.tls_handle.context

    def tls_library(self) -> str:
        """The TLS library of this backend with its version, for bind's "TLS by ..." line."""
        raise NotImplementedError

    def connect(self, client: Client) -> TLSStream:
        """The backend's server-side connection over ``client.sock``, not yet handshaken (it may
        replace ``client.sock`` with the socket it wraps)."""
        raise NotImplementedError

    def post_accept(self, client: Client, timeout: float) -> None:
        """Run the TLS handshake within ``timeout`` seconds; raises TLSError, HandshakeTimeout,
        ConnectionAbortedError or OSError on failure."""
        set_nodelay(client.sock)
        client.tls = self.connect(client)
        client.stream = client.tls
        client.tls.do_handshake(timeout)

    def close(self, client: Client) -> None:
        """close_notify once (bounded), then the lingering close of the socket."""
        try:
            if client.tls is not None:
                client.tls.shutdown_tls(SHUTDOWN_SECONDS)
            linger_close(client.sock)
        finally:  # also when the greenlet is killed mid-close: release the connection
            if client.tls is not None:
                client.tls.close()

    def abort(self, client: Client) -> None:
        """Close at once, without a TLS alert."""
        if client.tls is not None:
            client.tls.close()
        client.sock.close()
