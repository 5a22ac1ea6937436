"""The per-connection object that every per-connection hook receives.

Rules of this module:

* A :class:`Client` looks like a socket to handlers (``recv``, ``recv_into``, ``send``,
  ``sendall``, ``makefile``, ``readline``, ``settimeout``, ``close``) whatever the protocol
  underneath: a plain gevent socket for tcp/unix, a :class:`~gnetserver.tls.TLSConnection`
  for ssl or a :class:`~gnetserver.proto.ssleay.SSLeayConnection` for ssleay, installed by
  the protocol's ``post_accept``.
* It carries Net::Server's facts about the connection (``peeraddr``, ``peerport``,
  ``sockaddr``, ``sockport``, ``proto``, and with reverse lookups ``peerhost``), filled in by
  the server's ``get_client_info``.
* ``readline`` keeps surplus bytes in the client's own buffer, and ``recv`` serves that buffer
  first, so mixing the two never loses data. A file from ``makefile`` buffers on its own, as a
  socket's does: do not mix reads through a file with direct reads.
* ``close`` is graceful (TLS close_notify, half-close, short drain) and idempotent; the server
  calls it in ``post_process_request`` in any case.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cryptography import x509

    from .listener import Listener
    from .server import GServer


class Stream(Protocol):
    """What a client reads from and writes to: a gevent socket or a TLS connection."""

    def recv(self, bufsize: int) -> bytes: ...
    def recv_into(self, buffer: Any, nbytes: int = 0) -> int: ...
    def send(self, data: bytes) -> int: ...
    def sendall(self, data: bytes) -> None: ...
    def settimeout(self, timeout: float | None) -> None: ...


class TLSFacts(Protocol):
    """The read-only facts of a TLS session that the TLS facts of a Client read (``None``,
    or False, before the handshake)."""

    @property
    def version(self) -> str | None: ...
    @property
    def cipher(self) -> str | None: ...
    @property
    def server_name(self) -> str | None: ...
    @property
    def alpn_protocol(self) -> str | None: ...
    @property
    def session_reused(self) -> bool: ...
    @property
    def peer_certificate(self) -> x509.Certificate | None: ...


class TLSStream(Stream, TLSFacts, Protocol):
    """What ``client.tls`` is on TLS ports: a :class:`~gnetserver.tls.TLSConnection` (ssl) or
    a :class:`~gnetserver.proto.ssleay.SSLeayConnection` (ssleay). The protocol drives the
    handshake and the close; handlers read the facts and the stream."""

    def do_handshake(self, timeout: float | None) -> None: ...
    def shutdown_tls(self, timeout: float = ...) -> None: ...
    def close(self) -> None: ...


class Client:
    """One accepted connection, as seen by the hooks of the server.

    Attributes:
        server: the server that accepted the connection.
        listener: the listening port it came in on (``listener.spec`` is its PortSpec).
        sock: the accepted gevent socket.
        stream: what reads and writes go through (the socket, or its TLS connection).
        tls: on TLS ports, the TLS connection (:class:`TLSStream`): a TLSConnection on ssl
            ports, an SSLeayConnection on ssleay ports. Set by the protocol's post_accept
            just before the handshake (so a failed handshake leaves it set, without facts);
            None on tcp/unix ports.
        proto: "tcp", "ssl", "ssleay" or "unix".
        peeraddr, peerport: the peer's address text and port. None on unix sockets, as in
            Net::Server: a unix peer has no address (its CONNECT line names the socket path).
        sockaddr, sockport: the local address text and port; on unix sockets sockaddr is None
            and sockport is the socket path.
        peerhost: the peer's host name, with ``reverse_lookups`` (set by get_client_info,
            before post_accept_hook); None without lookups, for unix sockets, or when the
            lookup found no name.
        peerhost_rev: with double-reverse lookups, the addresses ``peerhost`` resolves to
            (a set of address texts; None when that lookup found none or did not run).
        allowed: the outcome of allow_deny and allow_deny_hook once they ran.
        data: a dict for handlers to keep per-connection state in.

    TLS facts (read-only, ``None`` on tcp/unix clients): ``tls_version``, ``cipher``,
    ``server_name``, ``alpn_protocol``, ``session_reused``, ``peer_certificate``,
    ``peer_subject``, ``peer_issuer``.
    """

    def __init__(self, sock: Any, address: Any, listener: Listener, server: GServer) -> None:
        self.server = server
        self.listener = listener
        self.sock = sock
        self.stream: Stream = sock
        self.tls: TLSStream | None = None
        self.proto: str = listener.spec.proto
        self.address = address
        self.peeraddr: str | None = None
        self.peerport: int | None = None
        self.sockaddr: str | None = None
        self.sockport: int | str | None = None
        self.peerhost: str | None = None
        self.peerhost_rev: set[str] | None = None
        self.allowed: bool | None = None
        self.data: dict[str, Any] = {}
        self.closed = False
        self._rbuf = bytearray()

    def __repr__(self) -> str:
        return f"<Client {self.proto} peer={self.peer_text()} local={self.local_text()}>"

    def peer_text(self) -> str:
        """The peer as Net::Server logs it: ``[addr]:port``; on a unix socket, which has no
        peer address, the socket path."""
        if self.peerport is None and isinstance(self.address, tuple):
            # get_client_info has not run yet (errors in post_accept): the accept address.
            return f"[{self.address[0]}]:{self.address[1]}"
        if self.peerport is None:
            return str(self.peeraddr or self.listener.spec.port)
        return f"[{self.peeraddr}]:{self.peerport}"

    def local_text(self) -> str:
        """The local end as Net::Server logs it: ``[addr]:port`` (or the socket path)."""
        if isinstance(self.sockport, int):
            return f"[{self.sockaddr}]:{self.sockport}"
        return str(self.sockport)

    # -- TLS facts (None when the connection has no TLS) -------------------------------------

    @property
    def tls_version(self) -> str | None:
        """The negotiated protocol, e.g. ``"TLSv1.3"``."""
        return None if self.tls is None else self.tls.version

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
        return None if self.tls is None else self.tls.cipher

    @property
    def server_name(self) -> str | None:
        """The host name the client sent in SNI (None when it sent none)."""
        return None if self.tls is None else self.tls.server_name

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol chosen (``SSL_alpn_protocols``), None when none was."""
        return None if self.tls is None else self.tls.alpn_protocol

    @property
    def session_reused(self) -> bool | None:
        """True when the handshake resumed an earlier session (ticket or session id)."""
        return None if self.tls is None else self.tls.session_reused

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The client's certificate (with ``SSL_verify_mode``; verified), as a cryptography
        ``x509.Certificate``; None when the client sent none."""
        return None if self.tls is None else self.tls.peer_certificate

    @property
    def peer_subject(self) -> str | None:
        """The client certificate's subject as an RFC 4514 string, e.g. ``"CN=alice,O=Example"``."""
        cert = self.peer_certificate
        return None if cert is None else cert.subject.rfc4514_string()

    @property
    def peer_issuer(self) -> str | None:
        """The client certificate's issuer as an RFC 4514 string."""
        cert = self.peer_certificate
        return None if cert is None else cert.issuer.rfc4514_string()

    # -- reading ---------------------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` at end of stream. Raises TimeoutError when idle."""
        if self._rbuf:
            data = bytes(self._rbuf[:bufsize])
            del self._rbuf[:bufsize]
            return data
        return self.stream.recv(bufsize)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Read into ``buffer``; returns the count, 0 at end of stream."""
        if self._rbuf:
            view = memoryview(buffer).cast("B")
            count = min(len(self._rbuf), nbytes or len(view))
            view[:count] = self._rbuf[:count]
            del self._rbuf[:count]
            return count
        return self.stream.recv_into(buffer, nbytes)

    def readline(self, limit: int = -1) -> bytes:
        """One line including its ``\\n`` (at most ``limit`` bytes); ``b""`` at end of stream."""
        while True:
            end = self._rbuf.find(b"\n")
            if end >= 0 or 0 <= limit <= len(self._rbuf):
                cut = end + 1 if end >= 0 else limit
                if 0 <= limit < cut:
                    cut = limit
                line = bytes(self._rbuf[:cut])
                del self._rbuf[:cut]
                return line
            chunk = self.stream.recv(65536)
            if not chunk:
                line = bytes(self._rbuf)
                self._rbuf.clear()
                return line
            self._rbuf += chunk

    def __iter__(self) -> Any:
        """Iterate over lines until end of stream."""
        while line := self.readline():
            yield line

    # -- writing ---------------------------------------------------------------------------

    def send(self, data: bytes) -> int:
        """Write some of ``data``; returns how much was written."""
        return self.stream.send(data)

    def sendall(self, data: bytes) -> None:
        """Write all of ``data``."""
        self.stream.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        """Per-call read/write timeout in seconds (None = wait forever)."""
        self.stream.settimeout(timeout)

    def makefile(self, mode: str = "r", buffering: int = -1, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None) -> Any:
        """A file object over the connection, like ``socket.makefile``; closing it leaves the
        connection open."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
        reading, writing = "r" in mode or "w" not in mode, "w" in mode
        raw = _ClientIO(self, reading, writing)
        size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffered: io.BufferedIOBase
        if reading and writing:
            buffered = io.BufferedRWPair(raw, raw, size)
        elif reading:
            buffered = io.BufferedReader(raw, size)
        else:
            buffered = io.BufferedWriter(raw, size)
        if "b" in mode:
            return buffered
        text = io.TextIOWrapper(buffered, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close gracefully: TLS close_notify, half-close, short drain, close. Idempotent."""
        if not self.closed:
            self.closed = True
            self.listener.protocol.close(self)

    def abort(self) -> None:
        """Close at once, without TLS shutdown or draining (used after handshake timeouts)."""
        if not self.closed:
            self.closed = True
            self.listener.protocol.abort(self)


class _ClientIO(io.RawIOBase):
    """A raw file over a Client, for makefile()."""

    def __init__(self, client: Client, reading: bool, writing: bool) -> None:
        super().__init__()
        self._client, self._reading, self._writing = client, reading, writing

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def readinto(self, buffer: Any) -> int:
        return self._client.recv_into(buffer)

    def write(self, data: Any) -> int:
        self._client.sendall(bytes(data))
        return len(data)
