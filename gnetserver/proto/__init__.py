"""Protocols: one module each, behind one small interface, :class:`StreamProtocol`.

``PROTOCOLS`` maps a port spec's proto name to the class that serves it: tcp and unix
(:mod:`.tcp`, :mod:`.unix`), and the TLS protocols ssl and ssleay (:mod:`.ssl`,
:mod:`.ssleay`, sharing :mod:`.tlsbase`). ``DATAGRAM_PROTOCOLS`` has the datagram ones,
udp and unixdgram (:mod:`.datagram`: ``post_accept`` takes a received datagram and returns
its stream). A class's ``is_tls`` says whether it takes the
``SSL_*`` options. A protocol's ``post_accept`` returns a :class:`~.stream.Stream`
(:mod:`.stream`), which the connection's Client owns from then on.

Nothing in this package (nor in :mod:`gnetserver.tls`) imports the server, the client or the
listener: they call in, never the other way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .datagram import Datagram, DatagramProtocol, DatagramStream, UnixDatagramProtocol
from .ssl import SSLProtocol
from .ssleay import SSLeayProtocol
from .stream import PlainStream, Stream, TLSFacts, TLSSession, TLSStream
from .tcp import TCPProtocol
from .tlsbase import TLSProtocol
from .unix import UnixProtocol

if TYPE_CHECKING:
    from ..ports import PortSpec


class StreamProtocol(Protocol):
    """What a protocol object offers the server. One exists per port spec, built at bind as
    ``Proto(spec, options, contexts)`` (``contexts``: the server's TLSContexts, which TLS
    protocols need; it may raise ConfigError there); the rest runs in the server's hub, per
    connection in that connection's greenlet."""

    #: The proto name of its port specs: "tcp", "ssl", "ssleay", "unix", "udp", "unixdgram".
    name: ClassVar[str]
    #: True when it serves TLS (its streams have ``tls`` set).
    is_tls: ClassVar[bool]
    #: The port spec it was built for.
    spec: PortSpec

    def tls_library(self) -> str | None:
        """The TLS library and its version for the "TLS by ..." line at bind; None."""
        ...

    def post_accept(self, sock: Any, timeout: float) -> Stream:
        """Make an accepted socket ready for I/O (TLS: the handshake within ``timeout``) and
        return its stream. On failure it has closed the connection itself, then raises."""
        ...

    def close_listener(self, sock: Any) -> None:
        """Close a listening socket of this port (idempotent)."""
        ...


#: The protocol classes by proto name; each is built as ``Proto(spec, options, contexts)``.
PROTOCOLS: dict[str, type[TCPProtocol]] = {
    "tcp": TCPProtocol,
    "ssl": SSLProtocol,
    "ssleay": SSLeayProtocol,
    "unix": UnixProtocol,
}

#: The datagram protocol classes by proto name (a unix port with ``unix_type`` sock_dgram is
#: served as unixdgram).
DATAGRAM_PROTOCOLS: dict[str, type[DatagramProtocol]] = {
    "udp": DatagramProtocol,
    "unixdgram": UnixDatagramProtocol,
}


__all__ = ["DATAGRAM_PROTOCOLS", "PROTOCOLS", "Datagram", "DatagramProtocol", "DatagramStream",
           "UnixDatagramProtocol", "PlainStream", "SSLProtocol", "SSLeayProtocol", "Stream",
           "StreamProtocol", "TCPProtocol", "TLSFacts", "TLSProtocol", "TLSSession",
           "TLSStream", "UnixProtocol"]
