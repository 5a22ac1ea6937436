"""Cooperative server-side TLS: pyOpenSSL driven over a gevent socket.

pyOpenSSL is not cooperative, and monkey patching does not change that (it patches the stdlib
``ssl``, never pyOpenSSL): on a
non-blocking fd every call may raise ``WantReadError`` or ``WantWriteError``. A
:class:`TLSConnection` turns those into gevent waits, so a slow peer only parks its own greenlet.

Rules of this module:

* **Try first, then one wait loop.** Every OpenSSL call (``do_handshake``, ``recv``,
  ``recv_into``, ``send``, ``shutdown``) is tried at once; only when it raises Want* does the
  wait loop (``TLSConnection._waiting``) take over. ``WantReadError`` waits for readable and
  ``WantWriteError`` for writable in *every* operation, because a read can need a write and a
  write a read (renegotiation, TLS 1.3 KeyUpdate, post-handshake messages). The loop is a
  ``while True`` (never recursion) and every wait is bounded by the operation's deadline.
* **One deadline per connection, no timer per wait:** the waits go through the connection's
  :class:`~gnetserver.tls.waiting.Waits` (two io watchers created once, and one timer re-armed
  only when it fires; see that module). ``settimeout`` (``timeout_idle``) bounds each read or
  write call, the handshake's ``timeout`` the whole handshake, as before.
* **Partial writes:** ``send`` may write less than it is given (pyOpenSSL sets
  ``SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``). ``sendall`` loops
  over ``send(view[:16384])`` and advances by the count returned; a retry after a Want* uses the
  same bytes. pyOpenSSL's own ``Connection.sendall`` is never called: on WANT_WRITE it loses
  count of what it sent, and a retry with other bytes fails with ``bad write retry``.
* **Callers never see an OpenSSL exception.** The mapping at the boundary:

  ======================================  ==================================================
  OpenSSL outcome                         what the caller gets
  ======================================  ==================================================
  handshake deadline passed               :class:`~gnetserver.errors.HandshakeTimeout`
  recv/send deadline passed               ``TimeoutError("timed out")``
  ``ZeroReturnError`` (close_notify)      ``recv`` -> ``b""``, ``recv_into`` -> ``0``
  ``SysCallError(-1 or 0)`` (ragged EOF)  ``recv`` -> ``b""``, ``recv_into`` -> ``0``
  either EOF during ``do_handshake``      ``ConnectionAbortedError`` (errno ECONNABORTED)
  either EOF during ``send``/``sendall``  ``BrokenPipeError`` (errno EPIPE)
  other ``SysCallError(errno)``           ``OSError(errno)``: ``ConnectionResetError`` for
                                          ECONNRESET, ``BrokenPipeError`` for EPIPE, ...
  any other ``SSL.Error``                 :class:`~gnetserver.errors.TLSError` with OpenSSL's
                                          reason text ("wrong version number", "http
                                          request", ...)
  ======================================  ==================================================

  Every translated exception is raised ``from`` the OpenSSL one. So a handler can treat
  ``HandshakeTimeout`` (drop at once), ``ConnectionError`` (the peer went away: log at debug)
  and ``TLSError`` (protocol failure: log at info) differently.
* **Shutdown is one-way and best effort:** ``shutdown_tls`` sends close_notify once, bounded by
  its timeout, only after a completed handshake and never after a fatal error (OpenSSL forbids
  ``SSL_shutdown`` then). It never raises and never waits for the peer's close_notify.

Resource handling:
    The ``TLSConnection`` owns the gevent socket it is given: ``close()`` closes its io watchers
    and then the socket, once (later calls do nothing). Reads and writes after ``close()``
    raise ``OSError(EBADF)``, as on a closed socket; OpenSSL is not called again (the fd's
    number may belong to another connection by then). Do not close the socket yourself; use
    ``close()`` (or ``with TLSConnection(...) as conn:``).

Concurrency:
    One greenlet at a time per connection, in the thread whose hub created it. An OpenSSL
    ``SSL`` object is not safe for concurrent use, and a second greenlet waiting on the same
    watcher gets gevent's ``ConcurrentObjectUseError``.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import gevent.socket
from cryptography import x509
from OpenSSL import SSL

from ..errors import HandshakeTimeout, TLSError
from .waiting import Waits

__all__ = ["SHUTDOWN_SECONDS", "TLSConnection", "describe_ssl_error"]

_T = TypeVar("_T")

#: Seconds the close_notify of a closing connection may take, on both TLS backends (ssl's
#: :class:`TLSConnection`, ssleay's ``SSLeayConnection``): the default of their
#: ``shutdown_tls`` and what the TLS protocols pass.
SHUTDOWN_SECONDS = 1.0

#: Largest slice handed to one ``send`` by ``sendall``: one TLS record's worth of plaintext.
_SEND_CHUNK = 16384

#: The most plaintext one TLS record carries: the most one ``SSL_read`` returns.
_RECORD = 16384

_READ, _WRITE = 1, 2  # what an OpenSSL call wants: to read, or to write
_monotonic = time.monotonic


def describe_ssl_error(exc: SSL.Error) -> str:
    """Return OpenSSL's reason text(s) of ``exc``, e.g. ``"wrong version number"``.

    ``SSL.Error.args[0]`` is OpenSSL's error queue as ``[(library, function, reason), ...]``;
    the reasons are what IO::Socket::SSL prints too. Falls back to ``str(exc)``.
    """
    queue = exc.args[0] if exc.args else None
    if isinstance(queue, list):
        reasons = [e[2] for e in queue if isinstance(e, tuple) and len(e) == 3 and e[2]]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))  # dedupe, keep order
    return str(exc) or type(exc).__name__


def _is_eof(exc: SSL.Error) -> bool:
    """True for pyOpenSSL's ragged-EOF ``SysCallError(-1, "Unexpected EOF")`` (or errno 0)."""
    return isinstance(exc, SSL.SysCallError) and bool(exc.args) and exc.args[0] in (-1, 0)


def _os_error(exc: SSL.SysCallError) -> OSError:
    """``OSError(errno)``; Python picks the subclass (ConnectionResetError for ECONNRESET...)."""
    code = exc.args[0]
    return OSError(code, os.strerror(code))


def _io_timeout() -> TimeoutError:
    return TimeoutError("timed out")


def _closed_error() -> OSError:
    return OSError(errno.EBADF, "the TLS connection is closed")


class TLSConnection:
    """Server side of one TLS connection over a gevent socket (see the module rules).

    Args:
        sock: A connected ``gevent.socket.socket`` (its OS fd is non-blocking), as gevent's
            ``StreamServer`` hands it to ``handle``. Ownership passes to this object.
        context: The port's context from :func:`gnetserver.tls.build_context`.
    """

    # Slots: thousands of idle connections each keep one (no per-instance dict).
    __slots__ = ("_sock", "_conn", "_waits", "_timeout", "_handshake_done", "_eof", "_broken",
                 "_shutdown_sent", "_closed", "_replied", "__weakref__")

    def __init__(self, sock: gevent.socket.socket, context: SSL.Context) -> None:
        self._sock = sock
        self._conn = SSL.Connection(context, sock)
        self._conn.set_accept_state()
        # The socket's two io watchers and (when a deadline needs one) a timer, reused by
        # every wait.
        self._waits = Waits(sock.fileno(), sock)
        self._timeout: float | None = None
        self._handshake_done = False
        self._eof = False  # the peer has finished sending (close_notify or ragged EOF)
        self._broken = False  # a fatal OpenSSL error: SSL_shutdown must not be called
        self._shutdown_sent = False
        self._closed = False
        self._replied = False  # the last call was a write: the peer's answer is a round trip away

    def __repr__(self) -> str:
        return f"<TLSConnection fd={self.fileno()}>"

    # -- the wait loop ---------------------------------------------------------------------

    def _waiting(self, op: Callable[..., _T], args: tuple[Any, ...], want: int,
                 until: float | None, expired: Callable[[], BaseException]) -> _T:
        """After ``op`` raised Want* (``want``: what it wants), wait for that and call
        ``op(*args)`` again, until it stops wanting I/O; every wait ends by ``until``.

        OpenSSL exceptions other than Want* propagate; callers translate them. The waits
        are outside the ``except`` clauses: a greenlet parked in one holds no exception."""
        waits = self._waits
        while True:
            if want == _READ:
                waits.wait_read(until, expired)
            else:
                waits.wait_write(until, expired)
            try:
                return op(*args)
            except SSL.WantReadError:
                want = _READ
            except SSL.WantWriteError:
                want = _WRITE

    def _run(self, op: Callable[..., _T], until: float | None,
             expired: Callable[[], BaseException]) -> _T:
        """Call ``op()`` until it stops wanting I/O: the first try inline, the wait loop only
        on Want* (the handshake and the close_notify; reads and writes inline their own)."""
        try:
            return op()
        except SSL.WantReadError:
            want = _READ
        except SSL.WantWriteError:
            want = _WRITE
        return self._waiting(op, (), want, until, expired)

    def _until(self) -> float | None:
        """The deadline of a read or write starting now (None: no limit)."""
        timeout = self._timeout
        return None if timeout is None else _monotonic() + timeout

    def _failure(self, exc: SSL.Error, what: str) -> OSError:
        """Translate a fatal OpenSSL error (not EOF) and remember that the session is dead."""
        self._broken = True
        if isinstance(exc, SSL.SysCallError):
            return _os_error(exc)
        return TLSError(f"{what}: {describe_ssl_error(exc)}")

    # -- handshake -------------------------------------------------------------------------

    def do_handshake(self, timeout: float | None) -> None:
        """Run the server handshake, all of it within ``timeout`` seconds.

        Args:
            timeout: Deadline for the whole handshake in seconds; ``None`` waits forever (only
                for tests: a silent client would hold the greenlet).

        Raises:
            HandshakeTimeout: the deadline passed.
            ConnectionAbortedError: the peer closed the connection (EOF) mid-handshake.
            OSError: a socket error, e.g. ``ConnectionResetError``.
            TLSError: a protocol failure, with OpenSSL's reason ("wrong version number",
                "http request", "no shared cipher", ...).
        """
        if self._closed:
            raise _closed_error()
        until = None if timeout is None else _monotonic() + timeout

        def expired() -> HandshakeTimeout:
            return HandshakeTimeout(f"TLS handshake did not finish within {timeout} s")

        try:
            self._run(self._conn.do_handshake, until, expired)
        except (SSL.ZeroReturnError, SSL.SysCallError) as e:
            if isinstance(e, SSL.ZeroReturnError) or _is_eof(e):
                self._broken = True
                raise ConnectionAbortedError(
                    errno.ECONNABORTED, "peer closed the connection during the TLS handshake"
                ) from e
            raise self._failure(e, "TLS handshake failed") from e
        except SSL.Error as e:
            raise self._failure(e, "TLS handshake failed") from e
        self._handshake_done = True

    # -- reading ---------------------------------------------------------------------------
    # recv, recv_into, send and sendall try OpenSSL first, inline, and only on Want* go to
    # the wait loop: a request's reads and writes cost one OpenSSL call each when the data
    # (or the room) is there.

    def recv(self, bufsize: int) -> bytes:
        """Return up to ``bufsize`` decrypted bytes; ``b""`` once the peer has closed.

        Raises:
            TimeoutError: nothing arrived within ``gettimeout()`` seconds.
            OSError: a socket error (e.g. ``ConnectionResetError``).
            TLSError: a protocol failure (e.g. a bad record MAC).
        """
        if self._eof:
            if self._closed:
                raise _closed_error()
            return b""  # OpenSSL's answer to a second read after EOF is not reliable
        conn = self._conn
        if not 0 < bufsize <= _RECORD:
            if bufsize <= 0:  # SSL_read of nothing fails as an EOF would: never call it
                if bufsize < 0:
                    raise ValueError("negative buffersize in recv")
                return b""
            bufsize = _RECORD  # one SSL_read returns one record at most: a smaller buffer
        if self._replied:
            # Right after a write (an answer) the peer's next bytes are a round trip away:
            # wait for them at once rather than first trying a read that fails with
            # WantReadError. Only when OpenSSL holds nothing decrypted (without read-ahead,
            # which no context sets, it never holds undecrypted bytes after a whole record).
            self._replied = False
            if not conn.pending() and self._timeout != 0:  # (0: never wait, only try)
                return self._read_waiting(conn.recv, (bufsize,), _READ, b"")
        try:
            return conn.recv(bufsize)
        except SSL.WantReadError:
            want = _READ
        except SSL.WantWriteError:
            want = _WRITE
        except SSL.Error as e:
            return self._read_failed(e, b"")
        return self._read_waiting(conn.recv, (bufsize,), want, b"")

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Read into a writable buffer; return the count, ``0`` once the peer has closed.

        ``nbytes`` 0 means ``len(buffer)``. Errors as for :meth:`recv`.
        """
        if self._eof:
            if self._closed:
                raise _closed_error()
            return 0
        conn = self._conn
        size = min(nbytes or len(buffer), _RECORD)
        if size <= 0:  # as in recv
            if size < 0:
                raise ValueError("negative buffersize in recv_into")
            return 0
        args = (buffer, size)
        if self._replied:  # as in recv
            self._replied = False
            if not conn.pending() and self._timeout != 0:
                return self._read_waiting(conn.recv_into, args, _READ, 0)
        try:
            return conn.recv_into(*args)
        except SSL.WantReadError:
            want = _READ
        except SSL.WantWriteError:
            want = _WRITE
        except SSL.Error as e:
            return self._read_failed(e, 0)
        return self._read_waiting(conn.recv_into, args, want, 0)

    def _read_waiting(self, op: Callable[..., _T], args: tuple[Any, ...], want: int,
                      empty: _T) -> _T:
        try:
            return self._waiting(op, args, want, self._until(), _io_timeout)
        except SSL.Error as e:
            return self._read_failed(e, empty)

    def _read_failed(self, exc: SSL.Error, empty: _T) -> _T:
        """EOF (close_notify or ragged) reads as ``empty``; anything else is raised."""
        if isinstance(exc, SSL.ZeroReturnError):
            self._eof = True
            return empty
        if _is_eof(exc):
            self._eof = self._broken = True
            return empty
        raise self._failure(exc, "TLS read failed") from exc

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds that ``recv`` returns without touching the socket."""
        return self._conn.pending()

    # -- writing ---------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and send some of ``data``; return how many bytes were consumed (>= 1).

        Raises:
            TimeoutError: the socket stayed unwritable for ``gettimeout()`` seconds.
            BrokenPipeError: the peer has closed the connection.
            OSError: another socket error (e.g. ``ConnectionResetError``).
            TLSError: a protocol failure.
        """
        if not data:
            return 0  # as a socket says; SSL_write of nothing fails (as if the peer were gone)
        return self._send(data, None)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; ``gettimeout()`` bounds the whole call (as the stdlib's).

        Errors as for :meth:`send`; on an error, an unknown prefix of ``data`` was sent.
        """
        if type(data) is bytes and 0 < len(data) <= _SEND_CHUNK:
            # One record (the common answer): it goes whole, or waits in the wait loop.
            sent = self._send(data, None)
            if sent == len(data):
                return
            data = data[sent:]  # a partial write: the rest as below
        view = memoryview(data).cast("B")
        until = self._until()
        while view:
            view = view[self._send(view[:_SEND_CHUNK], until) :]

    def _send(self, data: bytes | bytearray | memoryview, until: float | None) -> int:
        """One ``SSL_write`` of ``data`` (retried after waits, by ``until``; None: the
        deadline of a call starting now)."""
        if self._eof and self._broken:
            if self._closed:
                raise _closed_error()
            # After a ragged EOF OpenSSL 3 has marked the session dead: SSL_write would fail
            # with an empty error queue ("TLS write failed: []"). The peer is gone: say so.
            raise BrokenPipeError(errno.EPIPE, "peer closed the TLS connection")
        conn = self._conn
        self._replied = True
        try:
            return conn.send(data)
        except SSL.WantReadError:
            want = _READ
        except SSL.WantWriteError:
            want = _WRITE
        except SSL.Error as e:
            raise self._write_failed(e) from e
        try:
            return self._waiting(conn.send, (data,), want,
                                 self._until() if until is None else until, _io_timeout)
        except SSL.Error as e:
            raise self._write_failed(e) from e

    def _write_failed(self, exc: SSL.Error) -> OSError:
        if isinstance(exc, SSL.ZeroReturnError) or _is_eof(exc):
            self._broken = True
            return BrokenPipeError(errno.EPIPE, "peer closed the TLS connection")
        return self._failure(exc, "TLS write failed")

    # -- closing ---------------------------------------------------------------------------

    def shutdown_tls(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Send close_notify once, within ``timeout`` seconds; never raises.

        Does nothing before a completed handshake, after a fatal error, after ``close()`` or
        on a second call. The peer's close_notify is not awaited: a one-way shutdown is
        enough for a server (the peer may well be gone). Lingering close (``SHUT_WR`` plus a
        short drain before ``close()``, so that unread input does not turn the close into a
        reset that destroys the end of the response) is the caller's job.
        """
        if self._shutdown_sent or self._broken or self._closed or not self._handshake_done:
            return
        self._shutdown_sent = True
        try:
            self._run(self._conn.shutdown, _monotonic() + timeout, _io_timeout)
        except (SSL.Error, OSError):
            # The peer may be gone (EPIPE, ECONNRESET) or not reading (timeout); either way
            # nothing useful can be done about a close_notify that cannot be delivered.
            self._broken = True

    def close(self) -> None:
        """Close the io watchers, then the gevent socket; safe to call more than once.

        Sends nothing: call :meth:`shutdown_tls` first for a clean TLS close.
        """
        if self._closed:
            return
        # OpenSSL keeps the fd's number, which the next socket may get: later reads and
        # writes must fail before they reach it (the checks of a finished stream catch them).
        self._closed = self._eof = self._broken = True
        self._waits.close()  # wakes a greenlet parked in a wait (EBADF), closes the watchers
        self._sock.close()

    def __enter__(self) -> TLSConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the socket side -------------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        """Set the per-call timeout of recv/send (``None``: wait forever); not the handshake's."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout}")
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        """Return the per-call timeout set by :meth:`settimeout` (initially ``None``)."""
        return self._timeout

    @property
    def peer_closed(self) -> bool:
        """True once a read saw the peer's end (close_notify or EOF), or after ``close()``:
        the lingering close then reads what is queued before it waits."""
        return self._eof

    @property
    def waits(self) -> Waits:
        """The connection's waits: the stream's lingering close drains through them."""
        return self._waits

    def fileno(self) -> int:
        """Return the socket's fd (-1 after ``close()``)."""
        return int(self._sock.fileno())

    # -- facts about the session (None before the handshake) --------------------------------

    @property
    def version(self) -> str | None:
        """Negotiated protocol, e.g. ``"TLSv1.3"``."""
        return self._conn.get_protocol_version_name() if self._handshake_done else None

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
        return self._conn.get_cipher_name()

    @property
    def server_name(self) -> str | None:
        """Host name the client sent in SNI, or ``None``."""
        name = self._conn.get_servername()
        return name.decode("utf-8", "replace") if name else None

    @property
    def alpn_protocol(self) -> str | None:
        """ALPN protocol selected for this connection, or ``None``."""
        proto = self._conn.get_alpn_proto_negotiated()
        return proto.decode("utf-8", "replace") if proto else None

    @property
    def session_reused(self) -> bool:
        """True when the handshake resumed an earlier session (ticket or session id)."""
        return self._handshake_done and _session_reused(self._conn)

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The client's certificate (only with ``SSL_verify_mode``), or ``None``."""
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return cert if isinstance(cert, x509.Certificate) else None


def _session_reused(conn: SSL.Connection) -> bool:
    """``SSL_session_reused``; pyOpenSSL 26 has no public wrapper, so this uses its private
    cffi binding (``OpenSSL._util.lib`` and ``Connection._ssl``), in this one place."""
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(conn._ssl))
