"""Datagram protocols: udp and unixdgram (and unix with ``unix_type`` sock_dgram).

Rules of this module:

* A datagram port has no connections: the personality reads each datagram off the bound
  socket (``recvmsg`` of :attr:`DatagramProtocol.recv_len` bytes with
  :attr:`DatagramProtocol.recv_flags`) and hands it to the server as a :class:`Datagram`, in
  the place of an accepted socket. The server then runs the same connection path as for a
  stream: ``post_accept`` returns a :class:`DatagramStream`, which the Client owns.
* A :class:`DatagramStream`'s reads return the datagram once, then ``b""`` (end of stream);
  its writes are ``sendto`` the peer, one datagram per ``send``/``sendall``, waiting at most
  the stream's timeout (``timeout_idle``) for room in the socket's send queue (a unixdgram
  peer that stops reading fills it). A unixdgram peer that did not bind its socket has no
  address: writing to it raises :class:`ConnectionError` (logged at level 3).
* The bound socket is the port's, shared by every datagram in flight: ``close`` and ``abort``
  of a stream, and of a :class:`Datagram`, never close it (they only end that datagram's
  I/O). The listening socket is closed by :meth:`DatagramProtocol.close_listener` only.
* Nothing here imports the server, the client or the listener.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from gevent.socket import wait_write

from ..errors import ConfigError
from ..options import DEFAULT_UDP_RECV_LEN, int_in, recv_flags
from .stream import Stream
from .tcp import TCPProtocol
from .unix import remove_socket_file

if TYPE_CHECKING:
    from ..ports import PortSpec
    from ..tls.registry import TLSContexts

__all__ = ["DATAGRAM_KEYS", "Datagram", "DatagramProtocol", "DatagramStream",
           "UnixDatagramProtocol"]

#: The options of a datagram port, server-wide or per port (a dict's keys), as in Net::Server.
DATAGRAM_KEYS = ("udp_recv_len", "udp_recv_flags", "udp_broadcast")

#: The ``udp_recv_len`` bound (the option's converter): no datagram is longer than this.
_RECV_LEN = int_in(1, 1 << 20)


class Datagram:
    """One received datagram, as the personality hands it to the server in the place of an
    accepted socket (the protocol's ``post_accept`` makes its stream).

    Attributes:
        sock: the port's bound socket (shared: never closed through this object).
        data: the datagram's bytes (at most ``udp_recv_len``).
        peer: the sender's address: ``(host, port)``, ``(host, port, flow, scope)`` for IPv6,
            a unix path, or None for a unixdgram sender that did not bind its socket.
        truncated: True when the datagram was longer than ``udp_recv_len`` and was cut.
    """

    __slots__ = ("sock", "data", "peer", "truncated")

    def __init__(self, sock: Any, data: bytes, peer: Any, truncated: bool = False) -> None:
        self.sock = sock
        self.data = data
        self.peer = peer
        self.truncated = truncated

    def __repr__(self) -> str:
        return f"<Datagram {len(self.data)} bytes from {self.peer!r}>"

    def fileno(self) -> int:
        """-1: a datagram owns no descriptor (a Client closing a bare accepted object skips
        one whose ``fileno`` is -1)."""
        return -1

    def close(self) -> None:
        """Nothing to close: the socket is the port's."""


class DatagramStream:
    """The stream of one datagram: reads give the datagram once, writes answer the peer.

    Made by :meth:`DatagramProtocol.post_accept`; its ``io`` is itself (recv, recv_into,
    send, sendall, settimeout), and ``close``/``abort`` only end its I/O (see the module
    rules).
    """

    #: No TLS on a datagram port.
    tls: None = None

    __slots__ = ("sock", "peer", "_data", "_timeout", "_closed")

    def __init__(self, packet: Datagram) -> None:
        self.sock = packet.sock
        self.peer = packet.peer
        self._data: bytes | None = packet.data
        self._timeout: float | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<DatagramStream peer={self.peer!r}>"

    @property
    def io(self) -> DatagramStream:
        """The stream itself: its recv/send are the datagram's and the peer's."""
        return self

    def recv(self, bufsize: int, /) -> bytes:
        """The datagram (up to ``bufsize`` bytes of what is left of it), then ``b""``."""
        data = self._data
        if not data or self._closed:
            return b""
        head, rest = data[:bufsize], data[bufsize:]
        self._data = rest or None
        return head

    def recv_into(self, buffer: Any, nbytes: int = 0, /) -> int:
        """Copy the datagram (or what is left of it) into ``buffer``; 0 once read."""
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[:len(data)] = data
        return len(data)

    def send(self, data: bytes, /) -> int:
        """Send ``data`` to the peer as one datagram; returns its length. Waits at most the
        stream's timeout for room in the send queue (TimeoutError after). ConnectionError
        when the peer has no address (an unbound unixdgram socket) or the stream is closed."""
        if self._closed:
            raise ConnectionError("the datagram's stream is closed")
        if self.peer is None:
            raise ConnectionError("the unixdgram peer did not bind its socket: it has no "
                                  "address to answer to")
        while True:
            try:
                sent: int = self.sock.sendto(data, self.peer)
                return sent
            except (BlockingIOError, InterruptedError):
                # The send queue is full (a unixdgram peer that does not read): wait, bounded.
                wait_write(self.sock.fileno(), timeout=self._timeout,
                           timeout_exc=TimeoutError(f"no room to send to {self.peer!r} within "
                                                    f"{self._timeout} s"))

    def sendall(self, data: bytes, /) -> None:
        """Send ``data`` to the peer as one datagram (see :meth:`send`)."""
        self.send(data)

    def settimeout(self, timeout: float | None, /) -> None:
        """How long a send may wait for room in the send queue (None: no limit)."""
        self._timeout = timeout

    def close(self) -> None:
        """End this datagram's I/O; the port's socket stays open. Idempotent."""
        self._closed = True
        self._data = None

    def abort(self) -> None:
        """As :meth:`close`: a datagram has nothing to drain."""
        self.close()


class DatagramProtocol(TCPProtocol):
    """A udp port: datagrams over IPv4 or IPv6.

    Built at bind as ``Proto(spec, options, contexts)`` like every protocol; ``options`` carry
    the port's ``udp_recv_len`` and ``udp_recv_flags`` (its dict's keys, else the server-wide
    options: ``listen.port_options``); a bad value is a ConfigError naming the port. Like tcp,
    it refuses ``SSL_*`` options.

    Attributes:
        recv_len: the largest datagram read (longer ones are cut).
        recv_flags: the flags of each ``recvmsg``.
    """

    name: ClassVar[str] = "udp"
    #: True for the protocols of datagram ports: the personality reads, nothing accepts.
    is_datagram: ClassVar[bool] = True

    def __init__(self, spec: PortSpec, options: Mapping[str, Any],
                 contexts: TLSContexts | None) -> None:
        """At bind: check the ``SSL_*`` (refused) and ``udp_*`` options of the port."""
        super().__init__(spec, options, contexts)
        self.recv_len: int = self._option(options, "udp_recv_len", _RECV_LEN,
                                            DEFAULT_UDP_RECV_LEN)
        self.recv_flags: int = self._option(options, "udp_recv_flags", recv_flags, 0)

    def _option(self, options: Mapping[str, Any], name: str, convert: Any, default: int) -> int:
        value = options.get(name)
        if value is None:
            return default
        try:
            number: int = convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"port {self.spec}: bad {name} {value!r}: {exc}") from None
        return number

    def post_accept(self, sock: Any, timeout: float) -> Stream:
        """Per datagram, in its greenlet: ``sock`` is the :class:`Datagram`; nothing to
        negotiate (``timeout`` is not used)."""
        return DatagramStream(sock)


class UnixDatagramProtocol(DatagramProtocol):
    """A unixdgram port (or unix with ``unix_type`` sock_dgram): datagrams over a UNIX-domain
    socket; the socket file is removed when the port closes."""

    name: ClassVar[str] = "unixdgram"

    def close_listener(self, sock: Any) -> None:
        """Close the socket and remove its file, the port spec's path (only if it is still a
        socket); idempotent."""
        sock.close()
        remove_socket_file(str(self.spec.port))

