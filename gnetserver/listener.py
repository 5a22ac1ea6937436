"""One bound, listening socket and what the server knows about it."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable
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
    #: The local address of every connection it accepts, when that is known without asking
    #: each connection's socket (see :func:`fixed_local_address`); else None.
    local_address: Any = field(init=False, repr=False)
    #: The spec's ``is_unix`` (a unix port, stream or datagram), read once: the server asks
    #: it per connection.
    is_unix: bool = field(init=False, repr=False)
    _text: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bound = self.sock.getsockname()
        self.local_address = fixed_local_address(self.sock, self.bound)
        self.is_unix = self.spec.is_unix
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


#: IP_TRANSPARENT / IPV6_TRANSPARENT (Linux): such a socket accepts connections to addresses
#: other than the one it is bound to (TPROXY).
_TRANSPARENT = ((socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19)),
                (getattr(socket, "SOL_IPV6", 41), getattr(socket, "IPV6_TRANSPARENT", 75)))


def _is_wildcard(host: str) -> bool:
    """A listener bound to ``host`` accepts connections to any local address: ``0.0.0.0``,
    ``::`` and IPv4's wildcard on a dual-stack socket, ``::ffff:0.0.0.0``."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return True  # not an address we know: ask each connection's socket
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_unspecified or (mapped is not None and mapped.is_unspecified)


def fixed_local_address(sock: socket.socket, bound: Any) -> Any:
    """The local address every connection accepted on ``sock`` (bound to ``bound``) has: the
    bound address itself for an inet socket bound to one address (not a wildcard, not
    transparent); None otherwise (a wildcard, unix socket or transparent socket: ask each
    connection's socket). Saves ``get_client_info`` a getsockname per connection."""
    if not isinstance(bound, tuple) or len(bound) < 2 or _is_wildcard(bound[0]):
        return None
    level, option = _TRANSPARENT[sock.family == socket.AF_INET6]
    try:
        if sock.getsockopt(level, option):
            return None
    except OSError:
        pass  # not Linux, or no such option: no transparent proxying either
    return bound


#: ``accept()`` errors that say the process or the system ran out of something (descriptors,
#: buffers, memory) rather than that the listening socket is broken: accepting pauses and is
#: retried (:class:`AcceptBackoff`); the waiting connections stay in the kernel's backlog.
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptBackoff:
    """What one listener's acceptor does when ``accept()`` fails for want of resources
    (:data:`EXHAUSTION_ERRNOS`): it stops watching the socket (the queued connection keeps it
    readable, so watching it would spin) and retries after :meth:`failed`'s delay, which
    starts at :attr:`MIN_DELAY` and doubles up to :attr:`MAX_DELAY` while the failures go on
    (the longest a freed descriptor waits to be used); an accept that works resets it.

    Logging, never a line (or a traceback) per failed accept: failures less than
    :attr:`BURST_GAP` seconds apart are one burst. Its first failure logs one level-1 line;
    the first accept that works again logs one level-2 line (how many attempts failed, for
    how long). A server that stays at its limit, each freed descriptor taken at once, thus
    logs one pair of lines, not one per failure.

    Args:
        where: the listener's text, for the log lines.
        log: ``log(level, message)``, the server's log; None logs nothing.
        counted: called on every failed accept (the metrics' counter); None: nothing.
    """

    #: The first retry delay, and the longest (seconds).
    MIN_DELAY = 0.02
    MAX_DELAY = 0.5
    #: Failures this many seconds apart or more belong to two bursts (two lines).
    BURST_GAP = 2.0

    def __init__(self, where: str, log: Callable[[int, str], None] | None,
                 counted: Callable[[], None] | None = None) -> None:
        self._where = where
        self._log = log
        self._counted = counted
        self._delay = self.MIN_DELAY
        self._last_failure = float("-inf")
        self._since = 0.0  # when the burst started
        self._failures = 0  # failed attempts of the burst before its first success
        self._recovered = True  # the burst's first success was logged (or no burst yet)
        self._total = 0  # failed accepts since the start

    @property
    def failures(self) -> int:
        """Failed accepts (exhaustion errors) since the start."""
        return self._total

    def failed(self, exc: OSError) -> float:
        """Count a failed accept (an exhaustion error); the first of a burst is logged.
        Returns the seconds to wait before accepting again."""
        now = time.monotonic()
        if now - self._last_failure >= self.BURST_GAP:
            self._since, self._failures, self._recovered = now, 0, False
            if self._log is not None:
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                self._log(1, f"accept on {self._where} failed: {name} "
                             f"({os.strerror(exc.errno or 0)}); accepting pauses, retried "
                             f"with back-off up to {self.MAX_DELAY} s (one line per burst; "
                             f"{self._total} failed before)")
        self._last_failure = now
        if not self._recovered:
            self._failures += 1
        self._total += 1
        if self._counted is not None:
            self._counted()
        delay = self._delay
        self._delay = min(self.MAX_DELAY, self._delay * 2)
        return delay

    def succeeded(self) -> None:
        """An accept worked: the back-off starts again from its shortest delay; the first
        success of a burst is logged (level 2)."""
        self._delay = self.MIN_DELAY
        if self._recovered:
            return
        self._recovered = True
        if self._log is not None:
            self._log(2, f"accept on {self._where} works again after {self._failures} failed "
                         f"attempt(s) over {time.monotonic() - self._since:.1f} s")
