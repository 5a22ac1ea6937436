"""The per-connection object that every per-connection hook receives.

Rules of this module:

* A :class:`Client` looks like a socket to handlers (``recv``, ``recv_into``, ``send``,
  ``sendall``, ``makefile``, ``readline``, ``settimeout``, ``close``) whatever the protocol
  underneath. Its I/O goes through the :class:`~gnetserver.proto.stream.Stream` that the
  port's protocol returned from ``post_accept`` and that the server handed to
  :meth:`Client.attach`: a plain socket's methods for tcp/unix, a TLS connection's (a
  :class:`~gnetserver.tls.TLSConnection` for ssl, a
  :class:`~gnetserver.proto.ssleay.SSLeayConnection` for ssleay) for TLS.
* It carries Net::Server's facts about the connection (``peeraddr``, ``peerport``,
  ``sockaddr``, ``sockport``, ``proto``, and with reverse lookups ``peerhost``), filled in by
  the server's ``get_client_info``.
* ``readline`` keeps surplus bytes in the client's own buffer, and ``recv`` serves that buffer
  first, so mixing the two never loses data. A file from ``makefile`` buffers on its own, as a
  socket's does: do not mix reads through a file with direct reads.
* Line reads are bounded: without an explicit limit, ``readline()``, iteration over the client
  and ``readline()``/iteration on a file from ``makefile`` raise
  :class:`~gnetserver.errors.LineTooLong` past ``max_line_length`` bytes (given at
  construction: the server passes its ``max_line_length`` option), so a peer cannot make the
  server buffer without bound. An explicit limit keeps the stdlib meaning (at most that many
  bytes, no error).
* The client owns its connection: ``close`` (graceful: TLS close_notify, half-close, short
  drain) and ``abort`` (at once) close the stream, or the bare accepted socket when no stream
  was attached; both are idempotent, and the server calls ``close`` in
  ``post_process_request`` in any case. The client never calls back into the protocol.
* It imports neither the server nor the listener (they import it): both are typed loosely here.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, AnyStr, cast

from .errors import LineTooLong
from .proto.datagram import Datagram
from .proto.stream import Stream, StreamIO, TLSFacts, linger_close

if TYPE_CHECKING:
    from cryptography import x509

    from .proxyproto import ProxyHeader, SSLInfo

__all__ = ["MAX_LINE_LENGTH", "Client", "LineTooLong", "Stream", "TLSFacts"]

#: The default bound of a line read without a limit (the ``max_line_length`` option's default).
MAX_LINE_LENGTH = 64 * 1024


class Client:
    """One accepted connection, as seen by the hooks of the server.

    Made by the server for each accepted socket, before the protocol's ``post_accept``; the
    server then hands it the connection's stream with :meth:`attach`.

    Attributes:
        server: the server that accepted the connection.
        listener: the listening port it came in on (``listener.spec`` is its PortSpec).
        sock: the live socket: the stream's (``stream.sock``) once one is attached (on ssleay
            the wrapped ssl socket), else the accepted gevent socket.
        stream: the :class:`~gnetserver.proto.stream.Stream` reads and writes go through,
            once attached (None before).
        tls: on TLS ports, the TLS connection with its facts (``stream.tls``): a
            TLSConnection on ssl ports, an SSLeayConnection on ssleay ports. None before
            the stream is attached (so during and after a failed handshake) and on tcp/unix.
        proto: "tcp", "ssl", "ssleay", "unix", "udp" or "unixdgram" (the port spec's proto:
            "unix" for a unix port with ``unix_type`` sock_dgram).
        peeraddr, peerport: the peer's address text and port. None on unix stream sockets, as
            in Net::Server: a unix peer has no address (its CONNECT line names the socket
            path). On a unix datagram port, peeraddr is the path the sender's socket is bound
            to (None when it did not bind one: it cannot be answered).
        udp_data: on a datagram port (udp, unixdgram), the datagram (bytes; Net::Server's
            ``udp_data``): each datagram is a "connection" of its own, whose reads return
            it once and then end of stream, and whose ``send``/``sendall`` answer the
            sender with one datagram each. None on stream ports.
        sockaddr, sockport: the local address text and port; on unix sockets sockaddr is None
            and sockport is the socket path.
        peerhost: the peer's host name, with ``reverse_lookups`` (set by get_client_info,
            before post_accept_hook); None without lookups, for unix sockets, or when the
            lookup found no name.
        peerhost_rev: with double-reverse lookups, the addresses ``peerhost`` resolves to
            (a set of address texts; None when that lookup found none or did not run).
        address: the peer address as accepted (``(addr, port)``, or a unix path); on a
            ``proxy_protocol`` port that relays a client, the header's source address.
        proxy: on ``proxy_protocol`` ports, the PROXY header received
            (:class:`~gnetserver.proxyproto.ProxyHeader`: version, command, family, source,
            dest, tlvs, ssl), before any hook runs; None on other ports.
        proxy_peer: on ``proxy_protocol`` ports, the balancer's own ``(addr, port)`` (the
            socket's peer); None on other ports. When the header relays a client
            (``proxy.proxied``), ``peeraddr``/``peerport`` are the client's and
            ``sockaddr``/``sockport`` the address it connected to on the balancer; after a
            LOCAL (v2) or UNKNOWN (v1) header (a health check) they stay the socket's.
        allowed: the outcome of allow_deny and allow_deny_hook once they ran.
        data: a dict for handlers to keep per-connection state in.
        http: under :class:`gnetserver.http.GHTTPServer`, the request being answered (an
            :class:`~gnetserver.http.exchange.Exchange`); None otherwise.
        max_line_length: the bound of a line read without a limit (see :meth:`readline`).

    TLS facts (read-only, ``None`` on tcp/unix clients): ``tls_version``, ``cipher``,
    ``server_name``, ``alpn_protocol``, ``session_reused``, ``peer_certificate``,
    ``peer_subject``, ``peer_issuer``.

    PROXY v2 facts (read-only, ``None`` without a header or that TLV): ``proxy_alpn``,
    ``proxy_authority``, ``proxy_unique_id``, ``proxy_ssl`` (the balancer's view of the
    client's TLS when it terminated it: ``version``, ``cn``, ``cipher``, ``sig_alg``,
    ``key_alg``, ``cert_verified``), ``proxy_tlvs`` (every TLV as ``(type, value)``).
    """

    # Facts most connections never set live on the class until one is set on the instance:
    # every idle connection then keeps a smaller instance dict (measured in bench/).
    peerhost: str | None = None
    peerhost_rev: set[str] | None = None
    proxy: ProxyHeader | None = None
    proxy_peer: tuple[str, int] | None = None
    udp_data: bytes | None = None
    #: Under gnetserver.http.GHTTPServer: the request being served (its Exchange).
    http: Any = None

    def __init__(self, sock: Any, address: Any, listener: Any, server: Any,
                 max_line_length: int = MAX_LINE_LENGTH) -> None:
        """Per accepted socket, in its connection's greenlet. ``listener`` and ``server`` are
        typed Any: importing their modules here would make the import cycle this module
        must not be part of (they import the client). ``max_line_length``: the server's
        option of that name."""
        self.server = server
        self.max_line_length = max_line_length
        self.listener = listener
        self._accepted = sock
        self._stream: Stream | None = None
        self._io: StreamIO = sock  # the accepted socket until a stream is attached
        self.proto: str = listener.spec.proto
        self.address = address
        self.peeraddr: str | None = None
        self.peerport: int | None = None
        self.sockaddr: str | None = None
        self.sockport: int | str | None = None
        self.allowed: bool | None = None
        if isinstance(sock, Datagram):
            self.udp_data = sock.data
        self.data: dict[str, Any] = {}
        self.closed = False
        self._rbuf = bytearray()

    def __repr__(self) -> str:
        return f"<Client {self.proto} peer={self.peer_text()} local={self.local_text()}>"

    # -- the connection --------------------------------------------------------------------

    def attach(self, stream: Stream) -> None:
        """Take ownership of the connection's stream, as the port's protocol returned it from
        ``post_accept`` (the server calls this in its ``post_accept`` step). From then on reads
        and writes go through it and :meth:`close`/:meth:`abort` close it. A second attach is
        a RuntimeError (the stream given is aborted)."""
        if self._stream is not None or self.closed:
            stream.abort()
            raise RuntimeError(f"{self!r}: a stream is attached already, or the client is "
                               "closed")
        self._stream = stream
        self._io = stream.io  # the socket or TLS connection itself: no wrapper per call

    @property
    def is_unix(self) -> bool:
        """True on a unix port, stream or datagram (its peer has no inet address)."""
        return bool(self.listener.spec.is_unix)

    @property
    def stream(self) -> Stream | None:
        """The attached stream (None before :meth:`attach`)."""
        return self._stream

    @property
    def tls(self) -> TLSFacts | None:
        """The TLS connection with its facts (the stream's ``tls``); None on tcp/unix ports and
        before a stream is attached."""
        return None if self._stream is None else self._stream.tls

    @property
    def sock(self) -> Any:
        """The live socket: the attached stream's, else the accepted one."""
        return self._accepted if self._stream is None else self._stream.sock

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
        tls = self.tls
        return None if tls is None else tls.version

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
        tls = self.tls
        return None if tls is None else tls.cipher

    @property
    def server_name(self) -> str | None:
        """The host name the client sent in SNI (None when it sent none)."""
        tls = self.tls
        return None if tls is None else tls.server_name

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol chosen (``SSL_alpn_protocols``), None when none was."""
        tls = self.tls
        return None if tls is None else tls.alpn_protocol

    @property
    def session_reused(self) -> bool | None:
        """True when the handshake resumed an earlier session (ticket or session id)."""
        tls = self.tls
        return None if tls is None else tls.session_reused

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The client's certificate (with ``SSL_verify_mode``; verified), as a cryptography
        ``x509.Certificate``; None when the client sent none."""
        tls = self.tls
        return None if tls is None else tls.peer_certificate

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

    # -- PROXY protocol facts (None without a header) ----------------------------------------

    def take_proxy_header(self, header: ProxyHeader, balancer: tuple[str, int]) -> None:
        """Record the PROXY header read off this connection (the server's
        ``read_proxy_header`` step, before any hook): ``proxy``, ``proxy_peer`` (the
        balancer, the socket's peer) and, when the header relays a client, ``address`` (so
        the access rules, lookups and get_client_info see the client)."""
        self.proxy, self.proxy_peer = header, balancer
        if header.proxied:
            self.address = header.source

    @property
    def proxy_local(self) -> tuple[str, int] | None:
        """The address the client connected to on the balancer (the header's destination),
        None unless the header relays a client; get_client_info takes it as sockaddr/sockport."""
        header = self.proxy
        return header.dest if header is not None and header.proxied else None

    @property
    def proxy_tlvs(self) -> tuple[tuple[int, bytes], ...]:
        """Every v2 TLV of the header as ``(type, value)``, in order (empty without one)."""
        return () if self.proxy is None else self.proxy.tlvs

    @property
    def proxy_alpn(self) -> str | None:
        """The ALPN protocol the client negotiated with the balancer (v2 TLV 0x01)."""
        return None if self.proxy is None else self.proxy.alpn

    @property
    def proxy_authority(self) -> str | None:
        """The host name the client asked the balancer for: its SNI (v2 TLV 0x02)."""
        return None if self.proxy is None else self.proxy.authority

    @property
    def proxy_unique_id(self) -> bytes | None:
        """The balancer's id of the connection (v2 TLV 0x05, ``unique-id-format``)."""
        return None if self.proxy is None else self.proxy.unique_id

    @property
    def proxy_ssl(self) -> SSLInfo | None:
        """The v2 SSL TLV (0x20) when the balancer terminated TLS: ``version``, ``cn``,
        ``cipher``, ``sig_alg``, ``key_alg``, ``tls``, ``cert_verified``."""
        return None if self.proxy is None else self.proxy.ssl

    # -- reading ---------------------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` at end of stream. Raises TimeoutError when idle."""
        if self._rbuf:
            data = bytes(self._rbuf[:bufsize])
            del self._rbuf[:bufsize]
            return data
        return self._io.recv(bufsize)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Read into ``buffer``; returns the count, 0 at end of stream."""
        if self._rbuf:
            view = memoryview(buffer).cast("B")
            count = min(len(self._rbuf), nbytes or len(view))
            view[:count] = self._rbuf[:count]
            del self._rbuf[:count]
            return count
        return self._io.recv_into(buffer, nbytes)

    def readline(self, limit: int | None = -1) -> bytes:
        """One line including its ``\\n``; ``b""`` at end of stream (the last line may lack
        its ``\\n``).

        With a ``limit`` (>= 0): at most ``limit`` bytes, as ``io`` files do (a longer line
        comes in pieces). Without (-1 or None): at most :attr:`max_line_length` bytes, its
        end included; a longer line raises :class:`~gnetserver.errors.LineTooLong` (its bytes
        stay buffered: the server ends the connection). Raises TimeoutError when idle."""
        if limit is None or limit < 0:
            strict, bound = True, self.max_line_length
        else:
            strict, bound = False, limit
        buf = self._rbuf
        start = 0  # bytes already searched for the line end
        while True:
            end = buf.find(b"\n", start, bound)  # only within the bound: never scan past it
            if end >= 0 or len(buf) >= bound:
                if end < 0 and strict:
                    raise LineTooLong(bound)
                cut = end + 1 if end >= 0 else bound
                line = bytes(buf[:cut])
                del buf[:cut]
                return line
            start = len(buf)
            chunk = self._io.recv(65536)
            if not chunk:
                line = bytes(buf)
                buf.clear()
                return line
            buf += chunk

    def __iter__(self) -> Any:
        """Iterate over lines until end of stream, each bounded by :attr:`max_line_length`
        (:meth:`readline` without a limit)."""
        while line := self.readline():
            yield line

    # -- writing ---------------------------------------------------------------------------

    def send(self, data: bytes) -> int:
        """Write some of ``data``; returns how much was written."""
        return self._io.send(data)

    def sendall(self, data: bytes) -> None:
        """Write all of ``data``."""
        self._io.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        """Per-call read/write timeout in seconds (None = wait forever)."""
        self._io.settimeout(timeout)

    def makefile(self, mode: str = "r", buffering: int = -1, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None) -> Any:
        """A file object over the connection, like ``socket.makefile``; closing it leaves the
        connection open. Its ``readline()`` without a size, and iteration over it, are bounded
        by :attr:`max_line_length` (bytes; characters in text mode) and raise
        :class:`~gnetserver.errors.LineTooLong` past it; ``readline(size)`` is the stdlib's."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
        reading, writing = "r" in mode or "w" not in mode, "w" in mode
        limit = self.max_line_length
        raw = _ClientIO(self, reading, writing, limit)
        size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffered: io.BufferedIOBase
        if reading and writing:
            buffered = _BoundedRWPair(raw, raw, size, limit)
        elif reading:
            buffered = _BoundedReader(raw, size, limit)
        else:
            buffered = io.BufferedWriter(raw, size)
        if "b" in mode:
            return buffered
        # typeshed wants a buffer with ``name``; BufferedRWPair has none (only text.name, which
        # nobody reads on a connection, would miss it).
        text = _BoundedText(cast(Any, buffered), encoding, errors, newline, limit)
        text.mode = mode  # type: ignore[misc]
        return text

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close gracefully: TLS close_notify, half-close, short drain, close (the stream's
        ``close``; without a stream, the lingering close of the accepted socket). Idempotent,
        never raises; the server calls it in ``post_process_request``."""
        if not self.closed:
            self.closed = True
            if self._stream is not None:
                self._stream.close()
            elif self._accepted.fileno() != -1:  # a failed post_accept closed it already
                linger_close(self._accepted)

    def abort(self) -> None:
        """Close at once, without TLS shutdown or draining (the stream's ``abort``, or the
        accepted socket's ``close``): for a denied address, or a killed connection.
        Idempotent."""
        if not self.closed:
            self.closed = True
            if self._stream is not None:
                self._stream.abort()
            else:
                self._accepted.close()


class _LineBound:
    """The ``max_line_length`` bound of one file from ``makefile()``: ``readline(size)`` is the
    stdlib's with a size; without one, at most ``limit`` bytes (characters, for text), else
    LineTooLong. Once a line was too long, every later unbounded read raises again, since the
    rest of that line must not pass for a new one. The C iterators of io's classes call
    ``readline``, so iteration is bounded too."""

    __slots__ = ("limit", "tripped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tripped = False

    def readline(self, readline: Callable[[int], AnyStr], size: int | None) -> AnyStr:
        """One line through ``readline`` (a stdlib file's), bounded as the class says."""
        if size is not None and size >= 0:
            return readline(size)
        if self.tripped:
            raise LineTooLong(self.limit)
        line = readline(self.limit + 1)
        if len(line) > self.limit:
            self.tripped = True
            raise LineTooLong(self.limit)
        return line


class _BoundedReader(io.BufferedReader):
    """makefile("rb"): lines bounded by ``max_line_length``."""

    def __init__(self, raw: Any, size: int, limit: int) -> None:
        super().__init__(raw, size)
        self._bound = _LineBound(limit)

    def readline(self, size: int | None = -1, /) -> bytes:
        return self._bound.readline(super().readline, size)


class _BoundedRWPair(io.BufferedRWPair):
    """makefile("rwb"): lines bounded by ``max_line_length``."""

    def __init__(self, reader: Any, writer: Any, size: int, limit: int) -> None:
        super().__init__(reader, writer, size)
        self._bound = _LineBound(limit)

    def readline(self, size: int | None = -1, /) -> bytes:
        return self._bound.readline(super().readline, size)


class _BoundedText(io.TextIOWrapper):
    """makefile("r"): lines bounded by ``max_line_length`` characters."""

    def __init__(self, buffer: Any, encoding: str | None, errors: str | None,
                 newline: str | None, limit: int) -> None:
        super().__init__(buffer, encoding, errors, newline)
        self._bound = _LineBound(limit)

    def readline(self, size: int = -1, /) -> str:  # type: ignore[override]  # as typeshed
        return self._bound.readline(super().readline, size)


class _ClientIO(io.RawIOBase):
    """A raw file over a Client, for makefile() (``buffering=0``); lines bounded too."""

    def __init__(self, client: Client, reading: bool, writing: bool, limit: int) -> None:
        super().__init__()
        self._client, self._reading, self._writing = client, reading, writing
        self._bound = _LineBound(limit)

    def readline(self, size: int | None = -1, /) -> bytes:
        return self._bound.readline(super().readline, size)

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def readinto(self, buffer: Any) -> int:
        return self._client.recv_into(buffer)

    def write(self, data: Any) -> int:
        self._client.sendall(bytes(data))
        return len(data)
