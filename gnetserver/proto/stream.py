"""Streams: what a protocol's ``post_accept`` hands back, and what a Client then owns.

Rules of this module:

* A stream (the interface: :class:`Stream`) is one accepted connection made ready for I/O:
  :class:`PlainStream` over a tcp or unix socket, :class:`TLSStream` over a TLS connection
  (a :class:`~gnetserver.tls.TLSConnection` on ssl ports, a
  :class:`~gnetserver.proto.ssleay.SSLeayConnection` on ssleay ports: both are
  :class:`TLSSession` objects). It owns its socket from then on.
* ``io`` is the object reads and writes go through (:class:`PlainIO` over the socket, or the
  TLS connection), the one I/O surface of a stream: a Client calls ``io.recv``/``io.sendall``...
  directly, so a read costs what a read on that object costs, and a stream keeps no
  per-connection cache of bound methods (measured: five of them were +0.3 kB per idle
  connection).
* Waits have one deadline per connection (:class:`~gnetserver.tls.waiting.Waits`), on plain
  streams as on TLS ones: :class:`PlainIO` reads and writes the socket underneath the gevent
  socket (non-blocking) and waits through its ``Waits``, instead of the gevent socket's own
  waits, which arm a ``gevent.Timeout`` per wait when a timeout is set.
* ``close`` is graceful, idempotent and never raises: TLS close_notify once, bounded by
  :data:`~gnetserver.tls.connection.SHUTDOWN_SECONDS` (TLS streams only), then the lingering
  close (:func:`linger_close`); the TLS connection's resources are released even when the
  closing greenlet is killed. ``abort`` drops the connection at once (no alert, no drain).
  The first of the two to run is the only one that acts.
* This module imports nothing of the server, the client or the listener.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gevent.socket import wait_read

from ..tls.connection import SHUTDOWN_SECONDS
from ..tls.waiting import Waits

_T = TypeVar("_T")

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["LINGER_SECONDS", "SHUTDOWN_SECONDS", "PlainIO", "PlainStream", "Stream", "TLSFacts",
           "StreamIO", "TLSSession", "TLSStream", "linger_close"]

#: Seconds a closing connection is drained after the half-close. Closing a socket with unread
#: input makes the kernel send RST, and the peer may then lose the last response it was sent.
LINGER_SECONDS = 1.0

_monotonic = time.monotonic

#: Where the lingering close reads what it discards: one buffer for every connection (a read
#: into it never yields, so no two drains use it at once), not a new 64 KiB bytes per read.
_DISCARD = bytearray(65536)


def _timed_out() -> TimeoutError:
    return TimeoutError("timed out")


def linger_close(sock: Any, waits: Waits | None = None, queued: bool = True) -> None:
    """Half-close, read and discard until EOF or LINGER_SECONDS, then close. Never raises.

    With ``waits`` (the connection's :class:`~gnetserver.tls.waiting.Waits`, over the gevent
    socket ``sock``'s own watchers), the half-close and the drain use the OS socket under the
    gevent socket and wait through them, under one deadline (no ``gevent.Timeout``); before
    each wait the drain reads what is already queued (at most two reads: a peer that closed
    first, as HTTP clients after ``Connection: close`` do, has its close_notify and FIN there,
    measured: no wait, no watcher, two syscalls instead of seven; and the close_notify and FIN
    of a peer that answers the half-close come together: one wait, not two), then waits for
    readable, the peer's FIN being a round trip away after the half-close. ``queued`` False
    says the connection has not seen the peer close (a TLS connection that read no
    close_notify nor EOF): its FIN is then a round trip away, so the drain waits first
    (measured under h2load: the read before the first wait always failed with EAGAIN, a
    syscall and an exception per connection). The discarded
    bytes go to one shared buffer. Not while another greenlet waits on them (a
    handler's reader, when the connection is closed from elsewhere): that greenlet owns the
    watcher, so the drain then waits through a watcher of its own, and the parked greenlet
    sees the end of the stream or, at the close, EBADF."""
    try:
        if waits is None:  # a socket without waits (ssleay's, or one never made a stream)
            sock.shutdown(socket.SHUT_WR)
            deadline = _monotonic() + LINGER_SECONDS
            while (left := deadline - _monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(65536):
                    break
            return
        raw = sock._sock
        raw.shutdown(socket.SHUT_WR)
        deadline = _monotonic() + LINGER_SECONDS
        if waits.waiting():  # another greenlet is parked on the watchers: a watcher of our own
            while (left := deadline - _monotonic()) > 0:
                try:
                    if not raw.recv_into(_DISCARD):
                        break
                except BlockingIOError:
                    wait_read(raw.fileno(), left)  # TimeoutError at the deadline
            return
        if not queued:
            waits.wait_read(deadline, _timed_out)
        while True:
            # What is queued, before each wait: often the peer's alert and its FIN together
            # (then no wait at all, or one: measured, one hub round trip less per connection
            # than a wait before every read). At most two reads per wait, so a flooding peer
            # cannot keep the hub from the others.
            for _ in range(2):
                try:
                    if not raw.recv_into(_DISCARD):
                        return  # EOF (the finally closes)
                except BlockingIOError:
                    break
            waits.wait_read(deadline, _timed_out)
    except OSError:
        pass  # the peer is gone or the drain timed out: nothing left to protect
    finally:
        sock.close()


class TLSFacts(Protocol):
    """The read-only facts of a TLS session (``None``, or False, before the handshake); what
    ``stream.tls`` and ``client.tls`` offer handlers."""

    @property
    def version(self) -> str | None:
        """The negotiated protocol version, e.g. ``"TLSv1.3"``."""
        ...

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite."""
        ...

    @property
    def server_name(self) -> str | None:
        """The host name the client sent in SNI."""
        ...

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol selected."""
        ...

    @property
    def session_reused(self) -> bool:
        """True when the handshake resumed an earlier session."""
        ...

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The client's certificate, when it sent one."""
        ...


class TLSSession(TLSFacts, Protocol):
    """A TLS backend's server-side connection, as a :class:`TLSStream` drives it:
    :class:`~gnetserver.tls.TLSConnection` (ssl) or
    :class:`~gnetserver.proto.ssleay.SSLeayConnection` (ssleay)."""

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` decrypted bytes; ``b""`` once the peer has closed."""
        ...

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Read into ``buffer``; the count, 0 once the peer has closed."""
        ...

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and send some of ``data``; the count consumed."""
        ...

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``."""
        ...

    def settimeout(self, timeout: float | None) -> None:
        """Per-call timeout of recv/send (None: wait forever)."""
        ...

    def do_handshake(self, timeout: float | None) -> None:
        """Run the server handshake within ``timeout`` seconds."""
        ...

    def shutdown_tls(self, timeout: float = ...) -> None:
        """close_notify once, bounded by ``timeout``; never raises."""
        ...

    def close(self) -> None:
        """Release the connection and its socket at once; idempotent."""
        ...


class StreamIO(Protocol):
    """What a stream's reads and writes go through (``stream.io``): the socket, or the TLS
    connection; a Client calls these directly."""

    def recv(self, bufsize: int, /) -> bytes: ...
    def recv_into(self, buffer: Any, nbytes: int = 0, /) -> int: ...
    def send(self, data: bytes, /) -> int: ...
    def sendall(self, data: bytes, /) -> None: ...
    def settimeout(self, timeout: float | None, /) -> None: ...


class Stream(Protocol):
    """One connection ready for I/O, as a protocol's ``post_accept`` returns it and a Client
    owns it (see the module rules)."""

    @property
    def sock(self) -> Any:
        """The live socket underneath (``getsockname``/``setsockopt`` work on it)."""
        ...

    @property
    def io(self) -> StreamIO:
        """What reads and writes go through directly: the socket, or the TLS connection."""
        ...

    @property
    def tls(self) -> TLSFacts | None:
        """The TLS connection with its facts; None on tcp/unix."""
        ...

    def close(self) -> None:
        """End the connection gracefully; idempotent, never raises."""
        ...

    def abort(self) -> None:
        """Drop the connection at once; idempotent."""
        ...


_SEND_CHUNK = 1 << 20  # bytes handed to one send() by sendall: bounded, as the stdlib's


class PlainIO:
    """Reads and writes of a plain stream, on the OS socket under the gevent socket ``sock``,
    with socket semantics (``recv``, ``recv_into``, ``send``, ``sendall``, ``settimeout``:
    each call waits at most the timeout, then raises ``TimeoutError``), and its waits under
    one deadline per connection (module rules). Each call tries the socket first and waits
    only when it would block. Made by :class:`PlainStream`; ``close`` releases the waits
    only (the stream closes the socket)."""

    __slots__ = ("_raw", "_waits", "_timeout", "_replied")

    def __init__(self, sock: Any) -> None:
        # gevent's socket keeps the OS socket, non-blocking, as ``_sock`` (all its versions
        # since 1.0); its own recv/send would wait under a gevent.Timeout per wait.
        self._raw: socket.socket = sock._sock
        self._waits = Waits(sock.fileno(), sock)  # the gevent socket's own watchers
        self._timeout: float | None = sock.gettimeout()
        # The last call was a write: the peer's answer is a round trip away, so the next read
        # waits for readable at once instead of first failing with EAGAIN.
        self._replied = False

    def _until(self) -> float | None:
        timeout = self._timeout
        if timeout == 0.0:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))  # non-blocking mode
        return None if timeout is None else _monotonic() + timeout

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` at end of stream; TimeoutError after the timeout."""
        raw = self._raw
        if self._replied and self._timeout != 0.0:
            self._replied = False
        else:
            try:
                return raw.recv(bufsize, flags)
            except BlockingIOError:
                pass
        return self._read_waiting(raw.recv, bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int:
        """Read into ``buffer``; the count, 0 at end of stream."""
        raw = self._raw
        if self._replied and self._timeout != 0.0:
            self._replied = False
        else:
            try:
                return raw.recv_into(buffer, nbytes, flags)
            except BlockingIOError:
                pass
        return self._read_waiting(raw.recv_into, buffer, nbytes, flags)

    def _read_waiting(self, read: Callable[..., _T], *args: Any) -> _T:
        """Wait for readable, then ``read(*args)``, until it returns (by the call's deadline):
        the part of recv and recv_into that parks anyway (their first try stays inline)."""
        until = self._until()
        while True:
            self._waits.wait_read(until, _timed_out)
            try:
                return read(*args)
            except BlockingIOError:
                pass

    def send(self, data: Any, flags: int = 0, /) -> int:
        """Write some of ``data``; the count written."""
        return self._send(data, flags, None)

    def _send(self, data: Any, flags: int, until: float | None) -> int:
        raw = self._raw
        self._replied = True
        try:
            return raw.send(data, flags)
        except BlockingIOError:
            pass
        if until is None:
            until = self._until()
        while True:
            self._waits.wait_write(until, _timed_out)
            try:
                return raw.send(data, flags)
            except BlockingIOError:
                pass

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        """Write all of ``data``; the timeout bounds the whole call (as the stdlib's)."""
        view = memoryview(data).cast("B")
        size = len(view)
        sent = self._send(view[:_SEND_CHUNK], flags, None)
        if sent == size:
            return
        until = self._until()
        while sent < size:
            sent += self._send(view[sent:sent + _SEND_CHUNK], flags, until)

    def settimeout(self, timeout: float | None, /) -> None:
        """The per-call timeout of reads and writes (None: wait forever; 0: never wait)."""
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = None if timeout is None else float(timeout)

    def gettimeout(self) -> float | None:
        """The per-call timeout."""
        return self._timeout

    @property
    def waits(self) -> Waits:
        """The connection's waits (the lingering close drains through them)."""
        return self._waits

    def close(self) -> None:
        """Wake a greenlet parked in a wait (EBADF) and release the waits' watchers."""
        self._waits.close()


class PlainStream:
    """The stream of a tcp or unix connection: reads and writes through :class:`PlainIO`.

    Made by the plain protocols' ``post_accept``; owns ``sock`` from then on.
    """

    #: No TLS on a plain stream.
    tls: None = None

    __slots__ = ("sock", "io", "_closed")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        #: What reads and writes go through (the socket's, under one deadline).
        self.io = PlainIO(sock)
        self._closed = False

    def __repr__(self) -> str:
        return f"<PlainStream fd={self.sock.fileno()}>"

    def close(self) -> None:
        """Half-close, drain briefly, close (:func:`linger_close`); idempotent, never raises."""
        if not self._closed:
            self._closed = True
            try:
                linger_close(self.sock, self.io.waits)
            finally:
                self.io.close()

    def abort(self) -> None:
        """Close the socket at once; idempotent."""
        if not self._closed:
            self._closed = True
            self.io.close()
            self.sock.close()


class TLSStream:
    """The stream of a TLS connection: reads and writes go through the TLS connection.

    Made by the TLS protocols (their ``connect``) before the handshake; owns both the TLS
    connection and the socket it runs over.

    Args:
        tls: the backend's TLS connection (not yet handshaken).
        sock: the socket it runs over (on ssleay the wrapped ssl socket).
    """

    __slots__ = ("tls", "sock", "_closed")

    def __init__(self, tls: TLSSession, sock: Any) -> None:
        self.tls: TLSSession = tls
        self.sock = sock
        self._closed = False

    def __repr__(self) -> str:
        return f"<TLSStream {self.tls!r}>"

    @property
    def io(self) -> TLSSession:
        """The TLS connection: reads and writes go to it directly."""
        return self.tls

    def close(self) -> None:
        """close_notify once (bounded by SHUTDOWN_SECONDS; nothing before a completed
        handshake), then the lingering close of the socket; the TLS connection is released
        even when the greenlet is killed meanwhile. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            tls = self.tls
            tls.shutdown_tls(SHUTDOWN_SECONDS)
            # The ssl backend's connection lends its waits to the drain, and says whether the
            # peer's close was read already; ssleay's has neither.
            waits = getattr(tls, "waits", None)
            linger_close(self.sock, waits,
                         waits is None or bool(getattr(tls, "peer_closed", True)))
        finally:  # also when the greenlet is killed mid-close: release the connection
            self.tls.close()

    def abort(self) -> None:
        """Close at once, without a TLS alert; idempotent."""
        if not self._closed:
            self._closed = True
            self.tls.close()
            self.sock.close()
