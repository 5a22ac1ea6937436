"""TLS over TCP with pyOpenSSL (Net::Server's proto ``ssl``): the context from
:func:`~gnetserver.tls.build_context`, connections driven by
:class:`~gnetserver.tls.TLSConnection` (the shared behaviour: :mod:`.tlsbase`)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..tls import TLSConnection, build_context, tls_library_versions
from ..tls.registry import Builder
from .stream import TLSStream
from .tlsbase import SHUTDOWN_SECONDS, TLSProtocol

__all__ = ["SHUTDOWN_SECONDS", "SSLProtocol"]


class SSLProtocol(TLSProtocol):
    """A stream over TLS with pyOpenSSL (Net::Server's proto ``ssl``)."""

    name: ClassVar[str] = "ssl"
    builder: ClassVar[Builder] = staticmethod(build_context)

    def tls_library(self) -> str:
        """pyOpenSSL, the OpenSSL it runs on and the cryptography wheel that bundles it."""
        return tls_library_versions()

    def connect(self, sock: Any) -> TLSStream:
        """Per connection: a cooperative pyOpenSSL connection over the accepted gevent
        socket, as a stream."""
        return TLSStream(TLSConnection(sock, self.context), sock)
