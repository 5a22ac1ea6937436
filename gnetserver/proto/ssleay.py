"""TLS over TCP with the stdlib ``ssl`` module through ``gevent.ssl`` (Net::Server's ``ssleay``).

The same server as proto ``ssl``, with a second TLS backend: the context comes from
:func:`~gnetserver.tls.stdlib_context.build_stdlib_context`, built at bind through the server's
:class:`~gnetserver.tls.TLSContexts` (so ``reload_tls`` rebuilds ssl and ssleay contexts
together, all or none, and the HUP preflight checks both), each accepted
socket is wrapped with ``do_handshake_on_connect=False`` and the handshake runs explicitly in
the connection's own greenlet under ``timeout_handshake`` (gevent's implicit
handshake on wrap has no deadline, so a silent client would hold its greenlet forever).

Rules of this module:

* :class:`SSLeayConnection` is what ``client.tls`` is on an ``ssleay`` port (the connection of
  its :class:`~gnetserver.proto.stream.TLSStream`, ``client.stream``). It has the attributes
  of :class:`~gnetserver.tls.TLSConnection` (``version``, ``cipher``, ``server_name``,
  ``alpn_protocol``, ``session_reused``, ``peer_certificate``, ``settimeout``, ``recv``,
  ``recv_into``, ``send``, ``sendall``, ``do_handshake``, ``shutdown_tls``, ``close``) and
  maps errors the same way: EOF (clean or ragged) reads as ``b""``, a peer gone during a
  write is ``BrokenPipeError``, a timeout is ``TimeoutError`` (``HandshakeTimeout`` in the
  handshake), any other ``ssl.SSLError`` is a :class:`~gnetserver.errors.TLSError` with
  OpenSSL's reason.
* Wrapping takes over the accepted socket's fd (gevent detaches the original socket object), so
  the stream :meth:`SSLeayProtocol.connect` returns has the ``ssl`` socket as its ``sock``.
* Close (:class:`~gnetserver.proto.stream.TLSStream`, as for proto ssl): ``unwrap``
  (close_notify; it also waits briefly for the peer's), bounded by ``SHUTDOWN_SECONDS`` and
  only after a completed handshake, then tcp's lingering close. After ``unwrap`` the socket
  reads and writes plain bytes again, which is what the drain needs.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, cast

import gevent
from cryptography import x509

from ..errors import HandshakeTimeout, TLSError
from ..tls.connection import SHUTDOWN_SECONDS
from ..tls.registry import Builder
from ..tls.stdlib_context import (
    ServerSSLContext,
    ServerSSLSocket,
    build_stdlib_context,
    stdlib_reason,
)
from ..tls.util import Warn
from .stream import TLSStream
from .tlsbase import TLSProtocol

__all__ = ["SHUTDOWN_SECONDS", "SSLeayConnection", "SSLeayProtocol", "build_ssleay_context"]

_T = TypeVar("_T")
_EOF_ERRORS = (ssl.SSLZeroReturnError, ssl.SSLEOFError)


class SSLeayConnection:
    """Server side of one TLS connection over a ``gevent.ssl`` socket (see the module rules).

    Args:
        sock: the wrapped, not yet handshaken socket; this object owns it from now on.
    """

    def __init__(self, sock: ServerSSLSocket) -> None:
        self._sock = sock
        self._handshake_done = False
        self._broken = False
        self._eof = False
        self._shutdown_sent = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<SSLeayConnection {self.version or 'handshaking'} fd={self.fileno()}>"

    def do_handshake(self, timeout: float | None) -> None:
        """Run the server handshake, all of it within ``timeout`` seconds (None: no limit).

        Raises:
            HandshakeTimeout: the deadline passed.
            ConnectionAbortedError: the peer closed the connection mid-handshake.
            OSError: a socket error (``ConnectionResetError``...).
            TLSError: a protocol failure, with OpenSSL's reason.
        """
        expired = HandshakeTimeout(f"TLS handshake did not finish within {timeout} s")
        self._sock.settimeout(None)  # the gevent.Timeout below is the one deadline
        try:
            with gevent.Timeout(timeout, expired):
                self._sock.do_handshake()
        except HandshakeTimeout:
            self._broken = True
            raise
        except _EOF_ERRORS as e:
            self._broken = True
            raise ConnectionAbortedError(
                errno.ECONNABORTED, "peer closed the connection during the TLS handshake"
            ) from e
        except ssl.SSLError as e:
            self._broken = True
            raise TLSError(f"TLS handshake failed: {stdlib_reason(e)}") from e
        except OSError as e:
            self._broken = True
            if e.errno in (0, None):  # some Python/OpenSSL pairs report EOF this way
                raise ConnectionAbortedError(errno.ECONNABORTED, "peer closed the connection "
                                             "during the TLS handshake") from e
            raise
        self._handshake_done = True

    # -- reading and writing -----------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` decrypted bytes; ``b""`` once the peer has closed.

        Raises TimeoutError after ``gettimeout()`` idle seconds, TLSError/OSError on failure.
        """
        return self._read(self._sock.recv, (bufsize,), b"")

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Read into ``buffer``; the count, 0 once the peer has closed (``nbytes`` 0: all)."""
        return self._read(self._sock.recv_into, (buffer, nbytes or None), 0)

    def _read(self, op: Callable[..., _T], args: tuple[Any, ...], empty: _T) -> _T:
        if self._eof:
            return empty
        try:
            data = op(*args)
        except _EOF_ERRORS:
            self._eof = True
            return empty
        except ssl.SSLError as e:
            self._broken = True
            raise TLSError(f"TLS read failed: {stdlib_reason(e)}") from e
        if not data:
            self._eof = True
        return data

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and send some of ``data``; the count consumed."""
        return self._write(self._sock.send, data)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; ``gettimeout()`` bounds the whole call."""
        self._write(self._sock.sendall, data)

    def _write(self, op: Callable[[Any], _T], data: Any) -> _T:
        try:
            return op(data)
        except _EOF_ERRORS as e:
            self._broken = True
            raise BrokenPipeError(errno.EPIPE, "peer closed the TLS connection") from e
        except ssl.SSLError as e:
            self._broken = True
            raise TLSError(f"TLS write failed: {stdlib_reason(e)}") from e

    def pending(self) -> int:
        """Decrypted bytes held by OpenSSL that ``recv`` returns without waiting."""
        return int(self._sock.pending()) if not self._closed else 0

    # -- closing -------------------------------------------------------------------------------

    def shutdown_tls(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """close_notify once (``unwrap``) within ``timeout`` seconds; never raises.

        Does nothing before a completed handshake, after a fatal error or ``close()``.
        """
        if self._shutdown_sent or self._broken or self._closed or not self._handshake_done:
            return
        self._shutdown_sent = True
        try:
            with gevent.Timeout(timeout) as expiry:
                self._sock.settimeout(None)
                self._sock.unwrap()
        except gevent.Timeout as e:
            if e is not expiry:
                raise  # someone else's timeout
            # This one expired: leave quietly, as a close_notify that is not read is moot.
        except (ssl.SSLError, OSError, ValueError):
            # The peer is gone or misbehaved: a close_notify that cannot be delivered is moot.
            self._broken = True

    def close(self) -> None:
        """Close the socket at once (no alert); safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    # -- the socket side -----------------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        """Per-call timeout of recv/send in seconds (None: wait forever); not the handshake's."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout}")
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        """The per-call timeout set by :meth:`settimeout`."""
        return self._sock.gettimeout()

    def fileno(self) -> int:
        """The socket's fd (-1 once closed)."""
        return int(self._sock.fileno())

    # -- facts about the session (None before the handshake) ----------------------------------

    @property
    def version(self) -> str | None:
        """Negotiated protocol, e.g. ``"TLSv1.3"``."""
        return self._sock.version() if self._handshake_done else None

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
        info = self._sock.cipher() if self._handshake_done else None
        return info[0] if info else None

    @property
    def server_name(self) -> str | None:
        """Host name the client sent in SNI, or ``None``."""
        return self._sock.sni_name

    @property
    def alpn_protocol(self) -> str | None:
        """ALPN protocol selected for this connection, or ``None``."""
        return self._sock.selected_alpn_protocol() if self._handshake_done else None

    @property
    def session_reused(self) -> bool:
        """True when the handshake resumed an earlier session (ticket or session id)."""
        return self._handshake_done and bool(self._sock.session_reused)

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The client's certificate (only with ``SSL_verify_mode``), or ``None``."""
        if not self._handshake_done:
            return None
        der = self._sock.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None


def build_ssleay_context(opts: Mapping[str, Any], where: str, warn: Warn) -> ServerSSLContext:
    """The :class:`~gnetserver.tls.registry.TLSContexts` builder of ssleay ports (the stdlib
    backend has nothing to warn about: ``warn`` is unused)."""
    return build_stdlib_context(opts, where)


class SSLeayProtocol(TLSProtocol):
    """A stream over TLS with the stdlib ``ssl`` module (Net::Server's proto ``ssleay``); an
    option only proto ssl supports is a ConfigError at bind."""

    name: ClassVar[str] = "ssleay"
    builder: ClassVar[Builder] = staticmethod(build_ssleay_context)

    @property
    def context(self) -> ServerSSLContext:
        """The stdlib context new connections get (replaced by reload_tls)."""
        return cast(ServerSSLContext, self.tls_handle.context)

    def tls_library(self) -> str:
        """The stdlib ssl module and the OpenSSL it is linked with."""
        return f"the stdlib ssl module over {ssl.OPENSSL_VERSION}"

    def connect(self, sock: Any) -> TLSStream:
        """Per connection: wrap the accepted socket (no implicit handshake); the wrapper takes
        over its fd (the original socket object is detached), so it is the stream's ``sock``."""
        wrapped = cast(ServerSSLSocket, self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False))
        return TLSStream(SSLeayConnection(wrapped), wrapped)
