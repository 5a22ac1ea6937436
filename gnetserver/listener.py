"""One bound, listening socket and what the server knows about it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .ports import PortSpec
from .proxyproto import ProxySettings
from .resolve import BindAddress, describe

if TYPE_CHECKING:
    from .proto import StreamProtocol


@dataclass(eq=False)
class Listener:
    """A listening socket of the server.

    Attributes:
        spec: the port spec it was bound for.
        address: the resolved bind address.
        sock: the listening stdlib socket.
        protocol: the protocol object that negotiates and closes its connections
            (``protocol.is_tls``: a TLS port).
        proxy: how its connections' PROXY header is read (``proxy_protocol``), None when
            they send none; set by the server's ``bind``.
        serves_metrics: True for the ``metrics_port`` listener (its connections get the
            Prometheus exposition, not process_request); set by the server's ``bind``.
    """

    spec: PortSpec
    address: BindAddress
    sock: socket.socket
    protocol: StreamProtocol
    proxy: ProxySettings | None = None
    serves_metrics: bool = False
    #: The address as bound: ``(host, port)`` (IPv6: 4-tuple) or a unix path. Read once at
    #: construction, so it stays available after the socket is closed.
    bound: Any = field(init=False)
    _text: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bound = self.sock.getsockname()
        where = describe(self.address, self.sock)
        self._text = f"{where}|{self.proto}" if self.spec.is_unix else f"{where}/{self.proto}"

    @property
    def port(self) -> int | str:
        """The bound port number (kernel-chosen for port 0), or the path of a unix socket."""
        bound = self.bound
        port: int | str = bound[1] if isinstance(bound, tuple) else bound
        return port

    @property
    def host(self) -> str:
        """The bound host address text ('' for unix sockets)."""
        bound = self.bound
        return bound[0] if isinstance(bound, tuple) else ""

    @property
    def proto(self) -> str:
        """The port spec's protocol name: tcp, ssl, ssleay, unix, udp or unixdgram (a unix
        port with ``unix_type`` sock_dgram says unix; :attr:`is_datagram` tells)."""
        return self.spec.proto

    @property
    def is_datagram(self) -> bool:
        """True for a datagram port (udp, unixdgram): the personality reads datagrams off
        its socket instead of accepting connections."""
        return self.spec.is_datagram

    def __str__(self) -> str:
        return self._text
