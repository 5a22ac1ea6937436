"""Protocols: one module each, behind one small interface, :class:`StreamProtocol`.

``PROTOCOLS`` maps a port spec's proto name to the class that serves it: tcp and unix
(:mod:`.tcp`, :mod:`.unix`), and the TLS protocols ssl and ssleay (:mod:`.ssl`,
:mod:`.ssleay`, sharing :mod:`.tlsbase`). A class's ``is_tls`` says whether it takes the
``SSL_*`` options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .ssl import SSLProtocol
from .ssleay import SSLeayProtocol
from .tcp import TCPProtocol
from .tlsbase import TLSProtocol
from .unix import UnixProtocol

if TYPE_CHECKING:
    from ..client import Client
    from ..listener import Listener
    from ..ports import PortSpec


class StreamProtocol(Protocol):
    """What a protocol object offers the server. One exists per port spec, built by
    ``make_protocol`` at bind (it may raise ConfigError there); the rest runs in the server's
    hub, per connection in that connection's greenlet."""

    #: The proto name of its port specs: "tcp", "ssl", "ssleay" or "unix".
    name: str
    #: True when it serves TLS (``client.tls`` is set by ``post_accept``).
    is_tls: bool
    #: The port spec it was built for.
    spec: PortSpec

    def tls_library(self) -> str | None:
        """The TLS library and its version for the "TLS by ..." line at bind; None."""
        ...

    def post_accept(self, client: Client, timeout: float) -> None:
        """Make a new connection ready for I/O (TLS: the handshake within ``timeout``)."""
        ...

    def close(self, client: Client) -> None:
        """End a connection gracefully (close_notify, half-close, short drain); never raises."""
        ...

    def abort(self, client: Client) -> None:
        """Drop a connection at once."""
        ...

    def close_listener(self, listener: Listener) -> None:
        """Close a listening socket of this port (idempotent)."""
        ...


PROTOCOLS: dict[str, type[TCPProtocol]] = {
    "tcp": TCPProtocol,
    "ssl": SSLProtocol,
    "ssleay": SSLeayProtocol,
    "unix": UnixProtocol,
}

__all__ = ["PROTOCOLS", "SSLProtocol", "SSLeayProtocol", "StreamProtocol", "TCPProtocol",
           "TLSProtocol", "UnixProtocol"]
